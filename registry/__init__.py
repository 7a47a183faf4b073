"""registry: MLflow model registry with S3 artifacts, promote and rollback.

Public surface: the names in ``__all__``, loaded lazily (importing the package imports
no MLflow).
"""

from __future__ import annotations

import importlib

_WHERE = {
    "Registry": "registry.client",
    "VersionInfo": "registry.client",
    "ModelInfo": "registry.client",
    "registered_name": "registry.names",
    "RegistryError": "registry.errors",
    "ModelNotFoundError": "registry.errors",
    "PromotionError": "registry.errors",
    "StalePromotionError": "registry.errors",
}
__all__ = list(_WHERE)


def __getattr__(name: str):
    if name in _WHERE:
        return getattr(importlib.import_module(_WHERE[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
