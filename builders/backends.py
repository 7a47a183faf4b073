"""The backend plugins: one object per backend says how to build, serve and evaluate its engines,
and what the planner must know about its weights.

A backend registers once, under its name, as a lazy ``"module:attribute"`` (a class or factory
called with no arguments). The built-in backends are registered here; any installed package adds
one through the ``onramp.backends`` entry-point group (``[project.entry-points."onramp.backends"]``
in its pyproject.toml). Importing this module imports no backend; :func:`get_backend` imports one
on first use. ``builders.build`` builds with it, ``serving.engines.load_engine`` serves with its
``engine`` class, ``evals`` measure through its hooks and the engine protocol, and
``builders.planner`` sizes layouts with its planner facts: nothing else branches on a backend name.

A backend has (see :class:`Backend`; docs/contracts.md, "Adding a backend"):

- build: ``name``, ``version()``, ``toolchain()``, ``default_layout(facts, quant)``,
  ``commands_text(checkpoint, out_dir, layout, facts)``, ``check_available()``,
  ``build(checkpoint, out_dir, layout, facts, log_path)``; optional ``default_runtime(layout, precision)``;
- serve: ``engine``, the ``"module:Class"`` of its engine (``Class.from_manifest(engine_dir,
  manifest, name=..., **options)`` gives a :class:`serving.engine.Engine`);
- evaluate: ``engine_problem(engine_dir)`` (why a directory is not a complete engine, or None),
  ``lm_eval_model(engine_dir, workdir)`` (lm-eval's model type and arguments for the engine),
  ``logits_model(engine_dir)`` (full next-token logits for the KL divergence, or
  :class:`~builders.errors.BuildUnavailable`);
- plan: ``embedding_bytes`` (bytes per weight of the embedding table and an untied LM head when
  the linear layers are quantized; None: as the linear layers), ``max_tp`` (the largest tensor
  parallel group it runs; None: the hardware's devices) and ``layout_dtype(precision, facts)``
  (the activation dtype a layout of that precision records);
- tune (optional): ``tunable = True`` lets ``onramp tune`` rewrite its ``manifest.runtime``.
"""

from __future__ import annotations

import difflib
import importlib
from importlib import metadata
from pathlib import Path
from typing import Protocol

from builders.errors import UnknownBackendError

__all__ = ["DEFAULT_BACKEND", "ENTRY_POINT_GROUP", "Backend", "backend_for_engine", "backend_names",
           "get_backend", "register_backend", "rescan"]

ENTRY_POINT_GROUP = "onramp.backends"
DEFAULT_BACKEND = "openvino"  # what a build asks for by default, and what a directory without a manifest is

_BUILTIN: dict[str, str] = {
    "openvino": "builders.openvino:OpenVINOBackend",
    "tensorrt_llm": "builders.trtllm:TensorRTLLMBackend",
}
_REGISTRY: dict[str, str] = dict(_BUILTIN)
_LOADED: dict[str, object] = {}
_SCANNED = False


class Backend(Protocol):
    name: str
    engine: str  # "module:Class" of its serving engine
    embedding_bytes: float | None
    max_tp: int | None

    def version(self) -> str: ...
    def toolchain(self) -> dict[str, str]: ...
    def default_layout(self, facts, quant: str): ...
    def commands_text(self, checkpoint: Path, out_dir: Path, layout, facts) -> str: ...
    def check_available(self) -> None: ...
    def build(self, checkpoint: Path, out_dir: Path, layout, facts, log_path: Path) -> None: ...
    def layout_dtype(self, precision: str, facts) -> str: ...
    def engine_problem(self, engine_dir: Path) -> str | None: ...
    def lm_eval_model(self, engine_dir: Path, workdir: Path) -> tuple[str, dict]: ...
    def logits_model(self, engine_dir: Path): ...


def _scan() -> None:
    """Add the backends installed packages declare in the ``onramp.backends`` entry-point group.
    A name registered in this process (:func:`register_backend`, or built in) keeps its target."""
    global _SCANNED
    _SCANNED = True
    for ep in metadata.entry_points(group=ENTRY_POINT_GROUP):
        _REGISTRY.setdefault(ep.name, ep.value)


def rescan() -> None:
    """Look at the installed packages' entry points again (after installing a backend package)."""
    importlib.invalidate_caches()
    _scan()


def register_backend(name: str, target: str) -> None:
    """Register ``target`` (``"module:attribute"``, a class or factory) under ``name``."""
    _REGISTRY[name] = target
    _LOADED.pop(name, None)


def backend_names() -> list[str]:
    if not _SCANNED:
        _scan()
    return sorted(_REGISTRY)


def get_backend(name: str) -> Backend:
    if not _SCANNED:
        _scan()
    if name not in _REGISTRY:
        close = difflib.get_close_matches(name, _REGISTRY, n=1)
        hint = f"did you mean {close[0]!r}? " if close else ""
        raise UnknownBackendError(f"unknown backend {name!r}", f"{hint}known backends: {', '.join(backend_names())}")
    if name not in _LOADED:
        module, _, attr = _REGISTRY[name].partition(":")
        _LOADED[name] = getattr(importlib.import_module(module), attr)()
    return _LOADED[name]


def backend_for_engine(engine_dir: Path) -> Backend:
    """The backend an engine directory's manifest names (a directory without one: the default
    backend's bare export, e.g. an ``optimum-cli export openvino`` directory)."""
    engine_dir = Path(engine_dir)
    if (engine_dir / "manifest.json").is_file():
        from builders.manifest import read_manifest

        return get_backend(read_manifest(engine_dir).backend)
    return get_backend(DEFAULT_BACKEND)
