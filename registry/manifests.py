"""An engine's ``manifest.json`` as the registry reads it: fields, the layout slug, verification."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from registry.errors import IntegrityError, RegistryError

__all__ = ["field", "layout_slug", "read_manifest", "verify_engine"]


def field(obj: Any, key: str, default: Any = None) -> Any:
    """Read a manifest field whether the manifest is a pydantic model or a plain dict."""
    if obj is None:
        return default
    if isinstance(obj, dict):
        return obj.get(key, default)
    return getattr(obj, key, default)


def layout_slug(layout: Any) -> str:
    """``cpu-tp1-pp1-bf16-int8``: hardware, parallelism, dtype and quantization of a build."""
    parts = [str(field(layout, "hardware", "?")), f"tp{field(layout, 'tp', 1)}", f"pp{field(layout, 'pp', 1)}"]
    for key in ("dtype", "quantization"):
        value = field(layout, key)
        if value:
            parts.append(str(value))
    return "-".join(parts)


def read_manifest(engine_dir: Path) -> Any:
    from builders.manifest import read_manifest as read

    try:
        return read(engine_dir)
    except RegistryError:
        raise
    except Exception as exc:  # noqa: BLE001 - builders' own error, pydantic, JSON, OSError
        raise IntegrityError(
            f"{engine_dir} has no valid manifest.json: {getattr(exc, 'what', None) or exc}",
            "register only engine directories written by `onramp build` (builders.build_engine)",
        ) from None


def verify_engine(engine_dir: Path, manifest: Any, what: str) -> None:
    """Every file of ``manifest`` is in ``engine_dir`` with its size and sha256."""
    from builders.manifest import verify_files

    try:
        verify_files(engine_dir, manifest)
    except Exception as exc:  # noqa: BLE001 - whatever verify_files raises names the file
        raise IntegrityError(
            f"{what} failed verification against its manifest.json: {getattr(exc, 'what', None) or exc}",
            "the stored engine was altered or damaged; re-register the build (or fetch another version)",
        ) from None
