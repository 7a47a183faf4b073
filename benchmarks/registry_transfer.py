"""Register and fetch a real engine: local artifact store vs S3 (moto's server on loopback).

    .venv/bin/python benchmarks/registry_transfer.py [--engine DIR]

Without --engine it uses the reference model's int8 OpenVINO engine (built once, cached by
builders). For each store it prints: register (upload + listing check + model version),
first fetch (download + sha256 of every file + rename) and cached fetch (sha256 re-check only),
with MB/s. Everything runs in a temporary ONRAMP_HOME; nothing is left behind.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def _engine(arg: str | None) -> Path:
    if arg:
        return Path(arg)
    from builders import build_engine
    from onramp.reference import HUB_REPO_ID, make_reference_model

    cache = Path(os.environ.get("ONRAMP_TEST_CACHE") or Path(__file__).resolve().parent.parent / ".cache" / "test")
    ref = make_reference_model(cache_dir=cache)
    return build_engine(ref, backend="openvino", quant="int8", out_root=cache / "engines", repo=HUB_REPO_ID)


def _bench(label: str, reg, engine: Path, size_mb: float) -> None:
    from builders.manifest import read_manifest
    from registry.names import registered_name

    manifest = read_manifest(engine)
    name = registered_name(manifest.source.repo if manifest.source else None, manifest.name)
    reg.experiment_id()  # MLflow creates and migrates the SQLite database: not part of the numbers
    reg.list_models()
    t = time.perf_counter()
    version = reg.register(engine, gate_passed=True)
    t_reg = time.perf_counter() - t
    t = time.perf_counter()
    path = reg.fetch(name, version)
    t_fetch = time.perf_counter() - t
    t = time.perf_counter()
    reg.fetch(name, version)
    t_cached = time.perf_counter() - t
    assert path.is_dir()
    print(f"{label:6}  register {t_reg:6.2f} s ({size_mb / t_reg:6.1f} MB/s)   "
          f"fetch {t_fetch:6.2f} s ({size_mb / t_fetch:6.1f} MB/s)   cached fetch {t_cached:5.2f} s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--engine", help="engine directory (default: the reference int8 engine)")
    args = parser.parse_args()
    os.environ["MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"] = "false"

    engine = _engine(args.engine)
    size = sum(p.stat().st_size for p in engine.rglob("*") if p.is_file())
    size_mb = size / 1e6
    print(f"engine {engine} ({size_mb:.1f} MB, {sum(1 for p in engine.rglob('*') if p.is_file())} files)")

    from moto.server import ThreadedMotoServer

    from registry.client import Registry
    from onramp.process import free_port

    with tempfile.TemporaryDirectory(prefix="onramp-bench-") as tmp:
        home = Path(tmp)
        local = Registry(tracking_uri=f"sqlite:///{home / 'local.db'}", artifact_root=str(home / "art"),
                         cache_dir=home / "cache-local")
        _bench("local", local, engine, size_mb)

        port = free_port()
        server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
        server.start()
        try:
            os.environ.update({"MLFLOW_S3_ENDPOINT_URL": f"http://127.0.0.1:{port}", "AWS_ACCESS_KEY_ID": "bench",
                               "AWS_SECRET_ACCESS_KEY": "bench", "AWS_DEFAULT_REGION": "us-east-1"})
            import boto3

            boto3.client("s3", endpoint_url=f"http://127.0.0.1:{port}").create_bucket(Bucket="onramp-bench")
            s3 = Registry(tracking_uri=f"sqlite:///{home / 's3.db'}", artifact_root="s3://onramp-bench/mlflow",
                          cache_dir=home / "cache-s3")
            _bench("s3", s3, engine, size_mb)
        finally:
            server.stop()


if __name__ == "__main__":
    main()
