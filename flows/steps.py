"""The orchestration glue the onboard flow's tasks call, where no single package owns a step.

Planning and building live in :mod:`builders.targets`, evaluating, the A/B and gating in
:mod:`evals.build_eval`, rendering in :mod:`flows.report`. What is left here joins packages:
idempotent registration under one onboarding run (a build already registered by build_id is
not registered again), promotion, and waiting for the server to swap.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from flows import report
from onramp.settings import Settings

__all__ = ["pull", "revision_date", "read_build", "model_name", "find_version", "production_metrics", "register",
           "Recorded", "choose_build", "record_onboarding", "PromoteOutcome", "promote", "wait_for_serving",
           "running_services", "mark_seen"]

log = logging.getLogger(__name__)


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


# ------------------------------------------------------------------------------ builds

def read_build(engine_dir: Path) -> dict[str, Any]:
    from builders.manifest import read_manifest

    return read_manifest(engine_dir).model_dump(by_alias=True)


def model_name(manifest: dict[str, Any]) -> str:
    """The registered model of a build: its full Hub repo id (``org--name``, registry.names)."""
    from registry.names import registered_name

    return registered_name((manifest.get("source") or {}).get("repo"), manifest["name"])


# ------------------------------------------------------------------------------ register

def find_version(registry: Any, name: str, build_id: str) -> str | None:
    """The model version already registered for ``build_id``, if any (the idempotency key)."""
    return registry.find_version(name, build_id)


def production_metrics(registry: Any, name: str) -> dict[str, float] | None:
    """The metrics logged for the version at ``production`` (what a candidate must not regress)."""
    return registry.production_metrics(name)


def register(registry: Any, engine_dir: Path, *, run_id: str | None, gate_passed: bool,
             metrics: dict[str, float], tags: dict[str, str]) -> tuple[str, str, bool]:
    """Register the build unless its build_id already is; ``(name, version, newly_created)``."""
    manifest = read_build(engine_dir)
    name, build_id = model_name(manifest), manifest["build_id"]
    existing = find_version(registry, name, build_id)
    if existing is not None:
        registry.mark_gate(name, existing, gate_passed)
        return name, existing, False
    version = registry.register(engine_dir, name=name, run_id=run_id, gate_passed=gate_passed, metrics=metrics,
                                tags=tags)
    return name, version, True


class Recorded(BaseModel):
    """The onboarding run in MLflow: the version of each registered layout and the one chosen."""

    model_config = ConfigDict(extra="forbid")

    run_id: str
    versions: dict[str, str] = Field(default_factory=dict)  # layout key -> model version
    chosen: str | None = None                               # layout key of the version to promote
    gate_passed: bool = False
    links: dict[str, str] = Field(default_factory=dict)


def choose_build(builds: list[report.LayoutOutcome], registered: set[str]) -> tuple[str | None, bool]:
    """``(key, passed)`` of the build an onboarding promotes: among registered builds that passed
    their gates, the planner's best-ranked (int4 before int8 when both pass); when none passed, the
    first registered one (its metrics go on the run), with ``passed`` False."""
    passing = [o.key for o in sorted(builds, key=lambda o: o.rank) if o.gate == "passed" and o.key in registered]
    if passing:
        return passing[0], True
    return next((o.key for o in builds if o.key in registered), None), False


def record_onboarding(settings: Settings, *, run_name: str, params: dict[str, str], tags: dict[str, str],
                      builds: list[report.LayoutOutcome], evals: dict[str, Any], report_md: str,
                      version_tags: dict[str, str | None]) -> Recorded:
    """Register every evaluated build under one onboarding run (idempotent by build_id), log the
    chosen build's metrics and reports on it, and end it FINISHED when a build passed, else FAILED."""
    from registry.client import Registry

    registry = Registry(settings)
    parent = registry.start_run(run_name, params=params, tags=tags)
    recorded = Recorded(run_id=parent.run_id)
    try:
        for o in builds:
            if o.key in evals:
                name, recorded.versions[o.key], _ = register(
                    registry, Path(o.engine_dir), run_id=parent.run_id, gate_passed=o.gate == "passed",
                    metrics=evals[o.key].metrics, tags={**version_tags, "layout_key": o.key})
        recorded.chosen, recorded.gate_passed = choose_build(builds, set(recorded.versions))
        if recorded.chosen is not None:
            chosen = evals[recorded.chosen]
            parent.log_metrics(chosen.metrics)
            if chosen.plot:
                parent.log_artifact(chosen.plot, "reports")
            parent.log_text(report_md, "reports/evals.md")
            version = recorded.versions[recorded.chosen]
            ui = (running_services(settings) or {}).get("mlflow")
            recorded.links = report.tracking_links(name, version, parent.run_id, ui=ui,
                                                   tracking_uri=registry.tracking_uri,
                                                   experiment_id=registry.experiment_id() if ui else None)
    except BaseException:
        parent.end("FAILED")
        raise
    parent.end("FINISHED" if recorded.gate_passed else "FAILED")
    return recorded


# ------------------------------------------------------------------------------ promote / serve

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


def wait_for_serving(api_url: str, api_key: str | None, name: str, version: str, timeout: float = 300.0) -> bool:
    """Poll the API server's /v1/models until ``name`` is served at ``version`` (the swap)."""
    from onramp.endpoint import EndpointClient

    return EndpointClient(api_url, api_key).wait_served(name, version, timeout=timeout, interval=2.0)


def running_services(settings: Settings) -> dict | None:
    """The services ``onramp up`` started (API, MLflow UI...), if it runs."""
    from flows.prefect_env import running_services as _running

    return _running(settings)


def mark_seen(settings: Settings, repo: str, sha: str) -> None:
    """Remember ``repo@sha`` as onboarded, so the watcher does not start it again."""
    from flows.watch import mark_seen as _mark, state_path

    _mark(state_path(settings), repo, sha)
