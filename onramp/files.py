"""Small file helpers shared by every area."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

__all__ = ["write_bytes_atomic", "write_text_atomic"]


def write_text_atomic(path: Path | str, text: str) -> Path:
    """Write ``text`` to ``path`` so that readers see the old file or the new one, never a part:
    a temp file of its own in the same directory (unique per writer, threads included), then an
    atomic rename. Creates the parent directory."""
    return _write_atomic(path, text, "w")


def write_bytes_atomic(path: Path | str, data: bytes) -> Path:
    """:func:`write_text_atomic` for bytes."""
    return _write_atomic(path, data, "wb")


def _write_atomic(path: Path | str, content: str | bytes, mode: str) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, mode) as fh:
            fh.write(content)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path
