"""A registered model's canary: the ``canary`` alias and its weight (tag ``onramp.canary_weight``).

Both live in the registry, so every ``onramp serve --registry`` replica routes the same share.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import TYPE_CHECKING

from registry.errors import RegistryError, RegistryUnavailableError
from registry.versions import PRODUCTION

if TYPE_CHECKING:
    from registry.client import Registry

__all__ = ["CANARY", "SHADOW_TAG", "WEIGHT_TAG", "CanaryState", "canary_state", "clear_canary", "set_canary"]

CANARY = "canary"
WEIGHT_TAG = "onramp.canary_weight"
SHADOW_TAG = "onramp.canary_shadow"


@dataclass(frozen=True)
class CanaryState:
    name: str
    production: str | None
    version: str | None
    weight: float
    shadow: float = 0.0  # percent of production's greedy requests mirrored to the canary

    @property
    def active(self) -> bool:
        return self.version is not None and self.version != self.production and (self.weight > 0 or self.shadow > 0)


def canary_state(reg: Registry, name: str) -> CanaryState:
    model = reg.versions.model(name)
    aliases = {k: str(v) for k, v in model.aliases.items()}
    def percent(tag: str) -> float:
        try:
            return min(max(float((model.tags or {}).get(tag, 0) or 0), 0.0), 100.0)
        except ValueError:
            return 0.0

    return CanaryState(name=name, production=aliases.get(PRODUCTION), version=aliases.get(CANARY),
                       weight=percent(WEIGHT_TAG), shadow=percent(SHADOW_TAG))


def set_canary(reg: Registry, name: str, version: str, weight: float, shadow: float | None = None) -> None:
    """Point ``canary`` at ``version`` with ``weight`` percent of the requests; ``shadow`` percent of
    production's greedy requests are also mirrored to it (None: leave the shadow rate as it is)."""
    for what, value in (("weight", weight), ("shadow rate", shadow)):
        if value is not None and not 0 <= value <= 100:
            raise RegistryError(f"canary {what} {value} is not a percentage", f"give a {what} from 0 to 100")
    versions = reg.versions
    versions.get(name, version)  # a clear error for an unknown model or version
    versions.set_model_tag(name, WEIGHT_TAG, f"{weight:g}")
    if shadow is not None:
        versions.set_model_tag(name, SHADOW_TAG, f"{shadow:g}")
    versions.set_alias(name, CANARY, str(version))


def clear_canary(reg: Registry, name: str) -> None:
    """Remove the canary (the servers unload it; its running requests finish)."""
    from mlflow.exceptions import MlflowException

    versions = reg.versions
    for tag in (WEIGHT_TAG, SHADOW_TAG):
        with contextlib.suppress(MlflowException, RegistryUnavailableError):
            versions.set_model_tag(name, tag, "0")
    with contextlib.suppress(RegistryUnavailableError):
        versions.delete_alias(name, CANARY)
