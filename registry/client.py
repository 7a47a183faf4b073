"""The model registry: one :class:`Registry` joining its parts, each doing one job.

- :mod:`registry.tracking` — the MLflow connection (an explicit client, the experiment, one error
  for a server that is down);
- :mod:`registry.runs` — run logging: every onboarding is a run with params, metrics, reports, plots;
- :mod:`registry.store` — the artifact store and its transfer policy (the one retry layer of
  every upload and download);
- :mod:`registry.cache` — the verified cache: engines checked against their manifests before use;
- :mod:`registry.versions` — registered models, versions, tags and aliases (``candidate``,
  ``production``, ``previous_production``); :mod:`registry.promotion` moves ``production``;
- :mod:`registry.registration` — registering a build: all of it or nothing.

Every engine build is a version of the registered model named after its Hub repo
(``org--name``, :mod:`registry.names`), tagged with where it came from and whether it passed
its gates. Registration is idempotent by build id: :meth:`Registry.find_version` finds a build
already registered, :meth:`Registry.mark_gate` records a new gate result for it.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from registry import promotion
from registry.cache import VerifiedCache
from registry.errors import RegistryError
from registry.registration import ENGINE_PATH, register_engine
from registry.runs import RunHandle, Runs
from registry.store import ArtifactStore
from registry.tracking import Tracking
from registry.versions import CANDIDATE, PREVIOUS, PRODUCTION, ModelInfo, VersionInfo, Versions

if TYPE_CHECKING:
    from mlflow import MlflowClient

    from onramp.settings import Settings
    from registry.watch import AliasWatcher, OnChange

__all__ = ["CANDIDATE", "PREVIOUS", "PRODUCTION", "ModelInfo", "Registry", "RunHandle", "VersionInfo"]


class Registry:
    """MLflow tracking + model registry for onramp's engines.

    ``Registry(settings)`` uses ``settings.mlflow_tracking_uri`` / ``mlflow_artifact_root``;
    ``tracking_uri=`` / ``artifact_root=`` override them. ``attempts`` and ``retry_wait`` bound
    the retries of every artifact transfer (:mod:`registry.store`); ``lock_timeout_s`` and
    ``lock_lease_s`` the production lock (:mod:`registry.promotion`).
    """

    def __init__(
        self,
        settings: Settings | None = None,
        *,
        tracking_uri: str | None = None,
        artifact_root: str | None = None,
        cache_dir: str | Path | None = None,
        experiment: str = "onramp",
        attempts: int = 4,
        retry_wait: float = 1.0,
        connect_timeout: float = 5.0,
        lock_timeout_s: float = 120.0,
        lock_lease_s: float = 60.0,
    ):
        if settings is None:
            from onramp.settings import load_settings

            settings = load_settings()
        self.settings = settings
        tracking_uri = tracking_uri or settings.mlflow_tracking_uri
        if artifact_root is None:
            artifact_root = settings.mlflow_artifact_root
            # The embedded default (a local path under ONRAMP_HOME) means nothing to a remote
            # tracking server: let the server choose its own artifact root then.
            if tracking_uri.startswith(("http://", "https://")) and artifact_root == str(settings.home / "mlartifacts"):
                artifact_root = None
        self.tracking = Tracking(tracking_uri, artifact_root, experiment)
        self.store = ArtifactStore(tracking_uri, attempts=attempts, retry_wait=retry_wait,
                                   connect_timeout=connect_timeout)
        self.runs = Runs(self.tracking, self.store)
        self.versions = Versions(self.tracking)
        self.cache = VerifiedCache(Path(cache_dir) if cache_dir else settings.home / "registry" / "cache", tracking_uri)
        self.lock = promotion.LockPolicy(timeout_s=lock_timeout_s, lease_s=lock_lease_s)

    # ------------------------------------------------------------------ the connection

    @property
    def tracking_uri(self) -> str:
        return self.tracking.tracking_uri

    @property
    def artifact_root(self) -> str | None:
        return self.tracking.artifact_root

    @property
    def experiment_name(self) -> str:
        return self.tracking.experiment_name

    @property
    def cache_dir(self) -> Path:
        return self.cache.root

    @property
    def client(self) -> MlflowClient:
        """The raw MLflow client, for what the registry has no method for (tests, ad-hoc queries)."""
        return self.tracking.client

    def experiment_id(self) -> str:
        return self.tracking.experiment_id()

    # ------------------------------------------------------------------ runs

    def start_run(self, run_name: str | None = None, *, params: dict[str, Any] | None = None,
                  tags: dict[str, Any] | None = None, parent_run_id: str | None = None) -> RunHandle:
        """Create a run (e.g. one onboarding) and return logging helpers bound to it."""
        return self.runs.start(run_name, params=params, tags=tags, parent_run_id=parent_run_id)

    @contextlib.contextmanager
    def run(self, run_name: str | None = None, **kwargs: Any) -> Iterator[RunHandle]:
        """``with registry.run("onboard ...") as run:`` — FINISHED on exit, FAILED on an exception."""
        with self.runs.run(run_name, **kwargs) as handle:
            yield handle

    # ------------------------------------------------------------------ registration

    def register(self, engine_dir: str | Path, *, name: str | None = None, run_id: str | None = None,
                 tags: dict[str, Any] | None = None, gate_passed: bool,
                 metrics: dict[str, float] | None = None) -> str:
        """Register a built engine as a new version of its model; return the version.

        The model is named after the engine's Hub repo (``ORG/NAME`` → ``org--name``) unless
        ``name`` is given; the build run is a child of ``run_id`` when given. All or nothing:
        see :mod:`registry.registration`.
        """
        return register_engine(self.tracking, self.store, self.runs, engine_dir, name=name, run_id=run_id,
                               tags=tags, gate_passed=gate_passed, metrics=metrics)

    def find_version(self, name: str, build_id: str) -> str | None:
        """The version already registered for ``build_id``, if any (the idempotency key)."""
        return self.versions.find_version(name, build_id)

    def mark_gate(self, name: str, version: str, passed: bool) -> None:
        """Record a version's gate result (a version that passed becomes the ``candidate``)."""
        self.versions.mark_gate(name, version, passed)

    def set_version_tag(self, name: str, version: str, key: str, value: Any) -> None:
        self.versions.set_version_tag(name, version, key, value)

    def versions_tagged(self, name: str, key: str, value: str) -> list[VersionInfo]:
        """The versions of ``name`` whose tag ``key`` is ``value``, newest first."""
        return self.versions.tagged(name, key, value)

    def production_metrics(self, name: str) -> dict[str, float] | None:
        """The metrics logged with the production version (what a candidate must not regress)."""
        return self.versions.production_metrics(name)

    # ------------------------------------------------------------------ versions and aliases

    def aliases(self, name: str) -> dict[str, str]:
        return self.versions.aliases(name)

    def alias_version(self, name: str, alias: str) -> str | None:
        """The version an alias points at, or None (also None for an unknown model)."""
        return self.versions.alias_version(name, alias)

    def get_production(self, name: str) -> VersionInfo | None:
        """The version serving must serve, or None if nothing was promoted yet."""
        return self.versions.production(name)

    def version_info(self, name: str, version_or_alias: str | int) -> VersionInfo:
        """One version (a number or an alias) with its tags; ``.gate`` says whether it passed."""
        return self.versions.info(name, version_or_alias)

    def model_names(self) -> list[str]:
        return self.versions.model_names()

    def list_models(self) -> list[ModelInfo]:
        """Every registered model with its aliases and versions (newest first)."""
        return self.versions.list_models()

    # ------------------------------------------------------------------ promotion

    def promote(self, name: str, version: str | int, *, force: bool = False) -> str | None:
        """Point ``production`` at ``version``; return the previous one (:func:`registry.promotion.promote`)."""
        return promotion.promote(self.versions, name, version, lock=self.lock, force=force)

    def rollback(self, name: str) -> str:
        """Restore the production version from before the last promote; return it."""
        return promotion.rollback(self.versions, name, lock=self.lock)

    def production_state(self, name: str) -> promotion.ProductionState:
        """The production record (seq, production, history, recent moves), reconciled with the alias."""
        return promotion.production_state(self.versions, name, lock=self.lock)

    # ------------------------------------------------------------------ fetch and watch

    def fetch(self, name: str, version_or_alias: str | int = PRODUCTION) -> Path:
        """A verified local copy of a registered engine (a version number or an alias; see :mod:`registry.cache`)."""
        mv = self.versions.get(name, version_or_alias)
        version = str(mv.version)
        want = {k: (mv.tags or {}).get(k) or None for k in ("build_id", "manifest_sha256")}

        def download(tmp: Path) -> Path:
            if not mv.run_id:
                raise RegistryError(f"{name} version {version} has no run (source {mv.source})",
                                    "register engines with `Registry.register`")
            uri = self.tracking.artifact_uri(mv.run_id)
            return self.store.get_dir(uri, ENGINE_PATH, tmp, f"{name} version {version}")

        return self.cache.get(name, version, want, download)

    def watch(self, *, alias: str = PRODUCTION, names: list[str] | None = None, interval: float = 5.0,
              on_change: OnChange | None = None) -> AliasWatcher:
        """An :class:`registry.watch.AliasWatcher` on this registry (not started)."""
        from registry.watch import AliasWatcher

        return AliasWatcher(self, alias=alias, names=names, interval=interval, on_change=on_change)
