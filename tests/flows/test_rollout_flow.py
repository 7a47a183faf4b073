"""The `rollout` flow: a one-step canary rollout on a real server, its steps and decision as artifacts."""

from __future__ import annotations

import json
import time

import httpx
import pytest

from registry.client import Registry
from serving.process import run_onramp_serve
from tests.registry.test_rollout import NAME, Load, RoundRobin, _gates, _version


@pytest.mark.slow
def test_rollout_flow_promotes_and_posts_artifacts(prefect_server, ov_int8_engine, onramp_home, tmp_path):
    from prefect.settings import PREFECT_API_URL

    from flows.rollout import rollout_flow

    reg = Registry()
    v1 = reg.register(ov_int8_engine, gate_passed=True)
    v2 = reg.register(ov_int8_engine, gate_passed=True)
    reg.promote(NAME, v1)
    with run_onramp_serve(["--registry", "--no-auth", "--registry-poll", "1"], log=tmp_path / "serve.log") as server:
        deadline = time.monotonic() + 240
        while _version(server.url) != v1:
            assert time.monotonic() < deadline, "the server did not load production"
            time.sleep(0.5)
        load = Load(RoundRobin([("127.0.0.1", int(server.url.rsplit(":", 1)[1]))]), streams=2)
        load.start()
        try:
            gates = _gates(tmp_path / "gates.yaml", ttft_p99_ratio_max=1000, decode_speed_ratio_min=0.01,
                           error_rate_max_increase=0.0, min_requests=1)
            result = rollout_flow(NAME, v2, steps=[50, 100], window_s=8, servers=[server.url], gates=str(gates))
        finally:
            load.stop()
    assert result["decision"] == "promoted", result
    assert load.failures == [], load.failures[:5]
    assert reg.alias_version(NAME, "production") == v2
    arts = httpx.post(f"{PREFECT_API_URL.value()}/artifacts/filter", timeout=15,
                      json={"artifacts": {"key": {"any_": ["rollout-step", "rollout-decision"]}}, "limit": 50}).json()
    kinds = {a["key"] for a in arts}
    assert kinds == {"rollout-step", "rollout-decision"}, kinds
    decision = next(a for a in arts if a["key"] == "rollout-decision")
    assert '"promoted"' in decision["data"]
    assert sum(1 for a in arts if a["key"] == "rollout-step") == 2
    assert json.loads(reg.client.get_model_version(NAME, v2).tags["rollout.decision"])["decision"] == "promoted"
