"""The artifact store: a run's files up and down, under one transfer policy.

Artifacts go wherever the run's artifact URI points: a local directory under ``ONRAMP_HOME`` by
default, or ``s3://bucket/prefix`` (``MLFLOW_S3_ENDPOINT_URL`` and ``AWS_*`` for S3-compatible
stores; ``MLFLOW_S3_IGNORE_TLS``, ``MLFLOW_S3_UPLOAD_EXTRA_ARGS`` as MLflow reads them). S3 is
spoken to with this module's own boto3 client, so its retries are known; other stores (a local
directory, MLflow's ``mlflow-artifacts:`` proxy, ...) through MLflow's artifact repositories.
Uploads use boto3's ``upload_file``, which switches to multipart above 8 MiB.

Transfer policy: **one retry layer** per call path, and it is this one.

- The unit of a retry is one file: an upload or a download cut half-way sends that file again,
  never the whole engine; a listing is retried as one call.
- Retried are only errors that :func:`onramp.retry.is_network_error` accepts by their *type*
  (a refused or dropped connection, a timeout, HTTP 5xx/429, S3 throttling); a refused
  credential, a missing bucket or a full disk fails at once.
- At most ``attempts`` tries (tenacity, :func:`onramp.retry.retrying`), waiting ``retry_wait``,
  then twice that, ... (at most 30 s), each retry logged.
- Beneath it, a transport makes one try: the S3 client runs with ``total_max_attempts=1`` and
  s3transfer with ``num_download_attempts=1``. A store whose own client retries (MLflow's HTTP
  proxy after ``MLFLOW_HTTP_REQUEST_MAX_RETRIES``; gs://, wasbs://, ...) is called once, and its
  client's retries are the layer.
- Above it nobody retries: :meth:`registry.client.Registry.register` and ``fetch`` make each
  transfer once, and no flow task has retries. So a register sends each engine file at most
  ``attempts`` times.
- Tracking calls that locate the artifacts (a run's artifact URI) happen before a transfer,
  outside this layer (they have MLflow's own: :mod:`registry.tracking`).

Every failure becomes an :class:`~registry.errors.ArtifactStoreError` naming the store
(:class:`~registry.errors.ArtifactStoreUnavailableError` when it could not be reached).
"""

from __future__ import annotations

import contextlib
import json
import logging
import mimetypes
import os
import posixpath
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from onramp.retry import first_line, is_network_error, retrying
from registry.errors import ArtifactStoreError, ArtifactStoreUnavailableError, RegistryError

log = logging.getLogger(__name__)

__all__ = ["ArtifactStore"]

T = TypeVar("T")


def _is_s3(uri: str) -> bool:
    return uri.startswith("s3://")


def _split_s3(uri: str, *parts: str) -> tuple[str, str]:
    bucket, _, key = uri.removeprefix("s3://").partition("/")
    return bucket, posixpath.join(key.rstrip("/"), *[p for p in parts if p])


def s3_endpoint() -> str:
    return os.environ.get("MLFLOW_S3_ENDPOINT_URL") or "AWS S3 (no MLFLOW_S3_ENDPOINT_URL)"


class ArtifactStore:
    """Artifact transfers of the registry at ``tracking_uri`` (see the module doc for the policy)."""

    def __init__(self, tracking_uri: str, *, attempts: int = 4, retry_wait: float = 1.0,
                 connect_timeout: float = 5.0):
        self.tracking_uri = tracking_uri
        self.attempts = max(1, attempts)
        self.retry_wait = retry_wait
        self.connect_timeout = connect_timeout

    # ------------------------------------------------------------------ policy

    def _tries(self, uri: str) -> int:
        """Retried here: S3 (whose client makes one try) and local paths; other stores' clients retry."""
        return self.attempts if _is_s3(uri) or "://" not in uri or uri.startswith("file:") else 1

    def _retried(self, what: str, fn: Callable[[], T], tries: int) -> T:
        for attempt in retrying(what, attempts=tries, wait=self.retry_wait, log=log):
            with attempt:
                return fn()
        raise AssertionError("unreachable")  # pragma: no cover

    def transfer(self, what: str, fn: Callable[[], T], uri: str) -> T:
        """``fn`` (one transfer to or from ``uri``) under the policy; failures name the store."""
        tries = self._tries(uri)
        try:
            return self._retried(what, fn, tries)
        except RegistryError:
            raise
        except Exception as exc:  # noqa: BLE001 - OSError, MlflowException, boto3/botocore/s3transfer
            transient = is_network_error(exc)
            cls = ArtifactStoreUnavailableError if transient else ArtifactStoreError
            after = f" after {tries} attempts" if transient else ""
            raise cls(
                f"{what} at {uri} failed{after}: {first_line(exc)}",
                "check the artifact store (ONRAMP_MLFLOW_ARTIFACT_ROOT; for s3:// also MLFLOW_S3_ENDPOINT_URL "
                f"= {s3_endpoint()} and AWS_*) and retry",
            ) from None

    # ------------------------------------------------------------------ S3

    def _s3(self, read_timeout: float = 60.0) -> Any:
        """A boto3 S3 client as MLflow configures one, but making one try per request."""
        import boto3
        from botocore.config import Config

        return boto3.client(
            "s3",
            endpoint_url=os.environ.get("MLFLOW_S3_ENDPOINT_URL") or None,
            verify=False if os.environ.get("MLFLOW_S3_IGNORE_TLS", "").lower() == "true" else None,
            config=Config(
                signature_version=os.environ.get("MLFLOW_EXPERIMENTAL_S3_SIGNATURE_VERSION", "s3v4"),
                s3={"addressing_style": os.environ.get("MLFLOW_BOTO_CLIENT_ADDRESSING_STYLE", "auto")},
                connect_timeout=self.connect_timeout,
                read_timeout=read_timeout,
                retries={"total_max_attempts": 1},  # the policy above retries, and logs each attempt
            ),
        )

    def check_reachable(self, uri: str) -> None:
        """Fail fast, after the policy's retries, if an ``s3://`` location cannot be reached."""
        if not _is_s3(uri):
            return
        from botocore.exceptions import ClientError

        bucket, _ = _split_s3(uri)
        client = self._s3(read_timeout=max(self.connect_timeout, 10.0))
        try:
            self._retried(f"S3 endpoint {s3_endpoint()}", lambda: client.head_bucket(Bucket=bucket), self.attempts)
        except Exception as exc:
            if is_network_error(exc):
                raise ArtifactStoreUnavailableError(
                    f"S3 endpoint {s3_endpoint()} unreachable after {self.attempts} attempts: {first_line(exc, 200)}",
                    "check that the S3 server is up and that MLFLOW_S3_ENDPOINT_URL and AWS_* point at it, "
                    "then run again",
                ) from None
            if isinstance(exc, ClientError):
                code = exc.response.get("Error", {}).get("Code", "?")
                raise ArtifactStoreError(
                    f"S3 bucket {bucket!r} at {s3_endpoint()} is not usable (S3 error {code})",
                    "create the bucket, or check AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY and "
                    "ONRAMP_MLFLOW_ARTIFACT_ROOT",
                ) from None
            raise

    @staticmethod
    def _extra_args(local: Path) -> dict[str, Any]:
        kind, encoding = mimetypes.guess_type(str(local))
        extra: dict[str, Any] = {"ContentType": kind} if kind else {}
        if encoding:
            extra["ContentEncoding"] = encoding
        if owner := os.environ.get("MLFLOW_S3_EXPECTED_BUCKET_OWNER"):
            extra["ExpectedBucketOwner"] = owner
        if raw := os.environ.get("MLFLOW_S3_UPLOAD_EXTRA_ARGS"):
            extra.update(json.loads(raw))
        return extra

    # ------------------------------------------------------------------ transfers

    def _repository(self, uri: str) -> Any:
        from mlflow.store.artifact.artifact_repository_registry import get_artifact_repository

        return get_artifact_repository(uri, tracking_uri=self.tracking_uri)

    def put_file(self, uri: str, local: str | Path, artifact_dir: str | None = None) -> None:
        """Store one file as ``<artifact_dir>/<its name>`` under ``uri``."""
        self.put_files(uri, {Path(local).name: Path(local)}, artifact_dir)

    def put_dir(self, uri: str, local_dir: str | Path, artifact_dir: str) -> None:
        """Store every file below ``local_dir`` under ``<artifact_dir>/``, keeping the tree."""
        local_dir = Path(local_dir)
        files = {p.relative_to(local_dir).as_posix(): p for p in sorted(local_dir.rglob("*")) if p.is_file()}
        self.put_files(uri, files, artifact_dir)

    def put_files(self, uri: str, files: dict[str, Path], artifact_dir: str | None) -> None:
        """Store ``{relative path: local file}`` under ``<artifact_dir>/``, each file its own transfer."""
        s3 = self._s3() if _is_s3(uri) else None
        repo = None if s3 is not None else self._repository(uri)

        def put(rel: str, local: Path) -> None:
            if s3 is not None:
                bucket, key = _split_s3(uri, artifact_dir or "", rel)
                s3.upload_file(str(local), bucket, key, ExtraArgs=self._extra_args(local))
            else:
                repo.log_artifact(str(local), posixpath.dirname(posixpath.join(artifact_dir or "", rel)) or None)

        for rel, local in files.items():
            self.transfer(f"upload of {rel}", lambda rel=rel, local=local: put(rel, local), uri)

    def sizes(self, uri: str, artifact_dir: str) -> dict[str, int]:
        """``{path relative to artifact_dir: bytes}`` of every file stored below ``artifact_dir``."""
        if _is_s3(uri):
            client = self._s3()
            bucket, prefix = _split_s3(uri, artifact_dir)

            def list_s3() -> dict[str, int]:
                out: dict[str, int] = {}
                for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix + "/"):
                    for obj in page.get("Contents", []):
                        out[obj["Key"][len(prefix) + 1:]] = int(obj["Size"])
                return out

            return self.transfer(f"listing {artifact_dir}/", list_s3, uri)
        repo = self._repository(uri)

        def walk(path: str, out: dict[str, int]) -> dict[str, int]:
            for info in repo.list_artifacts(path):
                if info.is_dir:
                    walk(info.path, out)
                else:
                    out[info.path[len(artifact_dir) + 1:]] = int(info.file_size or 0)
            return out

        return self.transfer(f"listing {artifact_dir}/", lambda: walk(artifact_dir, {}), uri)

    def get_dir(self, uri: str, artifact_dir: str, dest: Path, what: str) -> Path:
        """Download ``artifact_dir`` into ``dest/<artifact_dir>``; return that directory."""
        self.check_reachable(uri)
        out = dest / artifact_dir
        if not _is_s3(uri):
            repo = self._repository(uri)
            return Path(self.transfer(f"download of {what}", lambda: repo.download_artifacts(artifact_dir, str(dest)),
                                      uri))
        from boto3.s3.transfer import TransferConfig

        client = self._s3()
        once = TransferConfig(num_download_attempts=1)
        for rel in sorted(self.sizes(uri, artifact_dir)):
            bucket, key = _split_s3(uri, artifact_dir, rel)
            local = out / rel
            local.parent.mkdir(parents=True, exist_ok=True)
            self.transfer(f"download of {what}: {rel}",
                          lambda b=bucket, k=key, p=local: client.download_file(b, k, str(p), Config=once), uri)
        out.mkdir(parents=True, exist_ok=True)
        return out

    def delete(self, uri: str, artifact_dir: str) -> None:
        """Remove what is stored below ``artifact_dir`` (best effort, no retries)."""
        with contextlib.suppress(Exception):
            self._repository(uri).delete_artifacts(artifact_dir)
