"""serving: the OpenAI/pplx-compatible chat-completions server over live engines, with hot-swap.

Public surface: the names in ``__all__``, loaded lazily (importing the package imports
no FastAPI and no engine).
"""

from __future__ import annotations

import importlib

_WHERE = {
    "build_app": "serving.app",
    "ServeConfig": "serving.app",
    "ServingError": "serving.errors",
    "RequestError": "serving.errors",
}
__all__ = list(_WHERE)


def __getattr__(name: str):
    if name in _WHERE:
        return getattr(importlib.import_module(_WHERE[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
