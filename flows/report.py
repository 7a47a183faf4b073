"""What an onboarding reports: its result types and their rendering (Prefect artifacts, MLflow).

Pure functions from results to markdown and table rows; nothing here calls Prefect, MLflow or
the file system, so every report can be checked without a server.
"""

from __future__ import annotations

import base64
import re
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

__all__ = ["LayoutOutcome", "OnboardResult", "slug", "layout_rows", "eval_markdown", "plot_markdown",
           "tune_markdown", "result_markdown", "not_promoted_markdown", "tracking_links", "first_line"]


class LayoutOutcome(BaseModel):
    """What became of one layout the planner considered."""

    model_config = ConfigDict(extra="forbid")

    key: str
    target: str
    backend: str
    precision: str
    status: str  # infeasible, not selected, failed, built, reused, eval-failed
    reason: str = ""
    rank: int = 0  # the planner's preference among a target's selected layouts (0 first: fewest weight bytes)
    engine_dir: str | None = None
    build_id: str | None = None
    build_seconds: float | None = None
    gate: str | None = None  # passed / failed
    version: str | None = None


class OnboardResult(BaseModel):
    """What the onboard flow returns."""

    model_config = ConfigDict(extra="forbid")

    repo: str
    sha: str
    model: str | None = None
    layouts: list[LayoutOutcome] = Field(default_factory=list)
    version: str | None = None          # the model version promoted (or that would have been)
    promoted: bool = False
    previous_production: str | None = None
    gate_passed: bool = False
    builds_made: int = 0                # builds made by this run (0 on a rerun)
    evals_run: int = 0                  # evals made by this run (0 on a rerun)
    served: bool | None = None          # the server answered /v1/models with this version
    links: dict[str, str] = Field(default_factory=dict)
    message: str = ""


def slug(text: str) -> str:
    """An artifact key part: lower case, runs of other characters as one dash."""
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")


def first_line(exc: BaseException | str, limit: int = 300) -> str:
    text = str(exc).strip()
    return (text.splitlines()[0] if text else type(exc).__name__)[:limit]


def layout_rows(outcomes: list[LayoutOutcome]) -> list[dict[str, Any]]:
    """The layouts table: one row per layout the planner considered."""
    return [{"layout": o.key, "target": o.target, "backend": o.backend, "precision": o.precision, "status": o.status,
             "build_s": o.build_seconds, "gate": o.gate or "", "version": o.version or "",
             "reason": o.reason[:200]} for o in outcomes]


def eval_markdown(repo: str, sha: str, evals: dict[str, Any], gates: dict[str, Any]) -> str:
    """Every build's eval report under its gate verdict (``evals``: key -> EvalResult,
    ``gates``: key -> evals.gates.GateResult)."""
    lines = [f"# Evals and gates: {repo}@{sha[:12]}", ""]
    for key, result in evals.items():
        gate = gates.get(key)
        verdict = "n/a" if gate is None else ("**passed**" if gate.passed else f"**FAILED** ({', '.join(gate.failed)})")
        cached = f" (cached, profile {result.profile})" if result.cached else f" (profile {result.profile})"
        lines += [f"# {key}: gate {verdict}{cached}", ""]
        if gate is not None:
            lines += [gate.to_markdown(), ""]
        lines += [result.report_md, ""]
    return "\n".join(lines)


def plot_markdown(png: bytes) -> str:
    """A PNG inlined as a data URL (the Prefect UI shows markdown artifacts, not files)."""
    return f"# Latency\n\n![latency](data:image/png;base64,{base64.b64encode(png).decode()})\n"


def tune_markdown(png: bytes, report_md: str) -> str:
    """The tuning plot (inlined; empty without one) above the tuner's own report."""
    return f"# Tuning\n\n![tuning](data:image/png;base64,{base64.b64encode(png).decode()})\n\n{report_md}"


def result_markdown(result: OnboardResult) -> str:
    return (f"**{result.message}** ({result.repo}@{result.sha[:12]}; "
            f"{result.builds_made} builds made, {result.evals_run} evals run).")


def not_promoted_markdown(message: str) -> str:
    return f"**Not promoted**: {message}."


def tracking_links(name: str, version: str, run_id: str | None, *, ui: str | None, experiment_id: str | None,
                   tracking_uri: str) -> dict[str, str]:
    """Links to the MLflow run and model version (UI links when an MLflow server is up)."""
    links: dict[str, str] = {}
    if ui:
        if run_id:
            links["mlflow_run"] = f"{ui}/#/experiments/{experiment_id}/runs/{run_id}"
        links["mlflow_version"] = f"{ui}/#/models/{name}/versions/{version}"
    else:
        if run_id:
            links["mlflow_run"] = f"{tracking_uri}#runs/{run_id}"
        links["mlflow_version"] = f"models:/{name}/{version}"
    return links
