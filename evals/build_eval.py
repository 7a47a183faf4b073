"""Evaluate one build as an onboarding does: quality, the latency sweep, the A/B against
production, the gate; cached on disk by build_id (and the production build for the A/B).

Plain functions over builders' engine directories; the onboard flow calls them from its tasks.
"""

from __future__ import annotations

import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Protocol

from pydantic import BaseModel, ConfigDict

from evals.errors import BenchError
from onramp.files import write_text_atomic

__all__ = ["EVALS_VERSION", "LATENCY_LOAD", "EvalResult", "ABOutcome", "ProductionSource", "eval_cache_path",
           "load_cached_eval", "save_eval", "evaluate_build", "serve_engine", "ab_cache_path", "latency_ab",
           "with_ab", "judge"]

# Bumped when the evals measure something new (2: KL divergence and top-1 agreement), so that a
# build's cached result from before is measured again rather than judged without the new metrics.
EVALS_VERSION = 2

# Load for the latency sweep, per eval profile. ``quick`` keeps a CPU onboarding to about a
# minute; ``full`` is the seed's method as evals.latency defines it (700 in / 550 out, 4 rates).
LATENCY_LOAD: dict[str, dict[str, Any]] = {
    "quick": {"rates": (1.0, 2.0), "requests_per_rate": 4, "input_tokens": 128, "output_tokens": 48,
              "max_duration_s": 15.0, "single_requests": 2},
    "full": {},
}


class EvalResult(BaseModel):
    """What evaluating one build measured (cached by build_id and profile)."""

    model_config = ConfigDict(extra="forbid")

    build_id: str
    profile: str
    metrics: dict[str, float]
    report_md: str = ""
    plot: str | None = None       # path of the latency plot (PNG), if any
    seconds: float = 0.0
    cached: bool = False


class ABOutcome(BaseModel):
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


class ProductionSource(Protocol):
    """What the A/B needs of the registry: the production version and its engine directory."""

    def get_production(self, name: str) -> Any: ...

    def fetch(self, name: str, version_or_alias: str | int = ...) -> Path: ...


def _manifest(engine_dir: Path) -> dict[str, Any]:
    from builders.manifest import read_manifest

    return read_manifest(engine_dir).model_dump(by_alias=True)


# ------------------------------------------------------------------------------ quality + latency sweep

def eval_cache_path(settings: Any, build_id: str, profile: str) -> Path:
    return settings.home / "evals" / build_id / f"{profile}.v{EVALS_VERSION}.json"


def load_cached_eval(settings: Any, build_id: str, profile: str) -> EvalResult | None:
    path = eval_cache_path(settings, build_id, profile)
    try:
        result = EvalResult.model_validate_json(path.read_text())
    except (OSError, ValueError):
        return None
    if result.plot and not Path(result.plot).is_file():
        result.plot = None
    return result.model_copy(update={"cached": True})


def save_eval(settings: Any, result: EvalResult) -> Path:
    path = eval_cache_path(settings, result.build_id, result.profile)
    return write_text_atomic(path, result.model_dump_json(indent=2))


def evaluate_build(engine_dir: Path, reference_dir: Path, profile: str, settings: Any, *,
                   latency: bool = True) -> EvalResult:
    """Quality (vs the original checkpoint) and latency of one build; cached under ``settings.home`` by
    (build_id, profile)."""
    build_id = _manifest(engine_dir)["build_id"]
    cached = load_cached_eval(settings, build_id, profile)
    if cached is not None:
        return cached
    from evals.quality import run_quality

    started = time.monotonic()
    out_dir = eval_cache_path(settings, build_id, profile).parent
    out_dir.mkdir(parents=True, exist_ok=True)
    quality = run_quality(engine_dir, reference_dir, profile, cache_dir=settings.cache_dir)
    metrics: dict[str, float] = dict(_numbers(quality.metrics()))
    parts = [quality.to_markdown()]
    plot = None
    if latency:
        lat_metrics, lat_md, plot = _latency_sweep(engine_dir, out_dir, profile)
        metrics.update(lat_metrics)
        parts.append(lat_md)
    result = EvalResult(build_id=build_id, profile=profile, metrics=metrics,
                        report_md="\n\n".join(p for p in parts if p), plot=plot,
                        seconds=round(time.monotonic() - started, 1))
    save_eval(settings, result)
    return result


def _numbers(raw: Any) -> dict[str, float]:
    return {k: float(v) for k, v in dict(raw).items() if isinstance(v, (int, float)) and v is not None}


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
            raise BenchError(f"the benchmark server for {engine_dir.name} could not start: {exc.what}",
                             "try `onramp serve --engine NAME=DIR` by hand to see why") from None


def _latency_sweep(engine_dir: Path, out_dir: Path, profile: str) -> tuple[dict[str, float], str, str | None]:
    """The Poisson sweep (evals.latency) against the engine served on a free loopback port."""
    from evals.latency import run_sweep

    name = _manifest(engine_dir)["name"]
    load = LATENCY_LOAD.get(profile, LATENCY_LOAD["quick"])
    with serve_engine(engine_dir, name) as (url, key):
        report = run_sweep(url, name, api_key=key, plots_dir=out_dir / "plots", **load)
    plot = report.plots.get("throughput") or next(iter(report.plots.values()), None)
    return _numbers(report.metrics()), report.to_markdown(), plot


# ------------------------------------------------------------------------------ latency A/B

def ab_cache_path(settings: Any, build_id: str, production_build_id: str, profile: str) -> Path:
    return settings.home / "evals" / build_id / f"ab-{production_build_id[:16]}-{profile}.json"


def latency_ab(registry: ProductionSource, name: str, engine_dir: Path, profile: str, settings: Any) -> ABOutcome:
    """The build against the production version, both served side by side (evals.latency_ab);
    cached by (build, production build, profile). No A/B without a production version (a first
    onboarding), when the build is production itself, or when production is another layout."""
    from evals.latency_ab import ab_engines, load_for

    info = registry.get_production(name)
    if info is None:
        return ABOutcome(note="no production version yet (a first onboarding); absolute latency is reported only")
    build = _manifest(engine_dir)
    prod_build_id = info.tags.get("build_id") or ""
    if prod_build_id == build["build_id"]:
        return ABOutcome(production_version=info.version, note=f"this build is production (v{info.version}) itself")
    cache = ab_cache_path(settings, build["build_id"], prod_build_id or info.version, profile)
    try:
        return ABOutcome.model_validate_json(cache.read_text()).model_copy(update={"cached": True})
    except (OSError, ValueError):
        pass
    prod_dir = registry.fetch(name, info.version)
    prod = _manifest(prod_dir)
    if (prod["backend"], prod["layout"]["hardware"]) != (build["backend"], build["layout"]["hardware"]):
        return ABOutcome(production_version=info.version,
                         note=f"production v{info.version} is a {prod['backend']} build for "
                              f"{prod['layout']['hardware']}, not comparable on this machine")
    report = ab_engines(engine_dir, prod_dir, load_for(profile), candidate_label=Path(engine_dir).name,
                        production_label=f"v{info.version} ({prod_dir.name})")
    result = ABOutcome(production_version=info.version, report=report.model_dump())
    write_text_atomic(cache, result.model_dump_json(indent=2))
    return result


def with_ab(result: EvalResult, ab: ABOutcome | None) -> EvalResult:
    """The build's eval result with the A/B's numbers (ratios, both sides' medians) and report added."""
    if ab is None:
        return result
    report = ab.ab_report()
    metrics = {**result.metrics, **(report.metrics() if report is not None else {})}
    return result.model_copy(update={"metrics": metrics,
                                     "report_md": "\n\n".join(p for p in (result.report_md, ab.markdown()) if p)})


# ------------------------------------------------------------------------------ gate

def judge(metrics: dict[str, float], gates: str | None, production: dict[str, float] | None, *,
          latency: bool = True, ab: ABOutcome | None = None):
    """Judge a build's metrics (:func:`evals.gates.apply_gates`); without a latency sweep only the
    quality section applies. Latency against production is judged only by the side-by-side A/B
    (``ab``), never by the production run's stored latency numbers."""
    from evals.gates import apply_gates

    return apply_gates(metrics, gates, production=production, sections=None if latency else ("quality",),
                       ab=ab.ab_report() if ab is not None else None)
