"""flows: Prefect flows that orchestrate builders, evals, registry and serving.

Public surface: the names in ``__all__``, loaded lazily (importing the package imports
no Prefect).
"""

from __future__ import annotations

from onramp.lazy import lazy_exports

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
__all__, __getattr__ = lazy_exports(__name__, _WHERE)
