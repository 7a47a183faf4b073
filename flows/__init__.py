"""flows: Prefect flows that orchestrate builders, evals, registry and serving.

Public surface: the names in ``__all__``, loaded lazily (importing the package imports
no Prefect).
"""

from __future__ import annotations

import importlib

_WHERE = {
    "onboard": "flows.onboard",
    "OnboardConfig": "flows.onboard",
    "OnboardResult": "flows.report",
    "LayoutOutcome": "flows.report",
    "build_layout": "flows.build",
    "FlowsError": "flows.errors",
    "OnboardError": "flows.errors",
    "WatchError": "flows.errors",
    "UpError": "flows.errors",
}
__all__ = list(_WHERE)


def __getattr__(name: str):
    if name in _WHERE:
        return getattr(importlib.import_module(_WHERE[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
