"""Fixtures of the registry tests: real servers on loopback.

- ``moto_s3`` (session): moto's S3 server (``ThreadedMotoServer``) on a free port with one bucket.
- ``s3`` (function): points MLFLOW_S3_ENDPOINT_URL / AWS_* at it and hands out a fresh
  ``s3://bucket/<unique prefix>`` artifact root and a boto3 client.
- ``mlflow_server`` (session): ``mlflow server`` as a subprocess, SQLite backend, artifacts on
  the moto S3 (clients write them directly: ``--no-serve-artifacts``).
- ``flaky_proxy`` / ``stall_proxy``: a :class:`tests.netfaults.FaultProxy` in front of the moto
  server (drops every connection for a while after some uploaded bytes) / the ``mlflow server``
  (holds a given request, or goes down).
- ``make_engine``: small engine directories with a real manifest.json (sha256 of every file).
- ``_fresh_mlflow_db`` (autouse): MLflow creates a new SQLite database by running its ~60
  migrations (5-15 s on a busy 2-core machine); each test instead gets a copy of an empty,
  fully migrated database that MLflow made once (cached in the test cache per MLflow version).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import sys
import uuid
from dataclasses import dataclass
from pathlib import Path

import pytest

from serving.process import spawn_server
from tests.conftest import free_port
from tests.netfaults import FaultProxy

BUCKET = "onramp-registry-test"
S3_ENV = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
}


@pytest.fixture(scope="session")
def mlflow_db_template(test_cache) -> Path:
    """An empty MLflow SQLite database, migrated by MLflow itself, reused across runs."""
    import mlflow
    from mlflow import MlflowClient

    path = test_cache / f"mlflow-empty-{mlflow.__version__}.db"
    if not path.is_file():
        tmp = test_cache / f".mlflow-empty.{uuid.uuid4().hex[:8]}.db"
        client = MlflowClient(tracking_uri=f"sqlite:///{tmp}", registry_uri=f"sqlite:///{tmp}")
        client.search_experiments()
        client.search_registered_models()
        os.replace(tmp, path)
    return path


@pytest.fixture(autouse=True)
def _fresh_mlflow_db(mlflow_db_template, onramp_home, tmp_path, monkeypatch) -> None:
    # the CLI sets these with os.environ.setdefault; monkeypatch undoes them after each test
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "1")
    for target in (onramp_home / "mlflow.db", tmp_path / "mlflow.db"):
        shutil.copyfile(mlflow_db_template, target)


@dataclass
class S3:
    endpoint: str
    bucket: str
    prefix: str
    client: object  # boto3 S3 client

    @property
    def root(self) -> str:
        return f"s3://{self.bucket}/{self.prefix}"

    def objects(self) -> dict[str, dict]:
        out = {}
        for page in self.client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=self.prefix):
            for obj in page.get("Contents", []):
                out[obj["Key"]] = obj
        return out


@pytest.fixture(scope="session")
def moto_s3():
    from moto.server import ThreadedMotoServer

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    endpoint = f"http://127.0.0.1:{port}"
    import boto3

    client = boto3.client("s3", endpoint_url=endpoint, aws_access_key_id="testing",
                          aws_secret_access_key="testing", region_name="us-east-1")
    client.create_bucket(Bucket=BUCKET)
    try:
        yield endpoint, client
    finally:
        server.stop()


@pytest.fixture
def s3(moto_s3, monkeypatch) -> S3:
    endpoint, client = moto_s3
    monkeypatch.setenv("MLFLOW_S3_ENDPOINT_URL", endpoint)
    for key, value in S3_ENV.items():
        monkeypatch.setenv(key, value)
    for key in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3"):
        monkeypatch.delenv(key, raising=False)
    return S3(endpoint, BUCKET, f"t-{uuid.uuid4().hex[:10]}", client)


@pytest.fixture
def make_engine(tmp_path):
    """``make_engine(tag, big=0, repo=...)``: an engine dir with a manifest (builders.manifest) of every file.

    ``big`` adds a random file of that many bytes (to exercise multipart uploads).
    """
    from builders import manifest as bm

    def make(tag: str = "a", *, big: int = 0, name: str = "smollm2-135m-instruct",
             revision: str | None = None, repo: str = "HuggingFaceTB/SmolLM2-135M-Instruct") -> Path:
        out = tmp_path / f"engine-{tag}-{uuid.uuid4().hex[:6]}"
        out.mkdir()
        (out / "openvino_model.xml").write_text(f"<net name='{tag}'/>\n")
        (out / "openvino_model.bin").write_bytes(os.urandom(4096))
        (out / "config.json").write_text('{"model_type": "llama"}\n')
        if big:
            (out / "weights_big.bin").write_bytes(os.urandom(big))
        revision = revision or hashlib.sha1(tag.encode()).hexdigest()
        data = bm.Manifest(
            name=name,
            source=bm.Source(repo=repo, revision=revision, path=str(out)),
            backend="openvino",
            backend_version="2026.4.1",
            builder_version="0.1.0",
            layout=bm.Layout(hardware="cpu", tp=1, pp=1, dtype="bf16", quantization="int8"),
            build_id=hashlib.sha256(f"{tag}{uuid.uuid4()}".encode()).hexdigest(),
            files=bm.hash_files(out),
            build_seconds=0.1,
            host="test",
            created=bm.now_utc(),
        )
        bm.write_manifest(out, data)
        return out

    return make


@pytest.fixture
def registry_factory(tmp_path):
    """``registry_factory(artifact_root=None, tracking_uri=None)``: a Registry with short retries."""
    from registry.client import Registry

    def make(artifact_root: str | None = None, tracking_uri: str | None = None, **kwargs):
        kwargs.setdefault("attempts", 3)
        kwargs.setdefault("retry_wait", 0.05)
        kwargs.setdefault("connect_timeout", 1.0)
        return Registry(
            tracking_uri=tracking_uri or f"sqlite:///{tmp_path / 'mlflow.db'}",
            artifact_root=artifact_root,
            cache_dir=tmp_path / "registry-cache",
            **kwargs,
        )

    return make


@pytest.fixture(scope="session")
def mlflow_server(moto_s3, mlflow_db_template, tmp_path_factory):
    """``mlflow server`` (SQLite backend, artifacts on moto S3); yields (url, artifact root)."""
    endpoint, _ = moto_s3
    work = tmp_path_factory.mktemp("mlflow-server")
    shutil.copyfile(mlflow_db_template, work / "mlflow.db")
    port = free_port()
    root = f"s3://{BUCKET}/server-{uuid.uuid4().hex[:8]}"
    env = {**os.environ, **S3_ENV, "MLFLOW_S3_ENDPOINT_URL": endpoint}
    server = spawn_server(
        [str(Path(sys.executable).parent / "mlflow"), "server",
         "--backend-store-uri", f"sqlite:///{work / 'mlflow.db'}",
         "--default-artifact-root", root, "--no-serve-artifacts",
         "--host", "127.0.0.1", "--port", str(port), "--workers", "1"],
        url=f"http://127.0.0.1:{port}", log=work / "server.log", env=env, cwd=work, what="mlflow server")
    try:
        server.wait_ready(path="/health", timeout=120)
        yield server.url, root
    finally:
        server.stop(timeout=10)


@pytest.fixture
def flaky_proxy(moto_s3):
    """A :class:`tests.netfaults.FaultProxy` in front of the moto S3 server."""
    with FaultProxy.to(moto_s3[0]) as proxy:
        yield proxy


@pytest.fixture
def stall_proxy(mlflow_server):
    """A :class:`tests.netfaults.FaultProxy` in front of the session's ``mlflow server``."""
    with FaultProxy.to(mlflow_server[0]) as proxy:
        yield proxy


SERVE_FROM_REGISTRY = ["--registry", "--no-auth", "--registry-poll", "1"]  # `onramp serve` arguments


@pytest.fixture
def two_versions(ov_int8_engine, onramp_home):
    """``(registry, v1, v2)``: the reference engine registered twice, version 1 in production."""
    from registry.client import Registry

    reg = Registry()
    v1 = reg.register(ov_int8_engine, gate_passed=True)
    v2 = reg.register(ov_int8_engine, gate_passed=True)
    reg.promote("huggingfacetb--smollm2-135m-instruct", v1)
    return reg, v1, v2
