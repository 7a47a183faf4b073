"""Engine backends, found by name: importing this never imports a backend library.

``load_engine(engine_dir, name=None)`` reads the engine's ``manifest.json`` (through
``builders.manifest.read_manifest``), verifies its files, and hands the directory to the engine
class of the backend plugin ``manifest.backend`` names (``builders.backends``: the built-in
backends and the ``onramp.backends`` entry points). :func:`register_backend` overrides the
engine class of one backend name in this process.
"""

from __future__ import annotations

import difflib
import importlib
import json
import logging
import os
import stat
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from onramp.errors import OnrampError
from serving.engine import Engine
from serving.errors import EngineLoadError

log = logging.getLogger(__name__)

_OVERRIDES: dict[str, str] = {}  # backend name -> "module:Class", set in this process

__all__ = ["backend_class", "backends", "load_engine", "read_engine_manifest", "register_backend"]


def register_backend(name: str, target: str) -> None:
    """Serve manifests whose ``backend`` is ``name`` with ``"module:Class"`` (instead of the plugin's)."""
    _OVERRIDES[name] = target


def backends() -> list[str]:
    from builders.backends import backend_names

    return sorted({*backend_names(), *_OVERRIDES})


def backend_class(name: str) -> type:
    target = _OVERRIDES.get(name)
    if target is None:
        from builders.backends import get_backend

        known = backends()
        if name not in known:
            near = difflib.get_close_matches(name, known, n=1)
            hint = f"did you mean {near[0]!r}? " if near else ""
            raise EngineLoadError(f"unknown engine backend {name!r}",
                                  f"{hint}known backends: {', '.join(known)}; rebuild the engine with one of them")
        try:
            target = get_backend(name).engine
        except (ImportError, AttributeError) as exc:
            raise EngineLoadError(f"the {name!r} backend plugin cannot be loaded: {exc}",
                                  "reinstall the package that provides it") from None
    module_name, _, cls_name = target.partition(":")
    module = importlib.import_module(module_name)
    return getattr(module, cls_name)


def _to_namespace(value: Any) -> Any:
    if isinstance(value, dict):
        return SimpleNamespace(**{k: _to_namespace(v) for k, v in value.items()})
    return value


def read_engine_manifest(engine_dir: Path) -> Any:
    """The manifest, via builders.manifest (verifying file checksums) when that package is there."""
    engine_dir = Path(engine_dir)
    if not engine_dir.is_dir():
        raise EngineLoadError(f"engine directory {engine_dir} does not exist",
                              "pass a directory made by `onramp build` (it holds manifest.json)")
    if not (engine_dir / "manifest.json").is_file():
        raise EngineLoadError(f"{engine_dir} has no manifest.json, so it is not a built engine",
                              "build it with `onramp build`, or pass the directory that holds manifest.json")
    try:
        from builders.manifest import read_manifest, verify_files
    except ModuleNotFoundError as exc:  # builders not installed: read the JSON contract directly
        if exc.name not in ("builders.manifest", "builders"):
            raise
        try:
            return _to_namespace(json.loads((engine_dir / "manifest.json").read_text()))
        except (OSError, ValueError) as err:
            raise EngineLoadError(f"cannot read {engine_dir / 'manifest.json'}: {err}",
                                  "rebuild the engine with `onramp build`") from None
    try:
        manifest = read_manifest(engine_dir)
        verify_files(engine_dir, manifest)
    except OnrampError as err:  # builders' ManifestError: keep its message and fix
        raise EngineLoadError(err.what, err.fix) from None
    return manifest


def refuse_special_files(engine_dir: Path) -> None:
    """Refuse an engine directory holding a fifo, socket or device: opening one can block forever
    inside a backend's native code, which holds the GIL and would freeze the whole server."""
    for dirpath, _, filenames in os.walk(engine_dir):
        for filename in filenames:
            path = Path(dirpath) / filename
            try:
                mode = path.stat().st_mode
            except OSError:
                continue  # a dangling symlink: the manifest check names missing files
            if not stat.S_ISREG(mode):
                raise EngineLoadError(f"{path} is not a regular file (a fifo, socket or device); an engine "
                                      f"directory holds regular files only",
                                      "remove it, or rebuild the engine with `onramp build`")


def load_engine(engine_dir: Path | str, name: str | None = None, **options: Any) -> Engine:
    """Load the engine in ``engine_dir`` with the backend its manifest names.

    ``name`` is the served model name (default: the manifest's). ``options`` go to the backend
    (e.g. ``cache_size_gb`` and ``max_num_seqs`` for OpenVINO).
    """
    engine_dir = Path(engine_dir).resolve()
    if engine_dir.is_dir():
        refuse_special_files(engine_dir)
    manifest = read_engine_manifest(engine_dir)
    cls = backend_class(manifest.backend)
    return cls.from_manifest(engine_dir, manifest, name=name or manifest.name, **options)
