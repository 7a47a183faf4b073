"""The model registry: MLflow runs, registered models, aliases, and verified engine fetches.

One :class:`Registry` wraps an explicit :class:`mlflow.MlflowClient` (never MLflow's global
"active run" state, so flows, threads and the server can share it):

- every onboarding is a run (:meth:`Registry.start_run`): params, metrics, reports, plots;
- every engine build is a child run holding the engine directory as artifacts (``engine/``) and
  a version of the registered model named after the full Hub repo id, ``org--name``
  (:mod:`registry.names`, :meth:`Registry.register`),
  tagged with where it came from and whether it passed its gates;
- aliases: ``candidate`` (newest build that passed), ``production`` (what serving serves),
  ``previous_production`` (what :meth:`Registry.rollback` restores);
- :meth:`Registry.fetch` downloads a version into a cache keyed by registry, model and version,
  verifies every file's sha256 against ``manifest.json`` in a temporary directory and renames it
  into place only when all match.

Artifacts go wherever the experiment's artifact location points: a local directory under
``ONRAMP_HOME`` by default, or ``s3://bucket/prefix`` (``MLFLOW_S3_ENDPOINT_URL`` and ``AWS_*``
for S3-compatible stores). MLflow's S3 repository uploads with boto3's ``upload_file``, which
switches to multipart above boto3's threshold (8 MiB).
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
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from onramp.retry import first_line, is_network_error, retrying
from registry import promotion
from registry.errors import (
    ArtifactStoreError,
    ArtifactStoreUnavailableError,
    IntegrityError,
    ModelNotFoundError,
    PromotionError,
    RegistryError,
    RegistryUnavailableError,
)
from registry.names import registered_name

if TYPE_CHECKING:
    from mlflow import MlflowClient
    from mlflow.entities.model_registry import ModelVersion

    from onramp.settings import Settings

log = logging.getLogger(__name__)

__all__ = ["CANDIDATE", "PREVIOUS", "PRODUCTION", "ModelInfo", "Registry", "RunHandle", "VersionInfo"]

CANDIDATE = "candidate"
PRODUCTION = "production"
PREVIOUS = "previous_production"
ENGINE_PATH = "engine"
VERSION_TAGS = ("hf_repo", "hf_revision", "backend", "layout", "quantization", "builder_version", "gate")
_COMPLETE = ".onramp-fetched"
_STALE_PARTIAL_S = 3600.0

T = TypeVar("T")


@dataclass
class VersionInfo:
    """One registered engine build, as the CLI and the watcher see it."""

    name: str
    version: str
    run_id: str | None
    source: str
    tags: dict[str, str]
    aliases: list[str]
    created: int  # ms since the epoch

    @property
    def gate(self) -> str:
        return self.tags.get("gate", "?")


@dataclass
class ModelInfo:
    name: str
    aliases: dict[str, str]
    versions: list[VersionInfo] = field(default_factory=list)


def _get(obj: Any, key: str, default: Any = None) -> Any:
    """Read a manifest field whether the manifest is a pydantic model or a plain dict."""
    if obj is None:
        return default
    if isinstance(obj, dict):
        return obj.get(key, default)
    return getattr(obj, key, default)


def _layout_slug(layout: Any) -> str:
    parts = [str(_get(layout, "hardware", "?")), f"tp{_get(layout, 'tp', 1)}", f"pp{_get(layout, 'pp', 1)}"]
    for key in ("dtype", "quantization"):
        value = _get(layout, key)
        if value:
            parts.append(str(value))
    return "-".join(parts)


def _read_manifest(engine_dir: Path) -> Any:
    from builders.manifest import read_manifest

    try:
        return read_manifest(engine_dir)
    except RegistryError:
        raise
    except Exception as exc:  # noqa: BLE001 - builders' own error, pydantic, JSON, OSError
        raise IntegrityError(
            f"{engine_dir} has no valid manifest.json: {getattr(exc, 'what', None) or exc}",
            "register only engine directories written by `onramp build` (builders.build_engine)",
        ) from None


def _verify(engine_dir: Path, manifest: Any, what: str) -> None:
    from builders.manifest import verify_files

    try:
        verify_files(engine_dir, manifest)
    except Exception as exc:  # noqa: BLE001 - whatever verify_files raises names the file
        raise IntegrityError(
            f"{what} failed verification against its manifest.json: {getattr(exc, 'what', None) or exc}",
            "the stored engine was altered or damaged; re-register the build (or fetch another version)",
        ) from None


class RunHandle:
    """Logging helpers bound to one MLflow run (params, metrics, files, dicts, figures)."""

    def __init__(self, registry: Registry, run_id: str):
        self.registry = registry
        self.run_id = run_id

    @property
    def client(self) -> MlflowClient:
        return self.registry.client

    def log_params(self, params: dict[str, Any]) -> None:
        from mlflow.entities import Param

        items = [Param(k, "" if v is None else str(v)[:6000]) for k, v in params.items()]
        if items:
            self.client.log_batch(self.run_id, params=items)

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        items = [Metric(k, float(v), now, step or 0) for k, v in metrics.items() if v is not None]
        if items:
            self.client.log_batch(self.run_id, metrics=items)

    def set_tags(self, tags: dict[str, Any]) -> None:
        from mlflow.entities import RunTag

        items = [RunTag(k, str(v)) for k, v in tags.items() if v is not None]
        if items:
            self.client.log_batch(self.run_id, tags=items)

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        """Log a file or a directory (recursively) as artifacts of this run, with retries."""
        path = Path(path)
        log_fn = self.client.log_artifacts if path.is_dir() else self.client.log_artifact
        self.registry._with_retries(
            f"upload {path.name}", lambda: log_fn(self.run_id, str(path), artifact_path), self.run_id
        )

    def log_dict(self, data: dict[str, Any], artifact_file: str) -> None:
        self.registry._with_retries(
            f"upload {artifact_file}", lambda: self.client.log_dict(self.run_id, data, artifact_file), self.run_id
        )

    def log_text(self, text: str, artifact_file: str) -> None:
        self.registry._with_retries(
            f"upload {artifact_file}", lambda: self.client.log_text(self.run_id, text, artifact_file), self.run_id
        )

    def log_figure(self, figure: Any, artifact_file: str) -> None:
        """Log a matplotlib figure (e.g. a latency plot) as an image artifact."""
        self.registry._with_retries(
            f"upload {artifact_file}",
            lambda: self.client.log_figure(self.run_id, figure, artifact_file),
            self.run_id,
        )

    def end(self, status: str = "FINISHED") -> None:
        self.client.set_terminated(self.run_id, status)


class Registry:
    """MLflow tracking + model registry for onramp's engines.

    ``Registry(settings)`` uses ``settings.mlflow_tracking_uri`` / ``mlflow_artifact_root``;
    ``tracking_uri=`` / ``artifact_root=`` override them. ``attempts`` and ``retry_wait`` bound
    the retries of every artifact transfer (upload, download, the S3 reachability check).
    """

    def __init__(
        self,
        settings: Settings | None = None,
        *,
        tracking_uri: str | None = None,
        artifact_root: str | None = None,
        cache_dir: str | Path | None = None,
        experiment: str = "onramp",
        attempts: int = 4,
        retry_wait: float = 1.0,
        connect_timeout: float = 5.0,
        lock_timeout_s: float = 120.0,
        lock_lease_s: float = 60.0,
    ):
        if settings is None:
            from onramp.settings import load_settings

            settings = load_settings()
        self.settings = settings
        self.tracking_uri = tracking_uri or settings.mlflow_tracking_uri
        if artifact_root is None:
            artifact_root = settings.mlflow_artifact_root
            # The embedded default (a local path under ONRAMP_HOME) means nothing to a remote
            # tracking server: let the server choose its own artifact root then.
            if self.tracking_uri.startswith(("http://", "https://")) and artifact_root == str(
                settings.home / "mlartifacts"
            ):
                artifact_root = None
        self.artifact_root = artifact_root
        self.cache_dir = Path(cache_dir) if cache_dir else settings.home / "registry" / "cache"
        self.experiment_name = experiment
        self.attempts = max(1, attempts)
        self.retry_wait = retry_wait
        self.connect_timeout = connect_timeout
        self.lock_timeout_s = lock_timeout_s
        self.lock_lease_s = lock_lease_s
        if self.tracking_uri.startswith(("http://", "https://")):
            # MLflow's own HTTP retries are the one retry layer of tracking calls: keep them bounded
            # (its default is 7 retries with a doubling backoff, minutes against a server that is down)
            os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "3")
            os.environ.setdefault("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "1")
        self._client: MlflowClient | None = None
        self._experiment_id: str | None = None

    # ------------------------------------------------------------------ plumbing

    @property
    def client(self) -> MlflowClient:
        if self._client is None:
            from mlflow import MlflowClient

            if self.tracking_uri.startswith("sqlite:///"):
                Path(self.tracking_uri.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
            if self.artifact_root and "://" not in self.artifact_root:
                Path(self.artifact_root).mkdir(parents=True, exist_ok=True)
            self._client = MlflowClient(tracking_uri=self.tracking_uri, registry_uri=self.tracking_uri)
        return self._client

    def experiment_id(self) -> str:
        """The experiment holding onramp's runs, created with the configured artifact root.

        MLflow fixes an experiment's artifact location when it is created. If the experiment
        exists with another location (e.g. the root moved from the embedded default to S3),
        the runs go to a sibling experiment named ``"<experiment> @ <root>"`` instead, so engine
        files always land where ONRAMP_MLFLOW_ARTIFACT_ROOT says.
        """
        if self._experiment_id is None:
            exp = self._call(lambda: self.client.get_experiment_by_name(self.experiment_name))
            if exp is not None and self.artifact_root and \
                    exp.artifact_location.rstrip("/") != self.artifact_root.rstrip("/"):
                sibling = f"{self.experiment_name} @ {self.artifact_root}"
                log.info("experiment %r keeps its artifacts at %s; using %r for %s",
                         self.experiment_name, exp.artifact_location, sibling, self.artifact_root)
                self.experiment_name = sibling
                exp = self.client.get_experiment_by_name(sibling)
            self._experiment_id = exp.experiment_id if exp is not None else self._create_experiment()
        return self._experiment_id

    def _create_experiment(self) -> str:
        from mlflow.exceptions import MlflowException

        try:
            return self.client.create_experiment(self.experiment_name, artifact_location=self.artifact_root)
        except MlflowException:  # created concurrently
            exp = self.client.get_experiment_by_name(self.experiment_name)
            if exp is None:
                raise
            return exp.experiment_id

    def _call(self, fn: Callable[[], T]) -> T:
        """Run a tracking/registry call; a server that cannot be reached (after MLflow's own
        bounded HTTP retries) becomes one :class:`RegistryUnavailableError` naming it."""
        from mlflow.exceptions import MlflowException

        try:
            return fn()
        except MlflowException as exc:
            if is_network_error(exc):
                raise self._unavailable(exc) from None
            raise

    def _unavailable(self, exc: BaseException) -> RegistryUnavailableError:
        return RegistryUnavailableError(
            f"MLflow tracking server {self.tracking_uri} is unreachable: {first_line(exc, 200)}",
            "start it (`mlflow server ...` or `onramp up`) or fix ONRAMP_MLFLOW_TRACKING_URI, then run again",
        )

    def _s3_endpoint(self) -> str:
        return os.environ.get("MLFLOW_S3_ENDPOINT_URL") or "AWS S3 (no MLFLOW_S3_ENDPOINT_URL)"

    def _check_s3(self, artifact_uri: str) -> None:
        """Fail fast, after bounded retries, if an s3:// artifact location cannot be reached."""
        if not artifact_uri.startswith("s3://"):
            return
        import boto3
        from botocore.config import Config
        from botocore.exceptions import ClientError

        bucket = artifact_uri.removeprefix("s3://").split("/", 1)[0]
        client = boto3.client(
            "s3",
            endpoint_url=os.environ.get("MLFLOW_S3_ENDPOINT_URL") or None,
            verify=False if os.environ.get("MLFLOW_S3_IGNORE_TLS", "").lower() == "true" else None,
            config=Config(
                connect_timeout=self.connect_timeout,
                read_timeout=max(self.connect_timeout, 10.0),
                retries={"max_attempts": 1},  # our own policy retries, and logs each attempt
            ),
        )
        try:
            for attempt in retrying(f"S3 endpoint {self._s3_endpoint()}", attempts=self.attempts,
                                    wait=self.retry_wait, log=log):
                with attempt:
                    client.head_bucket(Bucket=bucket)
        except ClientError as exc:
            if is_network_error(exc):
                raise self._s3_unavailable(exc) from None
            code = exc.response.get("Error", {}).get("Code", "?")
            raise ArtifactStoreError(
                f"S3 bucket {bucket!r} at {self._s3_endpoint()} is not usable (S3 error {code})",
                "create the bucket, or check AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY and "
                "ONRAMP_MLFLOW_ARTIFACT_ROOT",
            ) from None
        except Exception as exc:
            if is_network_error(exc):
                raise self._s3_unavailable(exc) from None
            raise

    def _s3_unavailable(self, exc: BaseException) -> ArtifactStoreUnavailableError:
        return ArtifactStoreUnavailableError(
            f"S3 endpoint {self._s3_endpoint()} unreachable after {self.attempts} attempts: {first_line(exc, 200)}",
            "check that the S3 server is up and that MLFLOW_S3_ENDPOINT_URL and AWS_* point at it, then run again",
        )

    def _with_retries(self, what: str, fn: Callable[[], T], run_id: str | None = None) -> T:
        """An artifact transfer, retried (bounded, with backoff) when the store cannot be reached or
        drops it; any failure becomes an :class:`ArtifactStoreError` naming the store."""
        try:
            for attempt in retrying(what, attempts=self.attempts, wait=self.retry_wait, log=log):
                with attempt:
                    return fn()
        except RegistryError:
            raise
        except Exception as exc:  # noqa: BLE001 - OSError, MlflowException, boto3/botocore/s3transfer
            transient = is_network_error(exc)
            where = ""
            if run_id is not None:
                with contextlib.suppress(Exception):
                    where = f" at {self.client.get_run(run_id).info.artifact_uri}"
            cls = ArtifactStoreUnavailableError if transient else ArtifactStoreError
            tries = f" after {self.attempts} attempts" if transient else ""
            raise cls(
                f"{what}{where} failed{tries}: {first_line(exc)}",
                "check the artifact store (ONRAMP_MLFLOW_ARTIFACT_ROOT; for s3:// also MLFLOW_S3_ENDPOINT_URL "
                f"= {self._s3_endpoint()} and AWS_*) and retry",
            ) from None
        raise AssertionError("unreachable")  # pragma: no cover

    # ------------------------------------------------------------------ runs

    def start_run(
        self,
        run_name: str | None = None,
        *,
        params: dict[str, Any] | None = None,
        tags: dict[str, Any] | None = None,
        parent_run_id: str | None = None,
    ) -> RunHandle:
        """Create a run (e.g. one onboarding) and return logging helpers bound to it."""
        all_tags = {k: str(v) for k, v in (tags or {}).items() if v is not None}
        if parent_run_id:
            all_tags["mlflow.parentRunId"] = parent_run_id
        run = self._call(lambda: self.client.create_run(self.experiment_id(), tags=all_tags, run_name=run_name))
        handle = RunHandle(self, run.info.run_id)
        if params:
            handle.log_params(params)
        return handle

    @contextlib.contextmanager
    def run(self, run_name: str | None = None, **kwargs: Any) -> Iterator[RunHandle]:
        """``with registry.run("onboard ...") as run:`` — FINISHED on exit, FAILED on an exception."""
        handle = self.start_run(run_name, **kwargs)
        try:
            yield handle
        except BaseException:
            with contextlib.suppress(Exception):
                handle.end("FAILED")
            raise
        handle.end("FINISHED")

    # ------------------------------------------------------------------ register

    def register(
        self,
        engine_dir: str | Path,
        *,
        name: str | None = None,
        run_id: str | None = None,
        tags: dict[str, Any] | None = None,
        gate_passed: bool,
        metrics: dict[str, float] | None = None,
    ) -> str:
        """Register a built engine as a new version of its model; return the version.

        The model is named after the engine's Hub repo (``ORG/NAME`` → ``org--name``, see
        :mod:`registry.names`; the manifest's name when it has no repo) unless ``name`` is given.

        The engine directory becomes the artifacts (``engine/``) of a new run — a child of
        ``run_id`` (the onboarding run) when given. Only when every file is stored and listed
        back with its manifest size is the model version created, tagged (hf_repo, hf_revision,
        backend, layout, quantization, builder_version, gate, build_id, manifest_sha256) and, if
        the gates passed,
        given the ``candidate`` alias. Any failure leaves no version and no alias behind and marks
        the build run FAILED.
        """
        from mlflow.exceptions import MlflowException

        engine_dir = Path(engine_dir)
        if not engine_dir.is_dir():
            raise RegistryError(f"engine directory {engine_dir} does not exist", "pass a built engine directory")
        manifest = _read_manifest(engine_dir)
        _verify(engine_dir, manifest, f"engine {engine_dir}")
        source = _get(manifest, "source")
        if not name and _get(manifest, "name"):
            name = registered_name(_get(source, "repo"), str(_get(manifest, "name")))
        if not name:
            raise RegistryError(f"{engine_dir}/manifest.json names no model", "pass name=... to register()")
        if any(c in name for c in "/:") or name != name.strip():
            raise RegistryError(f"{name!r} cannot be a registered model name (no '/', ':' or outer spaces)",
                                "pass name=... as the repo id with '--' for '/', e.g. "
                                "huggingfacetb--smollm2-135m-instruct")
        layout = _get(manifest, "layout")
        version_tags: dict[str, str] = {
            "hf_repo": str(_get(source, "repo") or ""),
            "hf_revision": str(_get(source, "revision") or ""),
            "backend": str(_get(manifest, "backend") or ""),
            "backend_version": str(_get(manifest, "backend_version") or ""),
            "layout": _layout_slug(layout),
            "quantization": str(_get(layout, "quantization") or "none"),
            "builder_version": str(_get(manifest, "builder_version") or ""),
            "build_id": str(_get(manifest, "build_id") or ""),
            # the chain of trust: registry DB -> manifest.json's sha256 -> every file's sha256
            "manifest_sha256": hashlib.sha256((engine_dir / "manifest.json").read_bytes()).hexdigest(),
            "gate": "passed" if gate_passed else "failed",
        }
        version_tags.update({k: str(v) for k, v in (tags or {}).items() if v is not None})
        files = _get(manifest, "files") or {}
        expected = {rel: int(_get(entry, "size")) for rel, entry in files.items()}
        expected["manifest.json"] = (engine_dir / "manifest.json").stat().st_size

        run = self.start_run(
            f"{name}:{version_tags['layout']}",
            parent_run_id=run_id,
            tags={"onramp.kind": "engine-build", **{f"onramp.{k}": v for k, v in version_tags.items()}},
        )
        created_model = False
        version: str | None = None
        try:
            run.log_params({
                "repo": version_tags["hf_repo"],
                "revision": version_tags["hf_revision"],
                "backend": version_tags["backend"],
                "layout": version_tags["layout"],
                "quantization": version_tags["quantization"],
                "builder_version": version_tags["builder_version"],
            })
            if metrics:
                run.log_metrics(metrics)
            artifact_uri = self.client.get_run(run.run_id).info.artifact_uri
            self._check_s3(artifact_uri)
            self._with_retries(
                f"upload of engine {engine_dir.name}",
                lambda: self.client.log_artifacts(run.run_id, str(engine_dir), ENGINE_PATH),
                run.run_id,
            )
            self._check_uploaded(run.run_id, expected)
            try:
                self.client.get_registered_model(name)
            except MlflowException:
                try:
                    self.client.create_registered_model(
                        name, description=f"onramp engines serving {name}"
                    )
                    created_model = True
                except MlflowException:  # created concurrently
                    self.client.get_registered_model(name)
            mv = self.client.create_model_version(
                name, f"runs:/{run.run_id}/{ENGINE_PATH}", run_id=run.run_id, tags=version_tags,
                description=f"{version_tags['hf_repo']}@{version_tags['hf_revision'][:12]} "
                            f"{version_tags['backend']} {version_tags['layout']}",
            )
            version = str(mv.version)
            if gate_passed:
                self.client.set_registered_model_alias(name, CANDIDATE, version)
            run.set_tags({"onramp.model": name, "onramp.version": version})
            run.end("FINISHED")
        except BaseException as exc:
            if isinstance(exc, MlflowException) and is_network_error(exc):
                exc = self._unavailable(exc)
            self._undo_register(name, version, created_model, run, exc)
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

    def _check_uploaded(self, run_id: str, expected: dict[str, int]) -> None:
        """Every manifest file is stored with its size: the upload is complete."""
        stored: dict[str, int] = {}

        def walk(path: str) -> None:
            for info in self.client.list_artifacts(run_id, path):
                if info.is_dir:
                    walk(info.path)
                else:
                    stored[info.path[len(ENGINE_PATH) + 1:]] = int(info.file_size or 0)

        self._with_retries("listing the uploaded engine", lambda: walk(ENGINE_PATH), run_id)
        for rel, size in expected.items():
            if rel not in stored:
                raise ArtifactStoreError(f"after the upload, {rel} is missing from the artifact store",
                                         "check the artifact store and register again")
            if rel != "manifest.json" and stored[rel] != size:
                raise ArtifactStoreError(
                    f"after the upload, {rel} has {stored[rel]} bytes in the artifact store, not {size}",
                    "check the artifact store and register again",
                )

    def _undo_register(self, name: str, version: str | None, created_model: bool, run: RunHandle,
                       exc: BaseException) -> None:
        if isinstance(exc, RegistryUnavailableError):
            # nothing can be undone on a server that is down; what is left is never served: a run
            # (RUNNING, with files) but no model version, and a rerun registers the build anew
            log.warning("registration of %s failed (%s); run %s is left without a version", name, exc, run.run_id)
            return
        log.warning("registration of %s failed (%s); removing what was created", name, exc)
        if version is not None:
            with contextlib.suppress(Exception):
                self.client.delete_model_version(name, version)
        if created_model:
            with contextlib.suppress(Exception):
                if not self.client.search_model_versions(f"name = '{name}'"):
                    self.client.delete_registered_model(name)
        with contextlib.suppress(Exception):  # what was uploaded, if the store is back (best effort)
            from mlflow.store.artifact.artifact_repository_registry import get_artifact_repository

            uri = self.client.get_run(run.run_id).info.artifact_uri
            get_artifact_repository(uri).delete_artifacts(ENGINE_PATH)
        with contextlib.suppress(Exception):
            run.set_tags({"onramp.error": str(exc)[:500]})
        with contextlib.suppress(Exception):
            run.end("FAILED")

    # ------------------------------------------------------------------ aliases

    def _version(self, name: str, version_or_alias: str | int) -> ModelVersion:
        from mlflow.exceptions import MlflowException

        ref = str(version_or_alias)
        try:
            if ref.isdigit():
                return self._call(lambda: self.client.get_model_version(name, ref))
            return self._call(lambda: self.client.get_model_version_by_alias(name, ref))
        except MlflowException:
            pass
        try:
            model = self.client.get_registered_model(name)
        except MlflowException:
            known = ", ".join(m.name for m in self.client.search_registered_models()
                              if not promotion.is_lock_name(m.name)) or "none"
            raise ModelNotFoundError(
                f"no registered model {name!r} (registered: {known})", "see `onramp models`"
            ) from None
        aliases = ", ".join(f"{a}→{v}" for a, v in sorted(model.aliases.items())) or "none"
        kind = "version" if ref.isdigit() else "alias"
        raise ModelNotFoundError(
            f"model {name!r} has no {kind} {ref!r} (aliases: {aliases})", "see `onramp models`"
        ) from None

    def aliases(self, name: str) -> dict[str, str]:
        from mlflow.exceptions import MlflowException

        try:
            model = self._call(lambda: self.client.get_registered_model(name))
        except MlflowException:
            raise ModelNotFoundError(f"no registered model {name!r}", "see `onramp models`") from None
        return {k: str(v) for k, v in model.aliases.items()}

    def alias_version(self, name: str, alias: str) -> str | None:
        """The version an alias points at, or None (also None for an unknown model)."""
        from mlflow.exceptions import MlflowException

        try:
            return str(self._call(lambda: self.client.get_model_version_by_alias(name, alias)).version)
        except MlflowException:
            return None

    def get_production(self, name: str) -> VersionInfo | None:
        """The version serving must serve, or None if nothing was promoted yet."""
        version = self.alias_version(name, PRODUCTION)
        return None if version is None else self._info(self._version(name, version))

    def version_info(self, name: str, version_or_alias: str | int) -> VersionInfo:
        """One version (a number or an alias) with its tags; ``.gate`` says whether it passed."""
        return self._info(self._version(name, version_or_alias))

    def promote(self, name: str, version: str | int, *, force: bool = False) -> str | None:
        """Point ``production`` at ``version``; remember the one before. Returns the previous version.

        Refused unless ``force``: a version whose gates failed (:class:`PromotionError`) and a
        version of an older Hub revision than production's (:class:`StalePromotionError`).
        Serialized with every other promote/rollback of ``name`` (see :mod:`registry.promotion`).
        """
        mv = self._version(name, version)
        if mv.tags.get("gate") != "passed" and not force:
            raise PromotionError(
                f"{name} version {mv.version} did not pass its gates (gate={mv.tags.get('gate', 'unknown')})",
                f"promote a version that passed (see `onramp models`), "
                f"or use `onramp promote {name} {mv.version} --force`",
            )
        return promotion.promote(self, name, mv, force=force)

    def rollback(self, name: str) -> str:
        """Restore the production version from before the last promote; return it."""
        self.aliases(name)  # clear error for an unknown model
        return promotion.rollback(self, name)

    def production_state(self, name: str) -> promotion.ProductionState:
        """The production record (seq, production, history, recent moves), reconciled with the alias."""
        with promotion.production_lock(self, name):
            return promotion.reconcile(self, name)

    # ------------------------------------------------------------------ listing

    def _info(self, mv: ModelVersion) -> VersionInfo:
        return VersionInfo(
            name=mv.name, version=str(mv.version), run_id=mv.run_id, source=mv.source,
            tags=dict(mv.tags or {}), aliases=list(getattr(mv, "aliases", []) or []),
            created=int(mv.creation_timestamp or 0),
        )

    def model_names(self) -> list[str]:
        return sorted(m.name for m in self._call(lambda: self.client.search_registered_models(max_results=1000))
                      if not promotion.is_lock_name(m.name))

    def list_models(self) -> list[ModelInfo]:
        """Every registered model with its aliases and versions (newest first)."""
        out = []
        for model in self._call(lambda: self.client.search_registered_models(max_results=1000)):
            if promotion.is_lock_name(model.name):
                continue
            aliases = {k: str(v) for k, v in model.aliases.items()}
            versions = [self._info(mv) for mv in self.client.search_model_versions(f"name = '{model.name}'")]
            for v in versions:
                v.aliases = sorted(a for a, ver in aliases.items() if ver == v.version)
            versions.sort(key=lambda v: int(v.version), reverse=True)
            out.append(ModelInfo(model.name, aliases, versions))
        return sorted(out, key=lambda m: m.name)

    # ------------------------------------------------------------------ fetch

    def _cache_path(self, name: str, version: str) -> Path:
        key = hashlib.sha256(self.tracking_uri.encode()).hexdigest()[:12]
        return self.cache_dir / key / name / version

    def fetch(self, name: str, version_or_alias: str | int = PRODUCTION) -> Path:
        """A verified local copy of a registered engine (a version number or an alias).

        Downloads into a temporary directory beside the cache, verifies every file's sha256
        against manifest.json, and manifest.json's own sha256 against the version's tag (so a
        manifest rewritten in the store to match altered files is refused too), then
        renames it to ``<cache>/<registry>/<name>/<version>``. A cached copy is re-verified
        before it is handed out; a damaged one is replaced. Nothing unverified is ever returned.
        """
        mv = self._version(name, version_or_alias)
        version = str(mv.version)
        final = self._cache_path(name, version)
        want = {k: (mv.tags or {}).get(k) or None for k in ("build_id", "manifest_sha256")}
        if (final / _COMPLETE).is_file():
            try:
                self._check_fetched(final, want, f"cached {name} version {version}")
                return final
            except IntegrityError as exc:
                log.warning("%s; downloading it again", exc)
                shutil.rmtree(final, ignore_errors=True)
        if not mv.run_id:
            raise RegistryError(f"{name} version {version} has no run (source {mv.source})",
                                "register engines with `Registry.register`")
        final.parent.mkdir(parents=True, exist_ok=True)
        # leftovers of a fetch that was killed: never used, removed once surely abandoned
        for stale in final.parent.glob(f".{version}.partial-*"):
            with contextlib.suppress(OSError):
                if time.time() - stale.stat().st_mtime > _STALE_PARTIAL_S:
                    shutil.rmtree(stale, ignore_errors=True)
        if final.exists():  # not a finished fetch (no marker): never hand it out
            shutil.rmtree(final)
        tmp = Path(tempfile.mkdtemp(dir=final.parent, prefix=f".{version}.partial-"))
        try:
            self._check_s3(self.client.get_run(mv.run_id).info.artifact_uri)
            local = Path(self._with_retries(
                f"download of {name} version {version}",
                lambda: self.client.download_artifacts(mv.run_id, ENGINE_PATH, str(tmp)),
                mv.run_id,
            ))
            self._check_fetched(local, want, f"{name} version {version} (downloaded)")
            (local / _COMPLETE).write_text(json.dumps({"name": name, "version": version,
                                                       "run_id": mv.run_id, "fetched": time.time()}))
            try:
                os.replace(local, final)
            except OSError:
                if not (final / _COMPLETE).is_file():  # not a concurrent fetch of the same version
                    raise
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        log.info("fetched %s version %s into %s", name, version, final)
        return final

    def _check_fetched(self, engine_dir: Path, want: dict[str, str | None], what: str) -> None:
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
        manifest = _read_manifest(engine_dir)
        got_build = _get(manifest, "build_id")
        if want.get("build_id") and got_build != want["build_id"]:
            raise IntegrityError(
                f"{what}: manifest build_id {got_build} differs from the registered {want['build_id']}",
                "the stored manifest was replaced; re-register the build",
            )
        _verify(engine_dir, manifest, what)

    # ------------------------------------------------------------------ watch

    def watch(self, *, alias: str = PRODUCTION, names: list[str] | None = None, interval: float = 5.0,
              on_change: Any = None) -> Any:
        """An :class:`registry.watch.AliasWatcher` on this registry (not started)."""
        from registry.watch import AliasWatcher

        return AliasWatcher(self, alias=alias, names=names, interval=interval, on_change=on_change)
