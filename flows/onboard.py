"""The onboard flow: one run per (repo, revision), from a Hub revision to the served model.

    pull -> plan -> build (one task per layout, concurrently) -> evaluate -> latency A/B vs production
         -> gate -> register -> [approval] -> promote -> serving swaps

Tasks are thin: each calls one plain function of :mod:`flows.steps` (which calls builders,
evals, registry). Idempotent: builders reuse a finished build with the same build_id, evals
are cached by (build_id, profile), and a build already registered is not registered again;
a rerun of the same revision builds nothing. A failed layout does not stop the others; a
failed gate never promotes (the run ends Failed, the version is registered with
``gate=failed``). Calls to the Hub, MLflow and S3 are retried where they are made (onramp.hub,
registry: bounded, on typed network errors), so no task adds a second retry layer. A build of a
Hub revision older than production's is registered but not promoted (registry.promotion: when
two onboardings of a repo race, the newer revision ends in production).
"""

from __future__ import annotations

import base64
import re
import time
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE
from prefect.artifacts import create_link_artifact, create_markdown_artifact, create_table_artifact
from prefect.input import RunInput
from pydantic import BaseModel, ConfigDict, Field, field_validator

from flows import steps
from flows.errors import OnboardError
from flows.steps import EvalResult, GateOutcome, LatencyAB, LayoutPlan
from onramp.settings import Settings, load_settings


class OnboardConfig(BaseModel):
    """What to onboard and how (rendered as a form in the Prefect UI)."""

    model_config = ConfigDict(extra="forbid")

    repo: str = Field(description="Hub repo id, ORG/NAME.")
    revision: str = Field("main", description="Branch, tag or commit sha; pinned to a sha at pull time.")
    targets: list[str] = Field(default_factory=lambda: ["cpu"],
                               description="Hardware to build for, e.g. cpu, a100-80gb, h100-80gb.")
    precision: str | None = Field(None, description="Precision for every target (int8, int4, bf16, fp8...), or several "
                                                    "(int8,int4: each built and gated, the smallest passing promoted); "
                                                    "default: int8 on CPUs, the checkpoint's dtype on GPUs.")
    profile: str = Field("quick", description="Eval profile (evals/profiles.yaml): quick or full.")
    gates: str | None = Field(None, description="Gates YAML file; default: evals/gates.yaml.")
    latency: bool = Field(True, description="Measure latency besides quality: a Poisson sweep (reported) and, "
                                            "when there is a production version, an A/B against it (gated).")
    approve: bool = Field(False, description="Wait for a human approval (in the Prefect UI) before promotion.")
    approval_timeout_s: int = Field(3600, ge=1)
    promote: bool = Field(True, description="Promote a build that passed its gates to production.")
    serving_timeout_s: float = Field(300.0, ge=0, description="How long to wait for the server to swap (0: don't).")
    gpu_build_timeout_s: float = Field(4 * 3600.0, gt=0, description="How long a GPU layout's build-layout run "
                                       "on the gpu work pool may take.")

    @field_validator("repo")
    @classmethod
    def _repo_id(cls, repo: str) -> str:
        parts = repo.split("/")
        if len(parts) != 2 or not all(p and p.strip() == p for p in parts):
            raise ValueError(f"repo {repo!r} is not a Hub repo id ORG/NAME")
        return repo

    @field_validator("targets", mode="before")
    @classmethod
    def _split_targets(cls, value: Any) -> Any:
        if isinstance(value, str):
            value = [t.strip() for t in value.split(",") if t.strip()]
        if not value:
            raise ValueError("targets is empty; name at least one, e.g. cpu")
        return value


class Approval(RunInput):
    """The form a human fills in before promotion."""

    approve: bool = Field(False, description="Promote this build to production?")
    comment: str = ""


class LayoutOutcome(BaseModel):
    model_config = ConfigDict(extra="forbid")

    key: str
    target: str
    backend: str
    precision: str
    status: str  # infeasible, not selected, failed, built, reused, eval-failed
    reason: str = ""
    engine_dir: str | None = None
    build_id: str | None = None
    build_seconds: float | None = None
    gate: str | None = None  # passed / failed
    version: str | None = None


class OnboardResult(BaseModel):
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


# ------------------------------------------------------------------------------ tasks

@task(name="pull", cache_policy=NO_CACHE)
def pull_task(repo: str, revision: str, settings: Settings) -> tuple[Path, str, str | None]:
    """``(checkpoint, sha, commit date)``: the date orders this revision against production's."""
    checkpoint, sha = steps.pull(repo, revision, settings)
    return checkpoint, sha, steps.revision_date(repo, sha, settings)


@task(name="plan", cache_policy=NO_CACHE)
def plan_task(checkpoint: Path, targets: list[str], precision: str | None) -> list[LayoutPlan]:
    return steps.plan(checkpoint, targets, precision)


@task(name="build", cache_policy=NO_CACHE, task_run_name="build-{layout.key}")
def build_task(checkpoint: Path, layout: LayoutPlan, repo: str, sha: str, settings: Settings) -> tuple[Path, bool]:
    """Build one layout; ``(engine_dir, made_now)`` (False: a finished build was reused)."""
    started = time.time() - 1
    engine_dir = steps.build(checkpoint, layout, repo, sha, settings)
    return engine_dir, steps.created_after(engine_dir, started)


@task(name="build", cache_policy=NO_CACHE, task_run_name="build-{layout.key}")
def gpu_build_task(checkpoint: Path, layout: LayoutPlan, repo: str, sha: str, settings: Settings,
                   timeout: float) -> tuple[Path, bool]:
    """A GPU layout: a build-layout run on the gpu work pool, the engine fetched through the registry
    (flows.dispatch); in-process when no build-layout deployment exists."""
    from flows.dispatch import build_on_gpu_pool

    started = time.time() - 1
    engine_dir = build_on_gpu_pool(layout, repo, sha, settings, timeout=timeout)
    if engine_dir is None:
        engine_dir = steps.build(checkpoint, layout, repo, sha, settings)
    return engine_dir, steps.created_after(engine_dir, started)


@task(name="evaluate", cache_policy=NO_CACHE, task_run_name="evaluate-{layout_key}")
def evaluate_task(engine_dir: Path, reference_dir: Path, profile: str, settings: Settings, latency: bool,
                  layout_key: str) -> EvalResult:
    return steps.evaluate(engine_dir, reference_dir, profile, settings, latency=latency)


@task(name="tune", cache_policy=NO_CACHE, task_run_name="tune-{layout_key}")
def tune_task(engine_dir: Path, settings: Settings, enabled: bool, layout_key: str) -> None:
    """evals.tune on this machine (ONRAMP_TUNE_BUDGET_S; with latency on): the tuning table and plot
    as artifacts; a failed tuning leaves the build's runtime as it was built."""
    from evals.tune import tune_build

    try:
        report = tune_build(engine_dir, settings) if enabled else None
    except Exception as exc:  # noqa: BLE001 (tuning is an optimisation, never a reason to stop)
        get_run_logger().warning("tuning %s failed; its runtime stays as built: %s", layout_key, exc)
        return
    if report is not None:
        key = f"{_slug(engine_dir.name.split('--')[0])}-tune-{_slug(layout_key)}"
        create_table_artifact(key=key, table=report.table(), description=report.summary())
        data = base64.b64encode(Path(report.plot).read_bytes()).decode() if report.plot else ""
        create_markdown_artifact(key=f"{key}-plot", markdown=f"# Tuning\n\n![tuning](data:image/png;base64,{data})\n"
                                 f"\n{report.to_markdown()}", description=report.summary())


@task(name="latency-ab", cache_policy=NO_CACHE, task_run_name="latency-ab-{layout_key}")
def latency_ab_task(registry: Any, name: str, engine_dir: Path, profile: str, settings: Settings,
                    layout_key: str) -> LatencyAB:
    return steps.latency_ab(registry, name, engine_dir, profile, settings)


@task(name="gate", cache_policy=NO_CACHE, task_run_name="gate-{layout_key}")
def gate_task(metrics: dict[str, float], gates: str | None, production: dict[str, float] | None,
              latency: bool, ab: LatencyAB | None, layout_key: str) -> GateOutcome:
    return steps.gate(metrics, gates, production, latency=latency, ab=ab)


@task(name="production-metrics", cache_policy=NO_CACHE)
def production_metrics_task(registry: Any, name: str) -> dict[str, float] | None:
    return steps.production_metrics(registry, name)


@task(name="register", cache_policy=NO_CACHE, task_run_name="register-{layout_key}")
def register_task(registry: Any, engine_dir: Path, run_id: str | None, gate_passed: bool,
                  metrics: dict[str, float], tags: dict[str, str], layout_key: str) -> tuple[str, str, bool]:
    return steps.register(registry, engine_dir, run_id=run_id, gate_passed=gate_passed, metrics=metrics, tags=tags)


@task(name="promote", cache_policy=NO_CACHE)
def promote_task(registry: Any, name: str, version: str) -> steps.PromoteOutcome:
    return steps.promote(registry, name, version)


@task(name="serving-swap", cache_policy=NO_CACHE)
def serving_swap_task(api_url: str, api_key: str | None, name: str, version: str, timeout: float) -> bool:
    return steps.wait_for_serving(api_url, api_key, name, version, timeout)


# ------------------------------------------------------------------------------ reports

def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")


def _layout_rows(outcomes: list[LayoutOutcome]) -> list[dict[str, Any]]:
    return [{"layout": o.key, "target": o.target, "backend": o.backend, "precision": o.precision, "status": o.status,
             "build_s": o.build_seconds, "gate": o.gate or "", "version": o.version or "",
             "reason": o.reason[:200]} for o in outcomes]


def _eval_markdown(repo: str, sha: str, evals: dict[str, EvalResult], gates: dict[str, GateOutcome]) -> str:
    lines = [f"# Evals and gates: {repo}@{sha[:12]}", ""]
    for key, result in evals.items():
        gate = gates.get(key)
        verdict = "n/a" if gate is None else ("**passed**" if gate.passed else f"**FAILED** ({', '.join(gate.failed)})")
        cached = f" (cached, profile {result.profile})" if result.cached else f" (profile {result.profile})"
        lines += [f"# {key}: gate {verdict}{cached}", ""]
        if gate is not None:
            lines += [gate.summary, ""]
        lines += [result.report_md, ""]
    return "\n".join(lines)


def _plot_markdown(plot: str) -> str:
    data = base64.b64encode(Path(plot).read_bytes()).decode()
    return f"# Latency\n\n![latency](data:image/png;base64,{data})\n"


# ------------------------------------------------------------------------------ the flow

@flow(name="onboard", flow_run_name="onboard {config.repo}@{config.revision}", log_prints=True)
def onboard(config: OnboardConfig) -> OnboardResult:
    """Onboard one revision of a Hub model: build, evaluate, gate, register, promote."""
    from prefect.runtime import flow_run as runtime_run

    logger = get_run_logger()
    settings = load_settings()
    checkpoint, sha, committed = pull_task(config.repo, config.revision, settings)
    logger.info("pulled %s@%s into %s", config.repo, sha[:12], checkpoint)
    slug = _slug(config.repo)
    result = OnboardResult(repo=config.repo, sha=sha)

    # plan + build: one task per feasible layout, all at once; a failure stays with its layout
    plans = plan_task(checkpoint, config.targets, config.precision)
    # (GPU layouts go to the gpu work pool as build-layout runs; CPU layouts are built here)
    futures = {p.key: gpu_build_task.submit(checkpoint, p, config.repo, sha, settings, config.gpu_build_timeout_s)
               if p.kind == "gpu" else build_task.submit(checkpoint, p, config.repo, sha, settings)
               for p in plans if p.selected}
    outcomes: dict[str, LayoutOutcome] = {}
    for p in plans:
        outcome = LayoutOutcome(key=p.key, target=p.target, backend=p.backend, precision=p.precision,
                                status="not selected" if p.feasible else "infeasible", reason=p.reason)
        if p.selected:
            futures[p.key].wait()
            if futures[p.key].state.is_completed():
                engine_dir, made_now = futures[p.key].result()
                manifest = steps.read_build(engine_dir)
                outcome.status, outcome.engine_dir = ("built" if made_now else "reused"), str(engine_dir)
                outcome.build_id, outcome.build_seconds = manifest["build_id"], manifest.get("build_seconds")
                outcome.reason = p.reason
                result.model = result.model or steps.model_name(manifest)
                result.builds_made += int(made_now)
            else:
                try:
                    futures[p.key].result()
                except Exception as exc:  # noqa: BLE001 (the layout's error goes to its row)
                    outcome.status, outcome.reason = "failed", str(exc).splitlines()[0][:300]
                logger.warning("layout %s failed: %s", p.key, outcome.reason)
        outcomes[p.key] = outcome
    built = [o for o in outcomes.values() if o.engine_dir]
    create_table_artifact(key=f"{slug}-layouts", table=_layout_rows(list(outcomes.values())),
                          description=f"Layouts of {config.repo}@{sha[:12]} for {', '.join(config.targets)}")
    if not built:
        result.layouts = list(outcomes.values())
        failures = "; ".join(f"{o.key}: {o.reason}" for o in outcomes.values() if o.status == "failed")
        raise OnboardError(f"no layout of {config.repo}@{sha[:12]} could be built ({failures[:500] or 'none'})",
                           "see the layouts table artifact; try other --targets")

    # evaluate + gate each build (evals are cached by build_id and profile)
    from registry.client import Registry

    registry = Registry(settings)
    production = production_metrics_task(registry, result.model)
    evals: dict[str, EvalResult] = {}
    gates: dict[str, GateOutcome] = {}
    for o in built:
        try:
            tune_task(Path(o.engine_dir), settings, config.latency, layout_key=o.key)
            evaluated = evaluate_task(Path(o.engine_dir), checkpoint, config.profile, settings, config.latency,
                                      layout_key=o.key)
            ab = latency_ab_task(registry, result.model, Path(o.engine_dir), config.profile, settings,
                                 layout_key=o.key) if config.latency else None
        except Exception as exc:  # noqa: BLE001 (one layout's eval failure does not stop the others)
            o.status, o.reason = "eval-failed", str(exc).splitlines()[0][:300]
            logger.warning("evaluating %s failed: %s", o.key, o.reason)
            continue
        result.evals_run += int(not evaluated.cached)
        evals[o.key] = steps.with_ab(evaluated, ab)
        gates[o.key] = gate_task(evaluated.metrics, config.gates, production, config.latency, ab, layout_key=o.key)
        o.gate = "passed" if gates[o.key].passed else "failed"
    create_markdown_artifact(key=f"{slug}-evals", markdown=_eval_markdown(config.repo, sha, evals, gates),
                             description=f"Evals and gates of {config.repo}@{sha[:12]}")
    plots = [e.plot for e in evals.values() if e.plot]
    if plots:
        create_markdown_artifact(key=f"{slug}-latency", markdown=_plot_markdown(plots[0]),
                                 description=f"Latency sweep of {config.repo}@{sha[:12]}")

    # register every evaluated build under one onboarding run (idempotent by build_id)
    parent = registry.start_run(f"onboard {config.repo}@{sha[:12]}", params={
        "repo": config.repo, "revision": sha, "targets": ",".join(config.targets), "profile": config.profile,
        "gates": config.gates or "default"}, tags={"onramp.kind": "onboard",
                                                   "prefect.flow_run_id": str(runtime_run.id or "")})
    for o in built:
        if o.key not in evals:
            continue
        name, version, _ = register_task(registry, Path(o.engine_dir), parent.run_id, o.gate == "passed",
                                         evals[o.key].metrics, {"profile": config.profile, "layout_key": o.key,
                                                                "hf_revision_date": committed},
                                         layout_key=o.key)
        o.version = version
    result.layouts = list(outcomes.values())
    rank = {p.key: p.rank for p in plans}  # several precisions of a target: the planner's preference first
    passing = sorted((o for o in built if o.gate == "passed" and o.version), key=lambda o: rank.get(o.key, 0))
    chosen = passing[0] if passing else next((o for o in built if o.version), None)
    if chosen is not None:
        result.version = chosen.version
        parent.log_metrics(evals[chosen.key].metrics)
        if evals[chosen.key].plot:
            parent.log_artifact(evals[chosen.key].plot, "reports")
        parent.log_text(_eval_markdown(config.repo, sha, evals, gates), "reports/evals.md")
    ui = _mlflow_ui(settings)
    if result.version:
        result.links = steps.tracking_links(registry, result.model, result.version, parent.run_id, ui)
        for label, url in result.links.items():
            create_link_artifact(key=f"{slug}-{_slug(label)}", link=url,
                                 link_text=f"{label} {result.model} v{result.version}")
    result.gate_passed = bool(passing)
    if not passing:
        parent.end("FAILED")
        result.message = "no build passed its gates; production untouched"
        create_markdown_artifact(key=f"{slug}-result", markdown=f"**Not promoted**: {result.message}.")
        raise OnboardError(f"{config.repo}@{sha[:12]}: no build passed its gates; production is untouched",
                           "see the evals artifact for the failing checks")
    parent.end("FINISHED")

    # promote (after an optional human approval) and wait for the server to swap
    if config.approve:
        from prefect.flow_runs import pause_flow_run

        logger.info("waiting for an approval of %s v%s: resume this run in the Prefect UI", result.model,
                    chosen.version)
        answer = pause_flow_run(wait_for_input=Approval, timeout=config.approval_timeout_s, poll_interval=2,
                                key=f"approve-{chosen.version}")
        if not answer.approve:
            result.message = f"promotion declined by a human: {answer.comment or 'no comment'}"
            create_markdown_artifact(key=f"{slug}-result", markdown=f"**Not promoted**: {result.message}.")
            return result
    promoted = promote_task(registry, result.model, chosen.version) if config.promote else None
    if promoted is not None:
        result.previous_production, result.promoted = promoted.previous, promoted.promoted
        services = _running_services(settings)
        if promoted.promoted and services and config.serving_timeout_s > 0:
            result.served = serving_swap_task(services["api"], services.get("api_key"), result.model,
                                              chosen.version, config.serving_timeout_s)
    _mark_seen(settings, config.repo, sha)
    if result.promoted:
        result.message = f"{result.model} version {result.version} is production"
    elif promoted is not None:
        result.message = f"{result.model} version {result.version} passed, not promoted: {promoted.reason}"
    else:
        result.message = f"{result.model} version {result.version} passed (not promoted)"
    create_markdown_artifact(key=f"{slug}-result", markdown=f"**{result.message}** ({config.repo}@{sha[:12]}; "
                             f"{result.builds_made} builds made, {result.evals_run} evals run).")
    logger.info(result.message)
    return result


def _mlflow_ui(settings: Settings) -> str | None:
    services = _running_services(settings)
    return services.get("mlflow") if services else None


def _running_services(settings: Settings) -> dict | None:
    from flows.prefect_env import running_services

    return running_services(settings)


def _mark_seen(settings: Settings, repo: str, sha: str) -> None:
    from flows.watch import mark_seen, state_path

    mark_seen(state_path(settings), repo, sha)
