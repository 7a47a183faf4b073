"""The onboard flow: one run per (repo, revision), from a Hub revision to the served model.

    pull -> plan -> build (one task per layout, concurrently) -> tune -> evaluate -> latency A/B vs production
         -> gate -> register -> [approval] -> promote -> serving swaps

Tasks are thin: each calls one plain function of the package that owns the step
(:mod:`builders.targets`, :mod:`evals.build_eval`, the registry through :mod:`flows.steps`) and
passes on that package's own types; reports are rendered by :mod:`flows.report`. Idempotent:
builders reuse a finished build with the same build_id, evals are cached by (build_id,
profile), and a build already registered is not registered again; a rerun of the same
revision builds nothing. A failed layout does not stop the others; a
failed gate never promotes (the run ends Failed, the version is registered with
``gate=failed``). Calls to the Hub, MLflow and S3 are retried where they are made (onramp.hub,
registry: bounded, on typed network errors), so no task adds a second retry layer. A build of a
Hub revision older than production's is registered but not promoted (registry.promotion: when
two onboardings of a repo race, the newer revision ends in production).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_link_artifact, create_markdown_artifact, create_table_artifact
from prefect.input import RunInput
from pydantic import BaseModel, ConfigDict, Field, field_validator

from builders.targets import TargetLayout, build_target, created_after, plan_targets, runtime_variants
from evals.build_eval import ABOutcome, EvalResult, evaluate_build, judge, latency_ab, with_ab
from evals.gates import GateResult
from flows import report, steps
from flows.errors import OnboardError
from flows.report import LayoutOutcome, OnboardResult
from onramp.settings import Settings, load_settings

__all__ = ["OnboardConfig", "Approval", "OnboardResult", "LayoutOutcome", "onboard"]


class OnboardConfig(BaseModel):
    """What to onboard and how (rendered as a form in the Prefect UI)."""

    model_config = ConfigDict(extra="forbid")

    repo: str = Field(description="Hub repo id, ORG/NAME.")
    revision: str = Field("main", description="Branch, tag or commit sha; pinned to a sha at pull time.")
    targets: list[str] = Field(default_factory=lambda: ["cpu"],
                               description="Hardware to build for, e.g. cpu, a100-80gb, h100-80gb.")
    precision: str | None = Field(None, description="Precision for every target (int8, int4, bf16, fp8...); "
                                                    "default: int8 on CPUs, the checkpoint's dtype on GPUs.")
    runtime_precision: str | None = Field(None, description="CPU (openvino) compute variants, each built and gated "
                                          "per layout, preferred in the order given: e.g. f32-dq32,f32 "
                                          "(int8 activations where they pass the gates); default f32.")
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

    @field_validator("runtime_precision")
    @classmethod
    def _runtime_variants(cls, value: str | None, info) -> str | None:
        """Checked now by each target's backend (the plan checks again), not when a build starts."""
        from builders.hardware import CATALOG
        from onramp.errors import OnrampError

        for target in info.data.get("targets") or []:
            hw = CATALOG.get(str(target).lower())
            if hw is not None:  # an unknown target is named by the plan
                try:
                    runtime_variants(hw.backend, value)
                except OnrampError as err:
                    raise ValueError(err.what) from None
        return value


class Approval(RunInput):
    """The form a human fills in before promotion."""

    approve: bool = Field(False, description="Promote this build to production?")
    comment: str = ""


# ------------------------------------------------------------------------------ tasks

@task(name="pull")
def pull_task(repo: str, revision: str, settings: Settings) -> tuple[Path, str, str | None]:
    """``(checkpoint, sha, commit date)``: the date orders this revision against production's."""
    checkpoint, sha = steps.pull(repo, revision, settings)
    return checkpoint, sha, steps.revision_date(repo, sha, settings)


@task(name="plan")
def plan_task(checkpoint: Path, targets: list[str], precision: str | None,
              runtime_precision: str | None = None) -> list[TargetLayout]:
    return plan_targets(checkpoint, targets, precision, runtime_precision)


@task(name="build", task_run_name="build-{target.key}")
def build_task(checkpoint: Path, target: TargetLayout, repo: str, sha: str, settings: Settings,
               gpu_timeout: float) -> tuple[Path, bool]:
    """Build the planner's layout; ``(engine_dir, made_now)`` (False: a finished build was reused).
    A GPU layout is a build-layout run on the gpu work pool, its engine fetched through the
    registry (flows.dispatch); built in-process when there is no build-layout deployment."""
    from flows.dispatch import build_on_gpu_pool

    started = time.time() - 1
    engine_dir = build_on_gpu_pool(target, repo, sha, settings, timeout=gpu_timeout) if target.kind == "gpu" else None
    engine_dir = engine_dir or build_target(checkpoint, target, repo, sha, settings)
    return engine_dir, created_after(engine_dir, started)


@task(name="production-metrics")
def production_metrics_task(settings: Settings, name: str) -> dict[str, float] | None:
    from registry.client import Registry

    return steps.production_metrics(Registry(settings), name)


@task(name="evaluate", task_run_name="evaluate-{layout.key}")
def evaluate_task(layout: LayoutOutcome, reference_dir: Path, profile: str, latency: bool,
                  settings: Settings) -> EvalResult:
    return evaluate_build(Path(layout.engine_dir), reference_dir, profile, settings, latency=latency)


@task(name="tune", task_run_name="tune-{layout_key}")
def tune_task(engine_dir: Path, settings: Settings, enabled: bool, layout_key: str) -> None:
    """evals.tune on this machine (ONRAMP_TUNE_BUDGET_S; with latency on): the tuning table and plot
    as artifacts; a failed tuning leaves the build's runtime as it was built."""
    from evals.tune import tune_build

    try:
        tuned = tune_build(engine_dir, settings) if enabled else None
    except Exception as exc:  # noqa: BLE001 (tuning is an optimisation, never a reason to stop)
        get_run_logger().warning("tuning %s failed; its runtime stays as built: %s", layout_key, exc)
        return
    if tuned is not None:
        key = f"{report.slug(engine_dir.name.split('--')[0])}-tune-{report.slug(layout_key)}"
        create_table_artifact(key=key, table=tuned.table(), description=tuned.summary())
        png = Path(tuned.plot).read_bytes() if tuned.plot else b""
        create_markdown_artifact(key=f"{key}-plot", markdown=report.tune_markdown(png, tuned.to_markdown()),
                                 description=tuned.summary())


@task(name="latency-ab", task_run_name="latency-ab-{layout.key}")
def latency_ab_task(layout: LayoutOutcome, model: str, profile: str, settings: Settings) -> ABOutcome:
    from registry.client import Registry

    return latency_ab(Registry(settings), model, Path(layout.engine_dir), profile, settings)


@task(name="gate", task_run_name="gate-{layout.key}")
def gate_task(layout: LayoutOutcome, metrics: dict[str, float], config: OnboardConfig,
              production: dict[str, float] | None, ab: ABOutcome | None) -> GateResult:
    return judge(metrics, config.gates, production, latency=config.latency, ab=ab)


@task(name="register")
def register_task(settings: Settings, config: OnboardConfig, sha: str, committed: str | None,
                  builds: list[LayoutOutcome], evals: dict[str, EvalResult], report_md: str) -> steps.Recorded:
    """Every evaluated build registered under one MLflow onboarding run (idempotent by build_id)."""
    from prefect.runtime import flow_run

    return steps.record_onboarding(
        settings, run_name=f"onboard {config.repo}@{sha[:12]}", builds=builds, evals=evals, report_md=report_md,
        params={"repo": config.repo, "revision": sha, "targets": ",".join(config.targets),
                "profile": config.profile, "gates": config.gates or "default"},
        tags={"onramp.kind": "onboard", "prefect.flow_run_id": str(flow_run.id or "")},
        version_tags={"profile": config.profile, "hf_revision_date": committed})


@task(name="promote")
def promote_task(settings: Settings, name: str, version: str) -> steps.PromoteOutcome:
    from registry.client import Registry

    return steps.promote(Registry(settings), name, version)


@task(name="serving-swap")
def serving_swap_task(api_url: str, api_key: str | None, name: str, version: str, timeout: float) -> bool:
    return steps.wait_for_serving(api_url, api_key, name, version, timeout)


# ------------------------------------------------------------------------------ the flow

@flow(name="onboard", flow_run_name="onboard {config.repo}@{config.revision}", log_prints=True)
def onboard(config: OnboardConfig) -> OnboardResult:
    """Onboard one revision of a Hub model: build, evaluate, gate, register, promote."""
    settings = load_settings()
    checkpoint, sha, committed = pull_task(config.repo, config.revision, settings)
    result = OnboardResult(repo=config.repo, sha=sha)
    plans = plan_task(checkpoint, config.targets, config.precision, config.runtime_precision)
    builds = {p.key: build_task.submit(checkpoint, p, config.repo, sha, settings, config.gpu_build_timeout_s)
              for p in plans if p.selected}
    built = _wait_for_builds(plans, builds, result, config.targets)
    if not built:
        failures = "; ".join(f"{o.key}: {o.reason}" for o in result.layouts if o.status == "failed")
        raise OnboardError(f"no layout of {config.repo}@{sha[:12]} could be built ({failures[:500] or 'none'})",
                           "see the layouts table artifact; try other --targets")
    production = production_metrics_task(settings, result.model)
    evals: dict[str, EvalResult] = {}
    gates: dict[str, GateResult] = {}
    for o in built:
        try:
            tune_task(Path(o.engine_dir), settings, config.latency, layout_key=o.key)
            evaluated = evaluate_task(o, checkpoint, config.profile, config.latency, settings)
            ab = latency_ab_task(o, result.model, config.profile, settings) if config.latency else None
        except Exception as exc:  # noqa: BLE001 (one layout's eval failure does not stop the others)
            o.status, o.reason = "eval-failed", report.first_line(exc)
            get_run_logger().warning("evaluating %s failed: %s", o.key, o.reason)
            continue
        result.evals_run += int(not evaluated.cached)
        evals[o.key] = with_ab(evaluated, ab)
        gates[o.key] = gate_task(o, evaluated.metrics, config, production, ab)
        o.gate = "passed" if gates[o.key].passed else "failed"
    evals_md = _publish_evals(result, evals, gates)
    recorded = register_task(settings, config, sha, committed, built, evals, evals_md)
    _publish_registration(result, recorded)
    if not recorded.gate_passed:
        _finish(result, "no build passed its gates; production untouched", promoted=False)
        raise OnboardError(f"{config.repo}@{sha[:12]}: no build passed its gates; production is untouched",
                           "see the evals artifact for the failing checks")
    if config.approve and not _approved(config, result):
        return result
    promoted = promote_task(settings, result.model, result.version) if config.promote else None
    services = steps.running_services(settings)
    if promoted is not None and promoted.promoted and services and config.serving_timeout_s > 0:
        result.served = serving_swap_task(services["api"], services.get("api_key"), result.model, result.version,
                                          config.serving_timeout_s)
    steps.mark_seen(settings, config.repo, sha)
    return _finish(result, _promotion_message(result, promoted), promoted=True)


# ------------------------------------------------------------------------------ the flow's bookkeeping

def _wait_for_builds(plans: list[TargetLayout], builds: dict[str, Any], result: OnboardResult,
                     targets: list[str]) -> list[LayoutOutcome]:
    """Each layout's outcome (a failed build stays with its layout) into ``result.layouts`` and the
    layouts table artifact; returns the built ones."""
    for p in plans:
        outcome = LayoutOutcome(key=p.key, target=p.target, backend=p.backend, precision=p.precision,
                                status="not selected" if p.feasible else "infeasible", reason=p.reason, rank=p.rank)
        if p.selected:
            state = builds[p.key].wait() or builds[p.key].state
            if state.is_completed():
                engine_dir, made_now = builds[p.key].result()
                manifest = steps.read_build(engine_dir)
                outcome.status, outcome.engine_dir = ("built" if made_now else "reused"), str(engine_dir)
                outcome.build_id, outcome.build_seconds = manifest["build_id"], manifest.get("build_seconds")
                result.model = result.model or steps.model_name(manifest)
                result.builds_made += int(made_now)
            else:
                try:
                    builds[p.key].result()
                except Exception as exc:  # noqa: BLE001 (the layout's error goes to its row)
                    outcome.status, outcome.reason = "failed", report.first_line(exc)
                get_run_logger().warning("layout %s failed: %s", p.key, outcome.reason)
        result.layouts.append(outcome)
    create_table_artifact(key=f"{report.slug(result.repo)}-layouts", table=report.layout_rows(result.layouts),
                          description=f"Layouts of {result.repo}@{result.sha[:12]} for {', '.join(targets)}")
    return [o for o in result.layouts if o.engine_dir]


def _publish_evals(result: OnboardResult, evals: dict[str, EvalResult], gates: dict[str, GateResult]) -> str:
    key, ref = report.slug(result.repo), f"{result.repo}@{result.sha[:12]}"
    markdown = report.eval_markdown(result.repo, result.sha, evals, gates)
    create_markdown_artifact(key=f"{key}-evals", markdown=markdown, description=f"Evals and gates of {ref}")
    plots = [e.plot for e in evals.values() if e.plot]
    if plots:
        create_markdown_artifact(key=f"{key}-latency", markdown=report.plot_markdown(Path(plots[0]).read_bytes()),
                                 description=f"Latency sweep of {ref}")
    return markdown


def _publish_registration(result: OnboardResult, recorded: steps.Recorded) -> None:
    for o in result.layouts:
        o.version = recorded.versions.get(o.key, o.version)
    result.gate_passed = recorded.gate_passed
    result.version = recorded.versions.get(recorded.chosen) if recorded.chosen else None
    result.links = recorded.links
    for label, url in result.links.items():
        create_link_artifact(key=f"{report.slug(result.repo)}-{report.slug(label)}", link=url,
                             link_text=f"{label} {result.model} v{result.version}")


def _approved(config: OnboardConfig, result: OnboardResult) -> bool:
    """Wait for a human's answer in the Prefect UI; a declined promotion ends the run Completed."""
    from prefect.flow_runs import pause_flow_run

    get_run_logger().info("waiting for an approval of %s v%s: resume this run in the Prefect UI", result.model,
                          result.version)
    answer = pause_flow_run(wait_for_input=Approval, timeout=config.approval_timeout_s, poll_interval=2,
                            key=f"approve-{result.version}")
    if not answer.approve:
        _finish(result, f"promotion declined by a human: {answer.comment or 'no comment'}", promoted=False)
    return answer.approve


def _promotion_message(result: OnboardResult, promoted: steps.PromoteOutcome | None) -> str:
    if promoted is not None:
        result.previous_production, result.promoted = promoted.previous, promoted.promoted
    if result.promoted:
        return f"{result.model} version {result.version} is production"
    if promoted is not None:
        return f"{result.model} version {result.version} passed, not promoted: {promoted.reason}"
    return f"{result.model} version {result.version} passed (not promoted)"


def _finish(result: OnboardResult, message: str, *, promoted: bool) -> OnboardResult:
    result.message = message
    markdown = report.result_markdown(result) if promoted else report.not_promoted_markdown(message)
    create_markdown_artifact(key=f"{report.slug(result.repo)}-result", markdown=markdown)
    get_run_logger().info(message)
    return result
