"""evals: quality (lm-eval vs the reference checkpoint), latency (Poisson load) and gates.

Public surface: the names in ``__all__``, loaded lazily (importing the package imports
no torch or lm-eval).
"""

from __future__ import annotations

from onramp.lazy import lazy_exports

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
__all__, __getattr__ = lazy_exports(__name__, _WHERE)
