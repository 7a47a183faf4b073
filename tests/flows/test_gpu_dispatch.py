"""GPU layouts go to the ``gpu`` work pool (flows.dispatch): a real ``prefect worker start --pool gpu``
process on this machine runs the ``build-layout`` deployment.

1. A layout sent to the pool is built by the worker's flow run, published to the registry
   (``gate=pending``, tagged with the run) and fetched back, verified, by the caller.
2. The onboard flow with targets cpu + a100-80gb: the GPU layout's build-layout run fails on the
   worker (no TensorRT-LLM here: "unavailable"), its row says so, and the CPU layout goes on.
Uses the tiny random Llama, so the builds and evals take seconds, not minutes.
"""

from __future__ import annotations

import asyncio
import os
import sys
import time
from pathlib import Path

import pytest
import yaml

from builders import targets
from flows import steps
from onramp.settings import load_settings

PERMISSIVE_GATES = {"version": "test-permissive", "quality": {"perplexity_ratio": {"max": 1e12}},
                    "latency": {}, "regression": {"max_pct": 10, "metrics": {}}}


def _api(coro_fn):
    from prefect.client.orchestration import get_client

    async def run():
        async with get_client() as client:
            return await coro_fn(client)

    return asyncio.run(run())


def _wait_pool_ready(pool: str, worker, timeout: float = 300.0) -> None:
    from prefect.client.schemas.objects import WorkPoolStatus

    deadline = time.monotonic() + timeout
    while _api(lambda c: c.read_work_pool(pool)).status != WorkPoolStatus.READY:
        assert worker.proc.poll() is None, f"the worker exited: {worker.log_text(last=2000)}"
        assert time.monotonic() < deadline, f"no worker on pool {pool} after {timeout:.0f} s"
        time.sleep(0.5)


def _build_layout_runs(tag: str) -> list:
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterTags
    from prefect.client.schemas.sorting import FlowRunSort

    # limit and sort given: Prefect 3.8.8's server refuses the client's nulls (422)
    return _api(lambda c: c.read_flow_runs(flow_run_filter=FlowRunFilter(tags=FlowRunFilterTags(all_=[tag])),
                                           limit=50, sort=FlowRunSort.ID_DESC))


def test_without_the_deployment_in_process_and_without_a_worker_unavailable_at_once(prefect_server, tiny_llama):
    from flows.deploy import BUILD_LAYOUT, deploy_all
    from flows.dispatch import build_layout_deployment, build_on_gpu_pool
    from flows.errors import OnboardError

    settings = load_settings()
    gpu = next(p for p in targets.plan_targets(tiny_llama, ["a100-80gb"]) if p.selected)
    # no build-layout deployment (Prefect's ephemeral API, no `onramp up`): the caller builds in-process
    assert build_on_gpu_pool(gpu, "acme/tiny", "0" * 40, settings, timeout=5) is None
    deploy_all(settings, only=(BUILD_LAYOUT,))
    try:
        started = time.monotonic()
        with pytest.raises(OnboardError, match="unavailable: no worker polls the 'gpu' work pool") as err:
            build_on_gpu_pool(gpu, "acme/tiny", "0" * 40, settings, timeout=600)
        assert time.monotonic() - started < 60  # not waiting for a worker that may never come
        assert "prefect worker start --pool gpu" in str(err.value.fix)
        assert not _build_layout_runs(gpu.key)  # no run was left waiting in the pool
    finally:
        _api(lambda c: _delete_deployment(c, build_layout_deployment()))


@pytest.mark.slow
def test_gpu_layouts_are_built_by_a_worker_of_the_gpu_pool(prefect_server, hub_mirror, tiny_llama, monkeypatch,
                                                            tmp_path):
    from prefect.settings import PREFECT_API_URL

    from flows.deploy import BUILD_LAYOUT, GPU_POOL, deploy_all
    from flows.dispatch import FLOW_RUN_TAG, build_layout_deployment, build_on_gpu_pool
    from flows.onboard import OnboardConfig, onboard
    from onramp.mirror import publish
    from registry.client import Registry
    from serving.process import free_port, spawn_server

    monkeypatch.setenv("ONRAMP_HF_ENDPOINT", hub_mirror.url)
    settings = load_settings()
    repo = f"gpu-{time.monotonic_ns() % 10**8}/tiny-llama"
    sha = publish(repo, tiny_llama, hub_mirror.mirror_dir, "a tiny model")
    deploy_all(settings, only=(BUILD_LAYOUT,))
    port = free_port()
    env = {**os.environ, "PREFECT_API_URL": PREFECT_API_URL.value(), "PREFECT_WORKER_QUERY_SECONDS": "1",
           "PREFECT_WORKER_WEBSERVER_HOST": "127.0.0.1", "PREFECT_WORKER_WEBSERVER_PORT": str(port)}
    prefect = Path(sys.executable).with_name("prefect")
    worker = spawn_server([str(prefect), "worker", "start", "--pool", GPU_POOL, "--with-healthcheck"],
                          url=f"http://127.0.0.1:{port}", log=tmp_path / "worker.log", env=env, what="gpu worker")
    try:
        worker.wait_ready(path="/health", timeout=300)
        _wait_pool_ready(GPU_POOL, worker)

        # 1. a layout built on the pool comes back through the registry
        cpu = next(p for p in targets.plan_targets(tiny_llama, ["cpu"]) if p.selected)
        engine_dir = build_on_gpu_pool(cpu, repo, sha, settings, timeout=900)
        registry = Registry(settings)
        assert engine_dir.is_relative_to(settings.home / "registry" / "cache")  # fetched, not the worker's dir
        manifest = steps.read_build(engine_dir)
        assert manifest["source"]["repo"] == repo and manifest["source"]["revision"] == sha
        name = steps.model_name(manifest)
        published = steps.find_version(registry, name, manifest["build_id"])
        tags = registry.client.get_model_version(name, published).tags
        assert tags["gate"] == "pending"
        runs = _build_layout_runs(cpu.key)
        assert len(runs) == 1 and runs[0].state.is_completed() and runs[0].work_pool_name == GPU_POOL
        assert tags[FLOW_RUN_TAG] == str(runs[0].id)
        assert str(runs[0].id) in worker.log_text()  # the worker of this test ran it

        # 2. the onboard flow: the GPU layout fails on the worker (unavailable), the CPU layout goes on
        gates = tmp_path / "gates.yaml"
        gates.write_text(yaml.safe_dump(PERMISSIVE_GATES))
        state = onboard(OnboardConfig(repo=repo, revision=sha, targets=["cpu", "a100-80gb"], latency=False,
                                      promote=False, gates=str(gates), serving_timeout_s=0), return_state=True)
        assert state.is_completed(), state.message
        result = state.result()
        by_target = {o.target: o for o in result.layouts if o.status not in ("infeasible", "not selected")}
        gpu = by_target["a100-80gb"]
        assert gpu.status == "failed" and "unavailable" in gpu.reason and "build-layout run" in gpu.reason
        assert by_target["cpu"].status == "reused" and by_target["cpu"].gate == "passed"
        assert result.version == published  # the version the worker published, now judged
        assert registry.client.get_model_version(name, published).tags["gate"] == "passed"
        gpu_runs = _build_layout_runs(gpu.key)
        assert len(gpu_runs) == 1 and gpu_runs[0].state.is_failed() and gpu_runs[0].work_pool_name == GPU_POOL
        assert gpu_runs[0].parent_task_run_id is not None  # a subflow of the onboard run
    finally:
        worker.stop(timeout=30)
        # later tests on this Prefect API must not find a deployment whose pool has no worker left
        _api(lambda c: _delete_deployment(c, build_layout_deployment()))


async def _delete_deployment(client, name: str) -> None:
    deployment = await client.read_deployment_by_name(name)
    await client.delete_deployment(deployment.id)
