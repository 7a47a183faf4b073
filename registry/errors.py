"""Errors of the registry: each says what failed and what to do about it."""

from __future__ import annotations

from onramp.errors import OnrampError


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
