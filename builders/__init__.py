"""builders: plan layouts for a checkpoint on a hardware target and build engines for them.

Public surface: :func:`build_engine`, :func:`read_manifest`, :func:`verify_files`,
:class:`Manifest`, :class:`Layout`, :func:`inspect_checkpoint`, :func:`plan`. Importing this
package imports no backend (openvino, tensorrt_llm): backends load lazily by name.
"""

from __future__ import annotations

import importlib

__all__ = ["build_engine", "read_manifest", "verify_files", "write_manifest", "Manifest", "Layout",
           "inspect_checkpoint", "ModelFacts", "plan", "get_backend", "register_backend"]

_WHERE = {
    "build_engine": "builders.build",
    "read_manifest": "builders.manifest", "verify_files": "builders.manifest",
    "write_manifest": "builders.manifest", "Manifest": "builders.manifest", "Layout": "builders.manifest",
    "inspect_checkpoint": "builders.facts", "ModelFacts": "builders.facts",
    "plan": "builders.planner",
    "get_backend": "builders.backends", "register_backend": "builders.backends",
}


def __getattr__(name: str):
    if name in _WHERE:
        return getattr(importlib.import_module(_WHERE[name]), name)
    raise AttributeError(f"module 'builders' has no attribute {name!r}")
