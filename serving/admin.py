"""Policy of the admin endpoints: where a swap may load an engine from, which registry versions it
may load, and what ``/readyz`` tells a caller without the admin key.

- ``{"engine_dir": ...}`` swaps load only directories inside the allowed roots (the engines
  directory, the registry cache, and the directories the server was started with). The path is
  resolved first (``..`` and symlinks followed), and every entry inside it must resolve inside
  the same root, so a symlink cannot lead out. Anything else is refused naming ``engine_dir``
  and the allowed directories.
- ``{"version": ...}`` swaps (``--registry``) refuse a version whose gate did not pass unless
  ``"force": true``.
- ``/readyz`` without the admin key says only each model's state; errors and paths need the key.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from serving.errors import RequestError

__all__ = ["EngineDirNotAllowed", "GateNotPassed", "allowed_engine_dir", "detailed_status", "public_status",
           "swap_roots", "swap_target"]


class EngineDirNotAllowed(RequestError):
    status = 403
    type = "permission_error"

    def __init__(self, message: str):
        super().__init__(message, param="engine_dir", code="engine_dir_not_allowed")


class GateNotPassed(RequestError):
    status = 409

    def __init__(self, name: str, version: str, gate: str):
        super().__init__(f"{name} version {version} did not pass its gates (gate={gate}); swap to a version that "
                         f"passed, or send \"force\": true to serve it anyway", param="version",
                         code="gate_not_passed")


def _roots(roots: Iterable[Path | str]) -> list[Path]:
    out: list[Path] = []
    for root in roots:
        resolved = Path(root).expanduser().resolve()
        if resolved not in out:
            out.append(resolved)
    return out


def allowed_engine_dir(engine_dir: str, roots: Sequence[Path | str]) -> Path:
    """``engine_dir`` resolved, if it lies inside one of ``roots`` (a root itself counts) and no
    entry in it leads outside that root; else :class:`EngineDirNotAllowed` (or 400 for a relative path)."""
    allowed = _roots(roots)
    listing = ", ".join(str(r) for r in allowed) or "none (start the server with --engines-dir)"
    raw = Path(engine_dir).expanduser()
    if not raw.is_absolute():
        raise RequestError(f"engine_dir must be an absolute path, got {engine_dir!r}; swaps load only from: "
                           f"{listing}", param="engine_dir", code="invalid_value")
    resolved = raw.resolve()
    root = next((r for r in allowed if resolved.is_relative_to(r)), None)
    if root is None:
        raise EngineDirNotAllowed(f"engine_dir {engine_dir} is outside the directories swaps may load from: "
                                  f"{listing} (the engines directory ONRAMP_ENGINES_DIR, the registry cache, "
                                  f"and the --engine directories the server started with); or swap by registry "
                                  f"version")
    if resolved.is_dir():
        for dirpath, dirnames, filenames in os.walk(resolved):
            for entry in [*dirnames, *filenames]:
                path = Path(dirpath) / entry
                if path.is_symlink() and not path.resolve().is_relative_to(root):
                    raise EngineDirNotAllowed(f"engine_dir {engine_dir} holds {path.relative_to(resolved)}, a "
                                              f"symlink leading outside {root}; swaps load only from: {listing}")
    return resolved


def public_status(status: Sequence[Any]) -> list[dict[str, Any]]:
    """What ``/readyz`` shows without the admin key: each model's name and state, nothing else."""
    return [{"name": s.name, "state": s.state} for s in status]


def detailed_status(slots: Any, follower: Any | None = None) -> list[dict[str, Any]]:
    """Every model's full status (the admin view), with the registry follower's failing version."""
    follow = follower.status() if follower is not None else {}
    out = []
    for s in slots.status():
        row = dict(s.__dict__) | {"inflight": slots.inflight(s.name)}
        if s.name in follow:
            row["production_failing"] = follow[s.name]
        out.append(row)
    for name in sorted(set(follow) - {s.name for s in slots.status()}):  # failed before it ever loaded
        out.append({"name": name, "state": "failed", "production_failing": follow[name]})
    return out


def swap_roots(config: Any) -> list[Path]:
    """Where ``{"engine_dir": ...}`` swaps may load from: the configured roots and the directories
    the server was started with."""
    return [*config.swap_roots, *config.engines.values()]


async def swap_target(config: Any, name: str, engine_dir: str | None, version: str | None,
                      force: bool = False) -> str:
    """The engine directory a swap request names: an allowed ``engine_dir``, or the fetched
    registry ``version`` (its gate passed, or ``force``)."""
    if engine_dir is not None:
        return str(allowed_engine_dir(engine_dir, swap_roots(config)))
    if config.resolve_version is None:
        raise RequestError("swapping by version needs a registry: start the server with --registry, "
                           "or give engine_dir", param="version")
    try:
        return str(await asyncio.to_thread(config.resolve_version, name, version, force=force))
    except RequestError:
        raise
    except Exception as err:  # noqa: BLE001 - registry errors carry their own fix
        raise RequestError(f"cannot fetch {name} version {version}: {err}", param="version",
                           code="version_not_found", status=404) from None
