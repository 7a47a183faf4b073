"""Errors of the evals package: each says what failed and how to fix it."""

from __future__ import annotations

from onramp.errors import OnrampError


class EvalError(OnrampError):
    """A quality evaluation could not run (bad engine dir, missing data, lm-eval failure)."""


class ProfileError(EvalError):
    """An unknown or malformed eval profile."""


class GateConfigError(OnrampError):
    """The gates YAML file is missing, malformed or names an unknown metric direction."""


class BenchError(OnrampError):
    """The latency benchmark could not run (endpoint unreachable, bad rates, every request failed)."""
