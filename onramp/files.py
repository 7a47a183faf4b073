"""The one way onramp writes a file that others read: atomically.

Readers see the old file or the new one, never a part: the content goes to a temp file of the
writer's own in the same directory (a unique name per writer, threads included), is flushed to
disk (fsync), and is renamed over the target. The parent directory is created.

``mode`` is the new file's permissions, set on the temp file before a byte is written; by
default a file gets what ``open()`` would give it (0666 less the umask). Secrets (``up.json``, the
keys file) pass ``mode=0o600``: they are never readable by others, not even for an instant.

- :func:`write_bytes_atomic`, :func:`write_text_atomic`, :func:`write_json_atomic`: content in hand;
- :func:`atomic_path`: for writers that need a file name (``shutil.copyfile``, ``savefig``).
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

__all__ = ["atomic_path", "write_bytes_atomic", "write_json_atomic", "write_text_atomic"]


def write_text_atomic(path: Path | str, text: str, *, mode: int | None = None) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically; see the module's doc."""
    return write_bytes_atomic(path, text.encode(), mode=mode)


def write_json_atomic(path: Path | str, obj: Any, *, mode: int | None = None, indent: int | None = 2,
                      **dumps: Any) -> Path:
    """``json.dumps(obj, indent=indent, **dumps)`` and a final newline, written atomically."""
    return write_text_atomic(path, json.dumps(obj, indent=indent, **dumps) + "\n", mode=mode)


def write_bytes_atomic(path: Path | str, data: bytes, *, mode: int | None = None) -> Path:
    """Write ``data`` to ``path`` atomically; see the module's doc."""
    path = Path(path)
    fd, tmp = _temp_file(path, mode)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


@contextmanager
def atomic_path(path: Path | str, *, mode: int | None = None) -> Iterator[Path]:
    """A temp file's path beside ``path`` (same suffix, so tools that read the format from the name
    work) for the block to write to; when the block ends without an error it is flushed to disk and
    renamed over ``path``, else removed."""
    path = Path(path)
    fd, tmp = _temp_file(path, mode, suffix=path.suffix)
    os.close(fd)
    try:
        yield Path(tmp)
        fd = os.open(tmp, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _temp_file(path: Path, mode: int | None, suffix: str = "") -> tuple[int, str]:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=f".tmp{suffix}")
    try:
        os.fchmod(fd, _default_mode() if mode is None else mode)  # mkstemp made it 0600
    except BaseException:
        os.close(fd)
        Path(tmp).unlink(missing_ok=True)
        raise
    return fd, tmp


def _default_mode() -> int:
    """0666 less this process's umask: what ``open(path, "w")`` would create."""
    try:
        with open("/proc/self/status") as fh:  # Linux: read without changing it (threads)
            for line in fh:
                if line.startswith("Umask:"):
                    return 0o666 & ~int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    umask = os.umask(0o022)
    os.umask(umask)
    return 0o666 & ~umask
