"""registry: MLflow model registry with S3 artifacts, promote and rollback.

``Registry`` (:mod:`registry.client`) is the one entry point; the modules beside it each do one
job (tracking, runs, store, cache, versions, registration, promotion, canary, watch).
"""

from registry.canary import CanaryState, canary_state, clear_canary, set_canary
from registry.client import CANDIDATE, PREVIOUS, PRODUCTION, ModelInfo, Registry, RunHandle, VersionInfo
from registry.errors import (
    ArtifactStoreError,
    ArtifactStoreUnavailableError,
    IntegrityError,
    LockTimeoutError,
    ModelNotFoundError,
    PromotionError,
    RegistryError,
    RegistryUnavailableError,
    StalePromotionError,
)
from registry.names import registered_name, short_aliases, short_name
from registry.promotion import ProductionState
from registry.watch import AliasWatcher, Failure

__all__ = [
    "CANDIDATE", "PREVIOUS", "PRODUCTION", "AliasWatcher", "ArtifactStoreError", "ArtifactStoreUnavailableError",
    "CanaryState", "Failure", "IntegrityError", "LockTimeoutError", "ModelInfo", "ModelNotFoundError",
    "ProductionState", "PromotionError", "Registry", "RegistryError", "RegistryUnavailableError", "RunHandle",
    "StalePromotionError", "VersionInfo", "canary_state", "clear_canary", "registered_name", "set_canary",
    "short_aliases", "short_name",
]
