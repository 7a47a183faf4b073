"""A package's public names, imported on first use (``import builders`` imports no backend,
``import serving`` no FastAPI): ``__all__, __getattr__ = lazy_exports(__name__, {name: module})``."""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any

__all__ = ["lazy_exports"]


def lazy_exports(package: str, where: dict[str, str]) -> tuple[list[str], Callable[[str], Any]]:
    """``__all__`` (the names of ``where``) and a module ``__getattr__`` that imports ``where[name]``
    the first time ``package.name`` is asked for."""

    def __getattr__(name: str) -> Any:
        if name in where:
            return getattr(importlib.import_module(where[name]), name)
        raise AttributeError(f"module {package!r} has no attribute {name!r}")

    return list(where), __getattr__
