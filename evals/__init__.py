"""evals: quality (lm-eval vs the reference checkpoint), latency (Poisson load) and gates.

Public surface: the names in ``__all__``, loaded lazily (importing the package imports
no torch or lm-eval).
"""

from __future__ import annotations

import importlib

_WHERE = {
    "run_quality": "evals.quality",
    "run_sweep": "evals.latency",
    "load_gates": "evals.gates",
    "apply_gates": "evals.gates",
    "Gates": "evals.gates",
    "GateResult": "evals.gates",
    "EvalResult": "evals.build_eval",
    "ABOutcome": "evals.build_eval",
    "evaluate_build": "evals.build_eval",
    "latency_ab": "evals.build_eval",
    "with_ab": "evals.build_eval",
    "judge": "evals.build_eval",
    "EvalError": "evals.errors",
    "BenchError": "evals.errors",
}
__all__ = list(_WHERE)


def __getattr__(name: str):
    if name in _WHERE:
        return getattr(importlib.import_module(_WHERE[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
