"""builders: plan layouts for a checkpoint on a hardware target and build engines for them.

Public surface: :func:`build_engine`, :func:`read_manifest`, :func:`verify_files`,
:class:`Manifest`, :class:`Layout`, :func:`inspect_checkpoint`, :func:`plan`. Importing this
package imports no backend (openvino, tensorrt_llm): backends load lazily by name.
"""

from __future__ import annotations

from onramp.lazy import lazy_exports

_WHERE = {
    "build_engine": "builders.build",
    "read_manifest": "builders.manifest", "verify_files": "builders.manifest",
    "write_manifest": "builders.manifest", "Manifest": "builders.manifest", "Layout": "builders.manifest",
    "inspect_checkpoint": "builders.facts", "ModelFacts": "builders.facts",
    "plan": "builders.planner",
    "get_backend": "builders.backends", "register_backend": "builders.backends",
}
__all__, __getattr__ = lazy_exports(__name__, _WHERE)
