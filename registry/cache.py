"""The verified cache: local copies of registered engines, checked before every use.

A copy lives at ``<cache>/<registry key>/<name>/<version>`` (the key: a hash of the tracking
URI, so two registries never share a copy). A download goes into a temporary directory beside
it; every file's sha256 is checked against ``manifest.json``, and ``manifest.json``'s own sha256
against the version's ``manifest_sha256`` tag (so a manifest rewritten in the store to match
altered files is refused too). Only then is it renamed into place, with a completion marker.
A cached copy is re-verified before it is handed out; a damaged one is replaced. Nothing
unverified is ever returned.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from registry.errors import IntegrityError
from registry.manifests import field, read_manifest, verify_engine

log = logging.getLogger(__name__)

__all__ = ["VerifiedCache", "check_engine"]

COMPLETE = ".onramp-fetched"
STALE_PARTIAL_S = 3600.0


def check_engine(engine_dir: Path, want: dict[str, str | None], what: str) -> None:
    """``engine_dir`` matches its manifest, and the manifest the registered ``manifest_sha256`` and
    ``build_id`` in ``want`` (each checked when given)."""
    path = engine_dir / "manifest.json"
    if not path.is_file():
        raise IntegrityError(f"{what} has no manifest.json", "re-register the build")
    if want.get("manifest_sha256"):
        got = hashlib.sha256(path.read_bytes()).hexdigest()
        if got != want["manifest_sha256"]:
            raise IntegrityError(
                f"{what}: manifest.json does not match the sha256 registered with the version "
                f"({got[:12]} != {want['manifest_sha256'][:12]})",
                "the stored manifest was altered; re-register the build",
            )
    manifest = read_manifest(engine_dir)
    got_build = field(manifest, "build_id")
    if want.get("build_id") and got_build != want["build_id"]:
        raise IntegrityError(
            f"{what}: manifest build_id {got_build} differs from the registered {want['build_id']}",
            "the stored manifest was replaced; re-register the build",
        )
    verify_engine(engine_dir, manifest, what)


class VerifiedCache:
    """Verified engine copies of one registry (``key``) under ``root``."""

    def __init__(self, root: Path, key: str):
        self.root = Path(root)
        self.key = hashlib.sha256(key.encode()).hexdigest()[:12]

    def path(self, name: str, version: str) -> Path:
        return self.root / self.key / name / version

    def get(self, name: str, version: str, want: dict[str, str | None],
            download: Callable[[Path], Path]) -> Path:
        """The verified copy of ``name`` ``version``; ``download(tmp)`` fetches it into ``tmp`` (and
        returns the engine directory it made) when there is no good copy yet."""
        final = self.path(name, version)
        if (final / COMPLETE).is_file():
            try:
                check_engine(final, want, f"cached {name} version {version}")
                return final
            except IntegrityError as exc:
                log.warning("%s; downloading it again", exc)
                shutil.rmtree(final, ignore_errors=True)
        final.parent.mkdir(parents=True, exist_ok=True)
        # leftovers of a fetch that was killed: never used, removed once surely abandoned
        for stale in final.parent.glob(f".{version}.partial-*"):
            with contextlib.suppress(OSError):
                if time.time() - stale.stat().st_mtime > STALE_PARTIAL_S:
                    shutil.rmtree(stale, ignore_errors=True)
        if final.exists():  # not a finished fetch (no marker): never hand it out
            shutil.rmtree(final)
        tmp = Path(tempfile.mkdtemp(dir=final.parent, prefix=f".{version}.partial-"))
        try:
            local = download(tmp)
            check_engine(local, want, f"{name} version {version} (downloaded)")
            (local / COMPLETE).write_text(json.dumps({"name": name, "version": version, "fetched": time.time()}))
            try:
                os.replace(local, final)
            except OSError:
                if not (final / COMPLETE).is_file():  # not a concurrent fetch of the same version
                    raise
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        log.info("fetched %s version %s into %s", name, version, final)
        return final
