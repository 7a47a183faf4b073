"""The plain functions the onboard flow's tasks call, one per step.

Each step is a thin adapter over the package that owns the logic (``onramp.hub``,
``builders``, ``evals``, ``registry``, ``serving``), so the flow reads as the pipeline and
every step can be called (and tested) without Prefect. The only logic that lives here is
onramp-wide idempotency: evals cached on disk by (build_id, profile), and registration looked
up by the build_id tag before a new model version is created.
"""

from __future__ import annotations

import json
import logging
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from flows.errors import OnboardError
from onramp.files import write_text_atomic
from onramp.settings import Settings

log = logging.getLogger(__name__)


class LayoutPlan(BaseModel):
    """One layout the planner considered for a target: built (selected) or not, and why."""

    model_config = ConfigDict(extra="forbid")

    key: str                       # e.g. "cpu-tp1-int8", unique within a plan
    target: str                    # hardware name as given in --targets
    kind: str                      # "cpu" or "gpu"
    backend: str
    precision: str
    quantization: str
    tp: int = 1
    feasible: bool = True
    selected: bool = False         # the layout(s) per target that get built
    rank: int = 0                  # among a target's selected layouts, the planner's preference (0 first)
    reason: str = ""
    max_batch: int = 0
    layout: dict[str, Any] | None = None  # builders.Layout of a feasible option


class EvalResult(BaseModel):
    """What the evaluate step measured for one build (cached by build_id and profile)."""

    model_config = ConfigDict(extra="forbid")

    build_id: str
    profile: str
    metrics: dict[str, float]
    report_md: str = ""
    plot: str | None = None       # path of the latency plot (PNG), if any
    seconds: float = 0.0
    cached: bool = False


class LatencyAB(BaseModel):
    """The side-by-side latency A/B of a build against production, or why there is none."""

    model_config = ConfigDict(extra="forbid")

    production_version: str | None = None
    report: dict[str, Any] | None = None  # evals.latency_ab.ABReport
    note: str = ""                        # why there is no A/B (first onboarding, same build, other layout)
    cached: bool = False

    def ab_report(self) -> Any:
        from evals.latency_ab import ABReport

        return None if self.report is None else ABReport.model_validate(self.report)

    def markdown(self) -> str:
        report = self.ab_report()
        if report is not None:
            return report.to_markdown()
        return f"## Latency A/B against production\n\nNo side-by-side comparison: {self.note}.\n"


class GateOutcome(BaseModel):
    model_config = ConfigDict(extra="forbid")

    passed: bool
    rows: list[dict[str, Any]] = Field(default_factory=list)  # metric, kind, value, threshold, result
    summary: str = ""  # evals' own markdown of the gate result
    gates_version: str = ""
    failed: list[str] = Field(default_factory=list)


# ------------------------------------------------------------------------------ pull

def pull(repo: str, revision: str, settings: Settings) -> tuple[Path, str]:
    """A pinned snapshot of ``repo@revision`` (safetensors only): ``(checkpoint_dir, sha)``."""
    from onramp.hub import pull as hub_pull

    return hub_pull(repo, revision, endpoint=settings.hf_endpoint, cache_dir=settings.cache_dir / "hub",
                    settings=settings)


def revision_date(repo: str, sha: str, settings: Settings) -> str | None:
    """The commit date of ``repo@sha`` on the Hub (tagged on the model version as ``hf_revision_date``)."""
    from onramp.hub import revision_date as hub_revision_date

    return hub_revision_date(repo, sha, endpoint=settings.hf_endpoint)


# ------------------------------------------------------------------------------ plan

def default_precision(kind: str, model_dtype: str) -> str:
    """CPU engines are int8 (OpenVINO weight compression); GPUs keep the checkpoint's 16-bit dtype."""
    if kind == "cpu":
        return "int8"
    return model_dtype if model_dtype in ("fp16", "bf16") else "fp16"


def plan(checkpoint: Path, targets: list[str], precision: str | None = None) -> list[LayoutPlan]:
    """Every layout the planner considers for each target; per target, the smallest-TP feasible
    layout of the wanted precision is selected for building (the others explain themselves).
    ``precision`` may list several (``int8,int4``): each is built and gated, ranked by the
    planner's preference (:meth:`builders.planner.Plan.candidates`: fewest weight bytes first)."""
    from builders.hardware import get_hardware
    from builders.planner import plan_checkpoint

    out: list[LayoutPlan] = []
    for target in targets:
        hw = get_hardware(target)
        result = plan_checkpoint(checkpoint, hw.name)
        wants = [w.strip() for w in (precision or default_precision(hw.kind, result.facts.dtype)).split(",")
                 if w.strip()]
        for want in wants:
            if want not in hw.precisions:
                raise OnboardError(f"{hw.name} offers no precision {want!r}",
                                   f"pass --precision one of {', '.join(hw.precisions)} (or leave it out)")
        ranks = {id(o): i for i, o in enumerate(result.candidates(wants))}
        for o in result.options:
            out.append(LayoutPlan(
                key=f"{hw.name}-tp{o.tp}-{o.precision}", target=hw.name, kind=hw.kind, backend=hw.backend,
                precision=o.precision, quantization=o.quantization, tp=o.tp, feasible=o.feasible,
                selected=id(o) in ranks, rank=ranks.get(id(o), 0), reason=o.reason, max_batch=o.max_batch,
                layout=o.to_layout().model_dump() if o.feasible else None,
            ))
    return out


# ------------------------------------------------------------------------------ build

def build(checkpoint: Path, layout: LayoutPlan, repo: str, sha: str, settings: Settings) -> Path:
    """Build (or reuse: builders caches by build_id) the engine of one selected layout.

    CPU builds use the backend's own default layout for the quantization (what `onramp build`
    makes); GPU builds take the planner's layout (TP, max batch from the KV cache left).
    """
    from builders import build_engine
    from builders.manifest import Layout

    quant = layout.quantization if layout.quantization != "none" else layout.precision
    chosen = Layout(**layout.layout) if layout.kind == "gpu" and layout.layout else None
    return build_engine(checkpoint, backend=layout.backend, quant=quant, out_root=settings.engines_dir,
                        repo=repo, revision=sha, layout=chosen, settings=settings)


def created_after(engine_dir: Path, started: float) -> bool:
    """Whether the build in ``engine_dir`` was made after ``started`` (not a reused one)."""
    from datetime import datetime

    created = read_build(engine_dir).get("created") or ""
    try:
        return datetime.fromisoformat(created.replace("Z", "+00:00")).timestamp() >= started
    except ValueError:
        return False


def read_build(engine_dir: Path) -> dict[str, Any]:
    from builders.manifest import read_manifest

    manifest = read_manifest(engine_dir)
    return manifest.model_dump(by_alias=True) if hasattr(manifest, "model_dump") else dict(manifest)


def model_name(manifest: dict[str, Any]) -> str:
    """The registered model of a build: its full Hub repo id (``org--name``, registry.names)."""
    from registry.names import registered_name

    return registered_name((manifest.get("source") or {}).get("repo"), manifest["name"])


# ------------------------------------------------------------------------------ evaluate

# Bumped when the evals measure something new (2: KL divergence and top-1 agreement), so that a
# build's cached result from before is measured again rather than judged without the new metrics.
EVALS_VERSION = 2


def eval_cache_path(settings: Settings, build_id: str, profile: str) -> Path:
    return settings.home / "evals" / build_id / f"{profile}.v{EVALS_VERSION}.json"


def load_cached_eval(settings: Settings, build_id: str, profile: str) -> EvalResult | None:
    path = eval_cache_path(settings, build_id, profile)
    try:
        result = EvalResult.model_validate_json(path.read_text())
    except (OSError, ValueError):
        return None
    if result.plot and not Path(result.plot).is_file():
        result.plot = None
    return result.model_copy(update={"cached": True})


def save_eval(settings: Settings, result: EvalResult) -> Path:
    path = eval_cache_path(settings, result.build_id, result.profile)
    return write_text_atomic(path, result.model_dump_json(indent=2))


def evaluate(engine_dir: Path, reference_dir: Path, profile: str, settings: Settings, *,
             latency: bool = True) -> EvalResult:
    """Quality (vs the original checkpoint) and latency of one build; cached by (build_id, profile)."""
    build_id = read_build(engine_dir)["build_id"]
    cached = load_cached_eval(settings, build_id, profile)
    if cached is not None:
        return cached
    started = time.monotonic()
    from evals.quality import run_quality

    out_dir = eval_cache_path(settings, build_id, profile).parent
    out_dir.mkdir(parents=True, exist_ok=True)
    quality = run_quality(engine_dir, reference_dir, profile, cache_dir=settings.cache_dir)
    metrics: dict[str, float] = dict(_metrics_of(quality))
    parts = [_markdown_of(quality)]
    plot = None
    if latency:
        lat_metrics, lat_md, plot = _latency(engine_dir, out_dir, profile)
        metrics.update(lat_metrics)
        parts.append(lat_md)
    result = EvalResult(build_id=build_id, profile=profile, metrics=metrics,
                        report_md="\n\n".join(p for p in parts if p), plot=plot,
                        seconds=round(time.monotonic() - started, 1))
    save_eval(settings, result)
    return result


def _metrics_of(report: Any) -> dict[str, float]:
    raw = report.metrics() if callable(getattr(report, "metrics", None)) else getattr(report, "metrics", {})
    return {k: float(v) for k, v in dict(raw).items() if isinstance(v, (int, float)) and v is not None}


def _markdown_of(report: Any) -> str:
    for attr in ("to_markdown", "markdown"):
        fn = getattr(report, attr, None)
        if callable(fn):
            return str(fn())
        if isinstance(fn, str):
            return fn
    return ""


# Load for the latency sweep, per eval profile. ``quick`` keeps a CPU onboarding to about a
# minute; ``full`` is the seed's method as evals.latency defines it (700 in / 550 out, 4 rates).
LATENCY_LOAD: dict[str, dict[str, Any]] = {
    "quick": {"rates": (1.0, 2.0), "requests_per_rate": 4, "input_tokens": 128, "output_tokens": 48,
              "max_duration_s": 15.0, "single_requests": 2},
    "full": {},
}


@contextmanager
def serve_engine(engine_dir: Path, name: str, *, start_timeout: float = 300.0):
    """Serve one engine on a free loopback port (``onramp serve``, auth on with a throw-away key)
    until the block ends; yields ``(url, api_key)``."""
    import tempfile

    from serving.auth import create_key
    from serving.process import ServerStartError, run_onramp_serve

    with tempfile.TemporaryDirectory(prefix="onramp-bench-") as tmp:
        keys = Path(tmp) / "keys.json"
        key = create_key(keys, "latency-bench")
        try:
            with run_onramp_serve(["--engine", f"{name}={engine_dir}", "--keys-file", str(keys)],
                                  log=Path(tmp) / "serve.log", timeout=start_timeout) as server:
                yield server.url, key
        except ServerStartError as exc:
            raise OnboardError(f"the benchmark server for {engine_dir.name} could not start: {exc.what}",
                               "try `onramp serve --engine NAME=DIR` by hand to see why") from None


def _latency(engine_dir: Path, out_dir: Path, profile: str) -> tuple[dict[str, float], str, str | None]:
    """The Poisson sweep (evals.latency) against the engine served on a free loopback port."""
    from evals.latency import run_sweep

    name = read_build(engine_dir)["name"]
    load = LATENCY_LOAD.get(profile, LATENCY_LOAD["quick"])
    with serve_engine(engine_dir, name) as (url, key):
        report = run_sweep(url, name, api_key=key, plots_dir=out_dir / "plots", **load)
    plot = report.plots.get("throughput") or next(iter(report.plots.values()), None)
    return _metrics_of(report), _markdown_of(report), plot


# ------------------------------------------------------------------------------ latency A/B

def ab_cache_path(settings: Settings, build_id: str, production_build_id: str, profile: str) -> Path:
    return settings.home / "evals" / build_id / f"ab-{production_build_id[:16]}-{profile}.json"


def latency_ab(registry: Any, name: str, engine_dir: Path, profile: str, settings: Settings) -> LatencyAB:
    """The build against the production version, both served side by side (evals.latency_ab);
    cached by (build, production build, profile). No A/B without a production version (a first
    onboarding), when the build is production itself, or when production is another layout."""
    from evals.latency_ab import ab_engines, load_for

    info = registry.get_production(name)
    if info is None:
        return LatencyAB(note="no production version yet (a first onboarding); absolute latency is reported only")
    build = read_build(engine_dir)
    prod_build_id = info.tags.get("build_id") or ""
    if prod_build_id == build["build_id"]:
        return LatencyAB(production_version=info.version, note=f"this build is production (v{info.version}) itself")
    cache = ab_cache_path(settings, build["build_id"], prod_build_id or info.version, profile)
    try:
        return LatencyAB.model_validate_json(cache.read_text()).model_copy(update={"cached": True})
    except (OSError, ValueError):
        pass
    prod_dir = registry.fetch(name, info.version)
    prod = read_build(prod_dir)
    if (prod["backend"], prod["layout"]["hardware"]) != (build["backend"], build["layout"]["hardware"]):
        return LatencyAB(production_version=info.version,
                         note=f"production v{info.version} is a {prod['backend']} build for "
                              f"{prod['layout']['hardware']}, not comparable on this machine")
    report = ab_engines(engine_dir, prod_dir, load_for(profile), candidate_label=Path(engine_dir).name,
                        production_label=f"v{info.version} ({prod_dir.name})")
    result = LatencyAB(production_version=info.version, report=report.model_dump())
    write_text_atomic(cache, result.model_dump_json(indent=2))
    return result


def with_ab(result: EvalResult, ab: LatencyAB | None) -> EvalResult:
    """The build's eval result with the A/B's numbers (ratios, both sides' medians) and report added."""
    if ab is None:
        return result
    report = ab.ab_report()
    metrics = {**result.metrics, **(report.metrics() if report is not None else {})}
    return result.model_copy(update={"metrics": metrics,
                                     "report_md": "\n\n".join(p for p in (result.report_md, ab.markdown()) if p)})


# ------------------------------------------------------------------------------ gate

def gate(metrics: dict[str, float], gates: str | None, production: dict[str, float] | None, *,
         latency: bool = True, ab: LatencyAB | None = None) -> GateOutcome:
    """Judge a build's metrics (evals.gates); without a latency sweep only the quality section applies.
    Latency against production is judged only by the side-by-side A/B (``ab``), never by the
    production run's stored latency numbers."""
    from evals.gates import apply_gates

    result = apply_gates(metrics, gates, production=production,
                         sections=None if latency else ("quality",),
                         ab=ab.ab_report() if ab is not None else None)
    rows = [{"metric": c.metric, "kind": c.kind, "value": c.value, "threshold": c.threshold,
             "result": ("pass" if c.passed else "miss (advisory)" if c.advisory
                        else "FAIL" if c.gating else "missed (report only)"), "note": c.note}
            for c in result.checks]
    return GateOutcome(passed=result.passed, rows=rows, summary=result.to_markdown(),
                       gates_version=str(result.gates_version), failed=list(result.failed))


# ------------------------------------------------------------------------------ register / promote

def find_version(registry: Any, name: str, build_id: str) -> str | None:
    """The model version already registered for ``build_id``, if any (the idempotency key)."""
    from mlflow.exceptions import MlflowException

    try:
        versions = registry.client.search_model_versions(f"name = '{name}'")
    except MlflowException:
        return None
    found = [mv for mv in versions if (mv.tags or {}).get("build_id") == build_id]
    return str(max(int(mv.version) for mv in found)) if found else None


def production_metrics(registry: Any, name: str) -> dict[str, float] | None:
    """The metrics logged for the version at ``production`` (what a candidate must not regress)."""
    info = registry.get_production(name)
    if info is None or not info.run_id:
        return None
    run = registry.client.get_run(info.run_id)
    return dict(run.data.metrics) or None


def register(registry: Any, engine_dir: Path, *, run_id: str | None, gate_passed: bool,
             metrics: dict[str, float], tags: dict[str, str]) -> tuple[str, str, bool]:
    """Register the build unless its build_id already is; ``(name, version, newly_created)``."""
    manifest = read_build(engine_dir)
    name, build_id = model_name(manifest), manifest["build_id"]
    existing = find_version(registry, name, build_id)
    if existing is not None:
        gate_tag = "passed" if gate_passed else "failed"
        registry.client.set_model_version_tag(name, existing, "gate", gate_tag)
        if gate_passed:
            registry.client.set_registered_model_alias(name, "candidate", existing)
        return name, existing, False
    version = registry.register(engine_dir, name=name, run_id=run_id, gate_passed=gate_passed, metrics=metrics,
                                tags=tags)
    return name, version, True


class PromoteOutcome(BaseModel):
    model_config = ConfigDict(extra="forbid")

    promoted: bool
    previous: str | None = None
    reason: str = ""


def promote(registry: Any, name: str, version: str) -> PromoteOutcome:
    """Promote ``version`` unless production already holds a newer Hub revision (then it is a normal
    outcome, not a failure: a newer onboarding of the same repo won the race)."""
    from registry.errors import StalePromotionError

    try:
        previous = registry.promote(name, version)
    except StalePromotionError as exc:
        log.info("not promoting %s version %s: %s", name, version, exc.what)
        return PromoteOutcome(promoted=False, reason=exc.what)
    return PromoteOutcome(promoted=True, previous=previous)


def tracking_links(registry: Any, name: str, version: str, run_id: str | None, ui: str | None) -> dict[str, str]:
    """Links to the MLflow run and model version (UI links when an MLflow server is up)."""
    links: dict[str, str] = {}
    if ui:
        exp = registry.experiment_id()
        if run_id:
            links["mlflow_run"] = f"{ui}/#/experiments/{exp}/runs/{run_id}"
        links["mlflow_version"] = f"{ui}/#/models/{name}/versions/{version}"
    else:
        if run_id:
            links["mlflow_run"] = f"{registry.tracking_uri}#runs/{run_id}"
        links["mlflow_version"] = f"models:/{name}/{version}"
    return links


def wait_for_serving(api_url: str, api_key: str | None, name: str, version: str, timeout: float = 300.0) -> bool:
    """Poll the API server's /v1/models until ``name`` is served at ``version`` (the swap)."""
    from onramp.endpoint import EndpointClient

    return EndpointClient(api_url, api_key).wait_served(name, version, timeout=timeout, interval=2.0)


def dumps(obj: Any) -> str:
    return json.dumps(obj, indent=2, default=str)


def fail_if(condition: bool, what: str, fix: str) -> None:
    if condition:
        raise OnboardError(what, fix)
