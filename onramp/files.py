"""Small file helpers shared by every area."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

__all__ = ["write_bytes_atomic", "write_text_atomic"]


def write_text_atomic(path: Path | str, text: str, *, mode: int | None = None) -> Path:
    """Write ``text`` to ``path`` so that readers see the old file or the new one, never a part:
    a temp file of its own in the same directory (unique per writer, threads included), then an
    atomic rename. Creates the parent directory.

    The temp file is created with mode 0600 (``mkstemp``); ``mode`` sets other permissions on it
    before a byte is written. Secrets (e.g. ``up.json``) pass ``mode=0o600`` to say so: the file
    is never readable by others, not even for an instant."""
    return _write_atomic(path, text, "w", mode)


def write_bytes_atomic(path: Path | str, data: bytes, *, mode: int | None = None) -> Path:
    """:func:`write_text_atomic` for bytes."""
    return _write_atomic(path, data, "wb", mode)


def _write_atomic(path: Path | str, content: str | bytes, open_mode: str, mode: int | None) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, open_mode) as fh:
            if mode is not None:
                os.fchmod(fh.fileno(), mode)
            fh.write(content)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path
