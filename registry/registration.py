"""Registering an engine build: all of it, or nothing.

The engine directory becomes the artifacts (``engine/``) of a new run — a child of the
onboarding run when given — uploaded file by file under the store's transfer policy
(:mod:`registry.store`). Only when every file is stored and listed back with its manifest size
is the model version created, tagged (hf_repo, hf_revision, backend, layout, quantization,
builder_version, gate, build_id, manifest_sha256) and, if the gates passed, given the
``candidate`` alias. Any failure leaves no version and no alias behind and marks the build run
FAILED (with a tracking server that is down, nothing can be undone: the run is left without a
version, which nothing serves, and a rerun registers the build anew).
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

from onramp.retry import is_network_error
from registry.errors import ArtifactStoreError, RegistryError, RegistryUnavailableError
from registry.manifests import field, layout_slug, read_manifest, verify_engine
from registry.names import registered_name
from registry.versions import CANDIDATE

if TYPE_CHECKING:
    from registry.runs import RunHandle, Runs
    from registry.store import ArtifactStore
    from registry.tracking import Tracking

log = logging.getLogger(__name__)

__all__ = ["ENGINE_PATH", "VERSION_TAGS", "register_engine"]

ENGINE_PATH = "engine"
VERSION_TAGS = ("hf_repo", "hf_revision", "backend", "layout", "quantization", "builder_version", "gate")


def _version_tags(engine_dir: Path, manifest: Any, gate_passed: bool, tags: dict[str, Any] | None) -> dict[str, str]:
    source, layout = field(manifest, "source"), field(manifest, "layout")
    out = {
        "hf_repo": str(field(source, "repo") or ""),
        "hf_revision": str(field(source, "revision") or ""),
        "backend": str(field(manifest, "backend") or ""),
        "backend_version": str(field(manifest, "backend_version") or ""),
        "layout": layout_slug(layout),
        "quantization": str(field(layout, "quantization") or "none"),
        "builder_version": str(field(manifest, "builder_version") or ""),
        "build_id": str(field(manifest, "build_id") or ""),
        # the chain of trust: registry DB -> manifest.json's sha256 -> every file's sha256
        "manifest_sha256": hashlib.sha256((engine_dir / "manifest.json").read_bytes()).hexdigest(),
        "gate": "passed" if gate_passed else "failed",
    }
    out.update({k: str(v) for k, v in (tags or {}).items() if v is not None})
    return out


def _model_name(engine_dir: Path, manifest: Any, name: str | None) -> str:
    if not name and field(manifest, "name"):
        name = registered_name(field(field(manifest, "source"), "repo"), str(field(manifest, "name")))
    if not name:
        raise RegistryError(f"{engine_dir}/manifest.json names no model", "pass name=... to register()")
    if any(c in name for c in "/:") or name != name.strip():
        raise RegistryError(f"{name!r} cannot be a registered model name (no '/', ':' or outer spaces)",
                            "pass name=... as the repo id with '--' for '/', e.g. "
                            "huggingfacetb--smollm2-135m-instruct")
    return name


def _check_stored(store: ArtifactStore, uri: str, expected: dict[str, int]) -> None:
    """Every manifest file is stored with its size: the upload is complete."""
    stored = store.sizes(uri, ENGINE_PATH)
    for rel, size in expected.items():
        if rel not in stored:
            raise ArtifactStoreError(f"after the upload, {rel} is missing from the artifact store",
                                     "check the artifact store and register again")
        if rel != "manifest.json" and stored[rel] != size:
            raise ArtifactStoreError(
                f"after the upload, {rel} has {stored[rel]} bytes in the artifact store, not {size}",
                "check the artifact store and register again",
            )


def register_engine(tracking: Tracking, store: ArtifactStore, runs: Runs, engine_dir: str | Path, *,
                    name: str | None = None, run_id: str | None = None, tags: dict[str, Any] | None = None,
                    gate_passed: bool, metrics: dict[str, float] | None = None) -> str:
    """Register a built engine as a new version of its model (see the module doc); return the version."""
    from mlflow.exceptions import MlflowException

    engine_dir = Path(engine_dir)
    if not engine_dir.is_dir():
        raise RegistryError(f"engine directory {engine_dir} does not exist", "pass a built engine directory")
    manifest = read_manifest(engine_dir)
    verify_engine(engine_dir, manifest, f"engine {engine_dir}")
    name = _model_name(engine_dir, manifest, name)
    version_tags = _version_tags(engine_dir, manifest, gate_passed, tags)
    expected = {rel: int(field(entry, "size")) for rel, entry in (field(manifest, "files") or {}).items()}
    expected["manifest.json"] = (engine_dir / "manifest.json").stat().st_size

    run = runs.start(f"{name}:{version_tags['layout']}", parent_run_id=run_id,
                     tags={"onramp.kind": "engine-build", **{f"onramp.{k}": v for k, v in version_tags.items()}})
    client = tracking.client
    created_model = False
    version: str | None = None
    try:
        run.log_params({k: version_tags[k] for k in ("backend", "layout", "quantization", "builder_version")}
                       | {"repo": version_tags["hf_repo"], "revision": version_tags["hf_revision"]})
        if metrics:
            run.log_metrics(metrics)
        store.check_reachable(run.artifact_uri)
        store.put_dir(run.artifact_uri, engine_dir, ENGINE_PATH)
        _check_stored(store, run.artifact_uri, expected)
        try:
            client.get_registered_model(name)
        except MlflowException:
            try:
                client.create_registered_model(name, description=f"onramp engines serving {name}")
                created_model = True
            except MlflowException:  # created concurrently
                client.get_registered_model(name)
        mv = client.create_model_version(
            name, f"runs:/{run.run_id}/{ENGINE_PATH}", run_id=run.run_id, tags=version_tags,
            description=f"{version_tags['hf_repo']}@{version_tags['hf_revision'][:12]} "
                        f"{version_tags['backend']} {version_tags['layout']}",
        )
        version = str(mv.version)
        if gate_passed:
            client.set_registered_model_alias(name, CANDIDATE, version)
        run.set_tags({"onramp.model": name, "onramp.version": version})
        run.end("FINISHED")
    except BaseException as exc:
        if isinstance(exc, MlflowException) and is_network_error(exc):
            exc = tracking.unavailable(exc)
        _undo(tracking, store, name, version, created_model, run, exc)
        if isinstance(exc, RegistryUnavailableError):
            raise exc from None
        if isinstance(exc, MlflowException):
            raise RegistryError(
                f"MLflow refused to register {name}: {str(exc).splitlines()[0][:300]}",
                "nothing was registered; fix the tags/name it names and register again",
            ) from None
        raise
    log.info("registered %s version %s (gate %s)", name, version, version_tags["gate"])
    return version


def _undo(tracking: Tracking, store: ArtifactStore, name: str, version: str | None, created_model: bool,
          run: RunHandle, exc: BaseException) -> None:
    if isinstance(exc, RegistryUnavailableError):
        log.warning("registration of %s failed (%s); run %s is left without a version", name, exc, run.run_id)
        return
    log.warning("registration of %s failed (%s); removing what was created", name, exc)
    client = tracking.client
    if version is not None:
        with contextlib.suppress(Exception):
            client.delete_model_version(name, version)
    if created_model:
        with contextlib.suppress(Exception):
            if not client.search_model_versions(f"name = '{name}'"):
                client.delete_registered_model(name)
    store.delete(run.artifact_uri, ENGINE_PATH)  # what was uploaded, if the store is back (best effort)
    with contextlib.suppress(Exception):
        run.set_tags({"onramp.error": str(exc)[:500]})
    with contextlib.suppress(Exception):
        run.end("FAILED")
