"""Errors of the registry: each says what failed and what to do about it."""

from __future__ import annotations

from onramp.errors import OnrampError

__all__ = ["ArtifactStoreError", "ArtifactStoreUnavailableError", "IntegrityError", "LockTimeoutError",
           "ModelNotFoundError", "PromotionError", "RegistryError", "RegistryUnavailableError", "StalePromotionError"]


class RegistryError(OnrampError):
    """The MLflow registry refused or failed an operation."""


class ModelNotFoundError(RegistryError):
    """No such registered model, version or alias."""


class ArtifactStoreError(RegistryError):
    """The artifact store (local directory or S3) could not be written or read."""


class IntegrityError(RegistryError):
    """A fetched engine does not match its manifest (sha256, size or a missing file)."""


class PromotionError(RegistryError):
    """promote/rollback cannot be done (gate failed, nothing to roll back to)."""


class RegistryUnavailableError(RegistryError):
    """The MLflow tracking server could not be reached (after MLflow's own bounded retries)."""


class ArtifactStoreUnavailableError(ArtifactStoreError):
    """The artifact store could not be reached or dropped the transfer (after bounded retries)."""


class StalePromotionError(PromotionError):
    """The version is of an older Hub revision than the one in production (promote refuses it unless forced)."""


class LockTimeoutError(PromotionError):
    """Another promote/rollback held the model's production lock for too long."""
