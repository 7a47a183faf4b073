"""Registered models, their versions and aliases, as onramp reads and tags them.

A registered model per Hub repo (:mod:`registry.names`); a version per engine build, tagged
with where it came from (``hf_repo``, ``hf_revision``, ``build_id``, ...) and whether it passed
its gates (``gate``). Aliases: ``candidate`` (newest build that passed), ``production`` (what
serving serves), ``previous_production`` (what a rollback restores; moves of ``production``
are :mod:`registry.promotion`'s), ``canary`` (:mod:`registry.canary`).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from registry.errors import ModelNotFoundError
from registry.names import is_lock_name

if TYPE_CHECKING:
    from mlflow import MlflowClient
    from mlflow.entities.model_registry import ModelVersion, RegisteredModel

    from registry.tracking import Tracking

__all__ = ["CANDIDATE", "PREVIOUS", "PRODUCTION", "ModelInfo", "VersionInfo", "Versions"]

CANDIDATE = "candidate"
PRODUCTION = "production"
PREVIOUS = "previous_production"
GATE_TAG = "gate"


@dataclass
class VersionInfo:
    """One registered engine build, as the CLI and the watcher see it."""

    name: str
    version: str
    run_id: str | None
    source: str
    tags: dict[str, str]
    aliases: list[str]
    created: int  # ms since the epoch

    @property
    def gate(self) -> str:
        return self.tags.get(GATE_TAG, "?")


@dataclass
class ModelInfo:
    name: str
    aliases: dict[str, str]
    versions: list[VersionInfo] = field(default_factory=list)


def _info(mv: ModelVersion) -> VersionInfo:
    return VersionInfo(
        name=mv.name, version=str(mv.version), run_id=mv.run_id, source=mv.source,
        tags=dict(mv.tags or {}), aliases=list(getattr(mv, "aliases", []) or []),
        created=int(mv.creation_timestamp or 0),
    )


class Versions:
    """Lookups, listings, tags and aliases of the registered models at ``tracking``."""

    def __init__(self, tracking: Tracking):
        self.tracking = tracking

    @property
    def client(self) -> MlflowClient:
        return self.tracking.client

    # ------------------------------------------------------------------ lookups

    def model(self, name: str) -> RegisteredModel:
        """The registered model (its aliases and tags); :class:`ModelNotFoundError` if there is none."""
        from mlflow.exceptions import MlflowException

        try:
            return self.tracking.call(lambda: self.client.get_registered_model(name))
        except MlflowException:
            raise ModelNotFoundError(f"no registered model {name!r}", "see `onramp models`") from None

    def get(self, name: str, version_or_alias: str | int) -> ModelVersion:
        """A version by number or alias; an unknown one is a :class:`ModelNotFoundError` listing what there is."""
        from mlflow.exceptions import MlflowException

        ref = str(version_or_alias)
        try:
            if ref.isdigit():
                return self.tracking.call(lambda: self.client.get_model_version(name, ref))
            return self.tracking.call(lambda: self.client.get_model_version_by_alias(name, ref))
        except MlflowException:
            pass
        try:
            model = self.client.get_registered_model(name)
        except MlflowException:
            known = ", ".join(m.name for m in self.client.search_registered_models()
                              if not is_lock_name(m.name)) or "none"
            raise ModelNotFoundError(
                f"no registered model {name!r} (registered: {known})", "see `onramp models`"
            ) from None
        aliases = ", ".join(f"{a}→{v}" for a, v in sorted(model.aliases.items())) or "none"
        kind = "version" if ref.isdigit() else "alias"
        raise ModelNotFoundError(
            f"model {name!r} has no {kind} {ref!r} (aliases: {aliases})", "see `onramp models`"
        ) from None

    def info(self, name: str, version_or_alias: str | int) -> VersionInfo:
        return _info(self.get(name, version_or_alias))

    def aliases(self, name: str) -> dict[str, str]:
        return {k: str(v) for k, v in self.model(name).aliases.items()}

    def alias_version(self, name: str, alias: str) -> str | None:
        """The version an alias points at, or None (also None for an unknown model)."""
        from mlflow.exceptions import MlflowException

        try:
            return str(self.tracking.call(lambda: self.client.get_model_version_by_alias(name, alias)).version)
        except MlflowException:
            return None

    def production(self, name: str) -> VersionInfo | None:
        """The version serving must serve, or None if nothing was promoted yet."""
        version = self.alias_version(name, PRODUCTION)
        return None if version is None else self.info(name, version)

    def all_of(self, name: str) -> list[VersionInfo]:
        """Every version of ``name`` (none for an unknown model)."""
        from mlflow.exceptions import MlflowException

        try:
            found = self.tracking.call(lambda: self.client.search_model_versions(f"name = '{name}'"))
        except MlflowException:
            return []
        return [_info(mv) for mv in found]

    def tagged(self, name: str, key: str, value: str) -> list[VersionInfo]:
        """The versions of ``name`` whose tag ``key`` is ``value``, newest first."""
        found = [v for v in self.all_of(name) if v.tags.get(key) == value]
        return sorted(found, key=lambda v: int(v.version), reverse=True)

    def find_version(self, name: str, build_id: str) -> str | None:
        """The version already registered for ``build_id`` (the idempotency key of a registration)."""
        found = self.tagged(name, "build_id", build_id)
        return found[0].version if found else None

    def run_metrics(self, run_id: str) -> dict[str, float]:
        return dict(self.tracking.call(lambda: self.client.get_run(run_id)).data.metrics)

    def production_metrics(self, name: str) -> dict[str, float] | None:
        """The metrics logged with the version at ``production`` (what a candidate must not regress)."""
        info = self.production(name)
        if info is None or not info.run_id:
            return None
        return self.run_metrics(info.run_id) or None

    def model_names(self) -> list[str]:
        return sorted(m.name for m in self.tracking.call(lambda: self.client.search_registered_models(max_results=1000))
                      if not is_lock_name(m.name))

    def list_models(self) -> list[ModelInfo]:
        """Every registered model with its aliases and versions (newest first)."""
        out = []
        for model in self.tracking.call(lambda: self.client.search_registered_models(max_results=1000)):
            if is_lock_name(model.name):
                continue
            aliases = {k: str(v) for k, v in model.aliases.items()}
            versions = [_info(mv) for mv in self.client.search_model_versions(f"name = '{model.name}'")]
            for v in versions:
                v.aliases = sorted(a for a, ver in aliases.items() if ver == v.version)
            versions.sort(key=lambda v: int(v.version), reverse=True)
            out.append(ModelInfo(model.name, aliases, versions))
        return sorted(out, key=lambda m: m.name)

    # ------------------------------------------------------------------ writes

    def set_version_tag(self, name: str, version: str, key: str, value: Any) -> None:
        self.tracking.call(lambda: self.client.set_model_version_tag(name, str(version), key, str(value)))

    def set_model_tag(self, name: str, key: str, value: Any) -> None:
        self.tracking.call(lambda: self.client.set_registered_model_tag(name, key, str(value)))

    def set_alias(self, name: str, alias: str, version: str) -> None:
        self.tracking.call(lambda: self.client.set_registered_model_alias(name, alias, str(version)))

    def delete_alias(self, name: str, alias: str) -> None:
        """Remove ``alias`` (nothing to do if it is not set)."""
        from mlflow.exceptions import MlflowException

        with contextlib.suppress(MlflowException):
            self.tracking.call(lambda: self.client.delete_registered_model_alias(name, alias))

    def mark_gate(self, name: str, version: str, passed: bool) -> None:
        """Record a version's gate result; a version that passed becomes the ``candidate``."""
        self.set_version_tag(name, version, GATE_TAG, "passed" if passed else "failed")
        if passed:
            self.set_alias(name, CANDIDATE, version)
