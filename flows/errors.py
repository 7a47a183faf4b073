"""Errors of the flows package: each says what failed and what to do about it."""

from __future__ import annotations

from onramp.errors import OnrampError

__all__ = ["FlowsError", "WatchError", "OnboardError", "UpError"]


class FlowsError(OnrampError):
    """A flow, the watcher, the webhook or ``onramp up`` could not do its job."""


class WatchError(FlowsError):
    """The watch list is malformed or the Hub could not be polled."""


class OnboardError(FlowsError):
    """An onboarding run failed (no layout built, a gate failed, promotion refused)."""


class UpError(FlowsError):
    """``onramp up`` could not start one of its services."""
