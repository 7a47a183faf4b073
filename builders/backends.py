"""The backend registry: names mapped to lazy ``"module:attribute"`` entries (lm-eval style).

Importing :mod:`builders` imports no backend; :func:`get_backend` imports one on first use.
A backend is an object with:

- ``name``: its registry name; ``version()``: the runtime version recorded in manifests;
- ``toolchain()``: versions of every package that shapes its output (part of the build id);
- ``default_layout(facts, quant)``: the :class:`~builders.manifest.Layout` of a plain build;
- ``commands_text(checkpoint, out_dir, layout, facts)``: the commands a build runs (``--dry-run``);
- ``check_available()``: raise :class:`~builders.errors.BuildUnavailable` saying why it can't run here;
- ``build(checkpoint, out_dir, layout, facts, log_path)``: write the engine files into ``out_dir``;
- ``logits_model(engine_dir)``: an object whose ``next_token_logits(ids)`` gives the engine's full
  logits ``[len(ids), vocab]`` through its own runtime and whose ``runtime`` dict says how it ran
  (evals' KL divergence); raises :class:`~builders.errors.BuildUnavailable` where it can't.
"""

from __future__ import annotations

import difflib
import importlib
from pathlib import Path
from typing import Protocol

from builders.errors import UnknownBackendError

_REGISTRY: dict[str, str] = {
    "openvino": "builders.openvino:OpenVINOBackend",
    "tensorrt_llm": "builders.trtllm:TensorRTLLMBackend",
}
_LOADED: dict[str, object] = {}


class Backend(Protocol):
    name: str

    def version(self) -> str: ...
    def toolchain(self) -> dict[str, str]: ...
    def default_layout(self, facts, quant: str): ...
    def commands_text(self, checkpoint: Path, out_dir: Path, layout, facts) -> str: ...
    def check_available(self) -> None: ...
    def build(self, checkpoint: Path, out_dir: Path, layout, facts, log_path: Path) -> None: ...
    def logits_model(self, engine_dir: Path): ...


def register_backend(name: str, target: str) -> None:
    """Register ``target`` (``"module:attribute"``, a class or factory) under ``name``."""
    _REGISTRY[name] = target
    _LOADED.pop(name, None)


def backend_names() -> list[str]:
    return sorted(_REGISTRY)


def get_backend(name: str) -> Backend:
    if name not in _REGISTRY:
        close = difflib.get_close_matches(name, _REGISTRY, n=1)
        hint = f"did you mean {close[0]!r}? " if close else ""
        raise UnknownBackendError(f"unknown backend {name!r}", f"{hint}known backends: {', '.join(backend_names())}")
    if name not in _LOADED:
        module, _, attr = _REGISTRY[name].partition(":")
        _LOADED[name] = getattr(importlib.import_module(module), attr)()
    return _LOADED[name]
