"""Register, promote, roll back and fetch against real MLflow (SQLite) and moto's S3 server."""

from __future__ import annotations

import logging
import shutil
import time

import pytest

from registry.client import CANDIDATE, PREVIOUS, PRODUCTION
from registry.errors import ArtifactStoreError, IntegrityError

NAME = "huggingfacetb--smollm2-135m-instruct"  # the registered model of the full repo id
BIG = 9 * 1024 * 1024  # above boto3's 8 MiB multipart threshold


def test_two_versions_promote_rollback_fetch(s3, make_engine, registry_factory):
    reg = registry_factory(s3.root)
    e1, e2 = make_engine("one", big=BIG), make_engine("two")
    v1 = reg.register(e1, gate_passed=True, metrics={"ppl_ratio": 1.01})
    assert reg.aliases(NAME) == {CANDIDATE: v1}
    v2 = reg.register(e2, gate_passed=True)
    assert (v1, v2) == ("1", "2")
    assert reg.aliases(NAME) == {CANDIDATE: "2"}

    # engine files are in S3 under the run's artifacts; the large one went up in parts
    objects = s3.objects()
    big = [k for k in objects if k.endswith("/engine/weights_big.bin")]
    assert len(big) == 1 and objects[big[0]]["Size"] == BIG
    assert objects[big[0]]["ETag"].strip('"').rsplit("-", 1)[1].isdigit(), objects[big[0]]["ETag"]
    small = [k for k in objects if k.endswith("/engine/config.json")]
    assert len(small) == 2 and all("-" not in objects[k]["ETag"] for k in small)

    # tags on the version
    info = reg.list_models()[0]
    tags = info.versions[-1].tags
    assert info.name == NAME
    assert {k: tags[k] for k in ("hf_repo", "backend", "layout", "quantization", "builder_version", "gate")} == {
        "hf_repo": "HuggingFaceTB/SmolLM2-135M-Instruct", "backend": "openvino",
        "layout": "cpu-tp1-pp1-bf16-int8", "quantization": "int8", "builder_version": "0.1.0", "gate": "passed",
    }
    assert len(tags["hf_revision"]) == 40

    assert reg.promote(NAME, v1) is None
    assert reg.get_production(NAME).version == "1"
    assert reg.promote(NAME, v2) == "1"
    assert reg.aliases(NAME) == {CANDIDATE: "2", PRODUCTION: "2", PREVIOUS: "1"}
    assert reg.rollback(NAME) == "1"
    assert reg.aliases(NAME) == {CANDIDATE: "2", PRODUCTION: "1"}

    path = reg.fetch(NAME, PRODUCTION)
    assert path.name == "1" and (path / "weights_big.bin").read_bytes() == (e1 / "weights_big.bin").read_bytes()
    assert sorted(p.name for p in path.iterdir() if not p.name.startswith(".")) == sorted(
        p.name for p in e1.iterdir())
    # second fetch comes from the cache: it works with the S3 objects gone
    for key in objects:
        if "/engine/" in key:
            s3.client.delete_object(Bucket=s3.bucket, Key=key)
    assert reg.fetch(NAME, "1") == path


def test_corrupted_object_is_refused(s3, make_engine, registry_factory):
    reg = registry_factory(s3.root)
    version = reg.register(make_engine("c"), gate_passed=True)
    key = next(k for k in s3.objects() if k.endswith("/engine/openvino_model.xml"))
    s3.client.put_object(Bucket=s3.bucket, Key=key, Body=b"<net name='tampered'/>\n")
    with pytest.raises(IntegrityError, match="openvino_model.xml") as err:
        reg.fetch(NAME, version)
    assert "re-register" in str(err.value)
    # nothing of it in the cache: no version dir, no partial download
    cached = [p for p in reg.cache_dir.rglob("*") if p.is_file()]
    assert cached == []


def test_rewritten_manifest_in_s3_is_refused(s3, make_engine, registry_factory):
    """Altered file + a manifest rewritten to match it: refused by the registered manifest sha256."""
    from builders import manifest as bm

    reg = registry_factory(s3.root)
    engine = make_engine("m")
    version = reg.register(engine, gate_passed=True)
    (engine / "config.json").write_text('{"model_type": "evil"}\n')
    forged = bm.read_manifest(engine).model_copy(update={"files": bm.hash_files(engine)})
    bm.write_manifest(engine, forged)
    bm.verify_files(engine)  # self-consistent: only the registry's record can catch it
    keys = s3.objects()
    for rel in ("config.json", "manifest.json"):
        key = next(k for k in keys if k.endswith(f"/engine/{rel}"))
        s3.client.put_object(Bucket=s3.bucket, Key=key, Body=(engine / rel).read_bytes())
    with pytest.raises(IntegrityError, match="manifest.json does not match the sha256 registered"):
        reg.fetch(NAME, version)
    assert not any(p.is_file() for p in reg.cache_dir.rglob("*"))


def test_s3_unreachable_retries_then_fails_cleanly(s3, make_engine, registry_factory, monkeypatch, caplog):
    from tests.conftest import free_port

    reg = registry_factory(s3.root)
    v1 = reg.register(make_engine("ok"), gate_passed=True)
    dead = f"http://127.0.0.1:{free_port()}"
    monkeypatch.setenv("MLFLOW_S3_ENDPOINT_URL", dead)
    caplog.set_level(logging.WARNING, logger="registry")
    start = time.monotonic()
    with pytest.raises(ArtifactStoreError) as err:
        reg.register(make_engine("lost"), gate_passed=True)
    elapsed = time.monotonic() - start
    msg = str(err.value)
    assert dead in msg and "after 3 attempts" in msg and "MLFLOW_S3_ENDPOINT_URL" in msg
    assert len([r for r in caplog.records if "(attempt " in r.getMessage()]) == 2  # two retries logged
    assert elapsed < 30
    # nothing half-registered: still one version, aliases unchanged, the build run is FAILED
    models = reg.list_models()
    assert [v.version for v in models[0].versions] == [v1]
    assert models[0].aliases == {CANDIDATE: v1}
    runs = reg.client.search_runs([reg.experiment_id()], order_by=["attribute.start_time DESC"])
    assert runs[0].info.status == "FAILED" and runs[1].info.status == "FINISHED"
    # a fetch of the good version fails just as clearly and leaves no partial copy
    with pytest.raises(ArtifactStoreError, match="unreachable"):
        reg.fetch(NAME, v1)
    assert not any(p.is_file() for p in reg.cache_dir.rglob("*"))


def test_cached_copy_damaged_locally_is_fetched_again(s3, make_engine, registry_factory):
    reg = registry_factory(s3.root)
    engine = make_engine("d")
    version = reg.register(engine, gate_passed=True)
    path = reg.fetch(NAME, version)
    (path / "config.json").write_text("{}")
    again = reg.fetch(NAME, version)
    assert again == path and (again / "config.json").read_bytes() == (engine / "config.json").read_bytes()
    shutil.rmtree(path)


def test_s3_drops_mid_upload_and_the_retry_completes_it(s3, flaky_proxy, make_engine, registry_factory,
                                                         monkeypatch, caplog):
    # S3 reached through a proxy that cuts every connection 3 MB into the 9 MB file (mid
    # multipart upload) and refuses connections for 1.5 s; boto3's own retries are off, so the
    # registry's bounded retry loop must redo the upload.
    monkeypatch.setenv("MLFLOW_S3_ENDPOINT_URL", flaky_proxy.url)
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "1")
    caplog.set_level(logging.WARNING, logger="registry")
    reg = registry_factory(s3.root, attempts=4, retry_wait=1.0)
    engine = make_engine("flaky", big=BIG)
    flaky_proxy.cut_after(3 * 1024 * 1024, for_s=1.5, direction="up")
    version = reg.register(engine, gate_passed=True)
    assert flaky_proxy.outages == 1
    assert any("failed (attempt 1/4)" in r.getMessage() for r in caplog.records)
    assert reg.aliases(NAME) == {CANDIDATE: version}
    path = reg.fetch(NAME, version)  # verified: the retried upload is whole
    assert (path / "weights_big.bin").read_bytes() == (engine / "weights_big.bin").read_bytes()


def test_a_cut_mid_upload_resends_the_file_it_hit_not_the_engine(s3, flaky_proxy, make_engine, registry_factory,
                                                                   monkeypatch):
    """One retry layer whose unit is a file: the first big file is not uploaded again (registry.store)."""
    import os

    from builders import manifest as bm

    monkeypatch.setenv("MLFLOW_S3_ENDPOINT_URL", flaky_proxy.url)
    reg = registry_factory(s3.root, attempts=4, retry_wait=1.0)
    engine = make_engine("two-big", big=BIG)  # weights_big.bin: uploaded last
    (engine / "a_first.bin").write_bytes(os.urandom(BIG))  # uploaded first
    bm.write_manifest(engine, bm.read_manifest(engine).model_copy(update={"files": bm.hash_files(engine)}))
    flaky_proxy.cut_after(BIG + 3 * 1024 * 1024, for_s=1.5, direction="up")  # 3 MB into weights_big.bin
    version = reg.register(engine, gate_passed=True)
    assert flaky_proxy.outages == 1
    # a_first.bin once, 3 MB of weights_big.bin, then weights_big.bin whole (a whole-engine retry: 4 x BIG)
    assert BIG * 2 < flaky_proxy.sent < BIG * 3
    path = reg.fetch(NAME, version)
    assert (path / "a_first.bin").read_bytes() == (engine / "a_first.bin").read_bytes()


def test_s3_down_for_good_mid_upload_leaves_nothing_registered(s3, flaky_proxy, make_engine, registry_factory,
                                                                monkeypatch):
    monkeypatch.setenv("MLFLOW_S3_ENDPOINT_URL", flaky_proxy.url)
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "1")
    # Down for good means down until the test ends. (It used to come back after 60 s: an upload
    # connection cut mid-request can wait out botocore's 60 s read timeout, by which time the
    # store was back and the second attempt rightly succeeded: "DID NOT RAISE" on some hosts.)
    reg = registry_factory(s3.root, attempts=2, retry_wait=0.1)
    flaky_proxy.cut_after(3 * 1024 * 1024, for_s=None, direction="up")
    with pytest.raises(ArtifactStoreError) as err:
        reg.register(make_engine("gone", big=BIG), gate_passed=True)
    assert flaky_proxy.fired.is_set() and flaky_proxy.outages == 1  # the fault did fire
    assert "failed after 2 attempts" in str(err.value) or "unreachable after 2 attempts" in str(err.value)
    assert flaky_proxy.url in str(err.value)
    assert reg.list_models() == []
    runs = reg.client.search_runs([reg.experiment_id()])
    assert [r.info.status for r in runs] == ["FAILED"]


def test_moving_the_artifact_root_to_s3_is_honoured(s3, make_engine, onramp_home, monkeypatch):
    """The embedded default first, then ONRAMP_MLFLOW_ARTIFACT_ROOT=s3://...: new engines go to S3."""
    from registry.client import Registry

    local = Registry()
    v1 = local.register(make_engine("local"), gate_passed=True)
    assert list((onramp_home / "mlartifacts").rglob("engine/manifest.json"))
    monkeypatch.setenv("ONRAMP_MLFLOW_ARTIFACT_ROOT", s3.root)
    moved = Registry()
    v2 = moved.register(make_engine("s3"), gate_passed=True)
    assert (v1, v2) == ("1", "2")
    assert sum(k.endswith("/engine/manifest.json") for k in s3.objects()) == 1
    assert moved.experiment_name == f"onramp @ {s3.root}"
    # one registry: both versions fetch, each from its own store
    assert moved.fetch(NAME, "1").is_dir() and moved.fetch(NAME, "2").is_dir()
