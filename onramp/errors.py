"""The one exception family of onramp: every message says what failed and how to fix it."""

from __future__ import annotations

__all__ = ["OnrampError", "ConfigError", "ReferenceModelError", "MirrorError"]


class OnrampError(Exception):
    """A failure a user can act on. ``str(err)`` is one line: what failed, then what to do."""

    def __init__(self, what: str, fix: str | None = None):
        self.what = what
        self.fix = fix
        super().__init__(what if not fix else f"{what} — {fix}")


class ConfigError(OnrampError):
    """Bad settings: an unknown key, a malformed value, an unreadable config file."""


class ReferenceModelError(OnrampError):
    """The reference model could not be made (download, GGUF, conversion)."""


class MirrorError(OnrampError):
    """The loopback Hub mirror could not be set up, started or written to."""
