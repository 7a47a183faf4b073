"""The scale-out shape: an `mlflow server` process (SQLite backend) with artifacts on S3."""

from __future__ import annotations

import pytest

from registry.client import CANDIDATE, PREVIOUS, PRODUCTION

NAME = "huggingfacetb--smollm2-135m-instruct"  # registered: the full repo id


@pytest.mark.slow
def test_mlflow_server_with_s3_artifacts(mlflow_server, s3, make_engine, registry_factory):
    url, root = mlflow_server
    reg = registry_factory(tracking_uri=url, experiment=f"onramp-{s3.prefix}")
    assert reg.artifact_root is None  # the server's --default-artifact-root decides
    with reg.run("onboard", params={"repo": "HuggingFaceTB/SmolLM2-135M-Instruct"}) as run:
        v1 = reg.register(make_engine("s1", big=9 * 1024 * 1024), run_id=run.run_id, gate_passed=True)
        v2 = reg.register(make_engine("s2"), run_id=run.run_id, gate_passed=True)
    artifact_uri = reg.client.get_run(run.run_id).info.artifact_uri
    assert artifact_uri.startswith(root + "/"), artifact_uri

    # this test's experiment only: the session's server also holds other tests' engines
    bucket, prefix = artifact_uri.rsplit("/", 2)[0].removeprefix("s3://").split("/", 1)
    keys = [o["Key"] for page in s3.client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
            for o in page.get("Contents", [])]
    assert sum(k.endswith("/engine/manifest.json") for k in keys) == 2

    reg.promote(NAME, v1)
    reg.promote(NAME, v2)
    assert reg.rollback(NAME) == v1
    assert reg.aliases(NAME) == {CANDIDATE: v2, PRODUCTION: v1}
    assert PREVIOUS not in reg.aliases(NAME)
    path = reg.fetch(NAME, PRODUCTION)
    assert path.name == v1 and (path / "weights_big.bin").stat().st_size == 9 * 1024 * 1024
