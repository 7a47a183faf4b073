"""Errors of the builders: each says what failed and which flag, file or command fixes it."""

from __future__ import annotations

from onramp.errors import OnrampError


class BuilderError(OnrampError):
    """Base class of everything builders/ raises."""


class CheckpointError(BuilderError):
    """The checkpoint is unusable: missing config.json, pickled weights, unknown architecture."""


class UnsafeCheckpointError(CheckpointError):
    """The checkpoint holds only pickled weights (or asks for remote code)."""


class UnsupportedArchitectureError(CheckpointError):
    """config.json names an architecture onramp cannot plan or build."""


class UnknownHardwareError(BuilderError):
    """A hardware name that is not in the catalog."""


class UnknownBackendError(BuilderError):
    """A backend name that is not registered."""


class BuildUnavailable(BuilderError):
    """The backend cannot run here (package not installed, no GPU); the message says why."""


class BuildFailed(BuilderError):
    """The backend ran and failed; the message points at its log."""


class ManifestError(BuilderError):
    """A manifest.json that is missing, malformed, or does not match the files beside it."""
