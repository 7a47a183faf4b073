"""serving: the OpenAI/pplx-compatible chat-completions server over live engines, with hot-swap.

Public surface: the names in ``__all__``, loaded lazily (importing the package imports
no FastAPI and no engine).
"""

from __future__ import annotations

from onramp.lazy import lazy_exports

_WHERE = {
    "build_app": "serving.app",
    "ServeConfig": "serving.app",
    "ServingError": "serving.errors",
    "RequestError": "serving.errors",
}
__all__, __getattr__ = lazy_exports(__name__, _WHERE)
