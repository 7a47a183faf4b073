"""Canary routing in `onramp serve --registry`: the canary alias + weight in the registry, sticky per user."""

from __future__ import annotations

import time

import httpx
import pytest

from onramp.reference import PARIS_QUESTION
from registry.canary import canary_state, clear_canary, set_canary
from registry.client import Registry
from registry.errors import RegistryError
from serving.process import run_onramp_serve
from serving.routing import VERSION_HEADER, bucket
from tests.registry.conftest import SERVE_FROM_REGISTRY

NAME = "huggingfacetb--smollm2-135m-instruct"


def test_bucket_is_stable_and_spread():
    assert bucket("alice") == bucket("alice")
    points = [bucket(f"user-{i}") for i in range(400)]
    assert all(0 <= p < 100 for p in points)
    assert 120 < sum(p < 50 for p in points) < 280  # a fair split, not all on one side


def test_set_canary_refuses_a_bad_weight(ov_int8_engine, onramp_home):
    reg = Registry()
    v1 = reg.register(ov_int8_engine, gate_passed=True)
    with pytest.raises(RegistryError, match="not a percentage"):
        set_canary(reg, NAME, v1, 150)
    set_canary(reg, NAME, v1, 25)
    state = canary_state(reg, NAME)
    assert (state.version, state.weight, state.active) == (v1, 25.0, True)
    clear_canary(reg, NAME)
    assert canary_state(reg, NAME).version is None


def _metric(text: str, series: str, **labels) -> float:
    from prometheus_client.parser import text_string_to_metric_families

    total = 0.0
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == series and all(sample.labels.get(k) == v for k, v in labels.items()):
                total += sample.value
    return total


def _wait(predicate, what: str, server, timeout: float = 240.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert server.proc.poll() is None, f"server exited: {server.log_text(3000)}"
        assert time.monotonic() < deadline, f"timed out waiting for {what}: {server.log_text(2000)}"
        time.sleep(0.5)


def _both_ready(server) -> bool:
    """Production and its canary both live (the canary may load first: readyz is 503 until production is)."""
    r = httpx.get(f"{server.url}/readyz", timeout=10)
    states = {m["name"]: m["state"] for m in r.json()["models"]}
    return r.status_code == 200 and states.get(f"{NAME}@canary") == "ready" and states.get(NAME) == "ready"


@pytest.mark.slow
def test_canary_share_is_sticky_per_user_and_counted_per_version(two_versions, tmp_path):
    from openai import OpenAI

    reg, v1, v2 = two_versions
    set_canary(reg, NAME, v2, 50)
    with run_onramp_serve(SERVE_FROM_REGISTRY, log=tmp_path / "serve.log") as server:
        def weight() -> float:
            return _metric(httpx.get(f"{server.url}/metrics", timeout=10).text, "onramp_canary_weight",
                           model=NAME, version=v2)

        _wait(lambda: weight() == 50 and _both_ready(server), "production and the canary to load", server)
        client = OpenAI(base_url=f"{server.url}/v1", api_key="unused", max_retries=0)

        def ask(user: str) -> str:
            raw = client.chat.completions.with_raw_response.create(
                model=NAME, messages=[{"role": "user", "content": "Hi"}], max_tokens=2, user=user)
            assert raw.parse().model == NAME  # the client never sees the canary's slot name
            return raw.headers[VERSION_HEADER]

        users = [f"user-{i}" for i in range(8)]
        seen = {u: ask(u) for u in users}
        assert seen == {u: (v2 if bucket(u) < 50 else v1) for u in users}
        assert all(ask(u) == seen[u] for u in users[:3])  # sticky
        text = httpx.get(f"{server.url}/metrics", timeout=10).text
        for version in (v1, v2):
            expect = sum(1 for u in users if seen[u] == version) + sum(1 for u in users[:3] if seen[u] == version)
            assert _metric(text, "onramp_version_requests_total", model=NAME, version=version) == expect
            if expect:
                assert _metric(text, "onramp_version_time_to_first_token_seconds_count", model=NAME,
                               version=version) == expect
        clear_canary(reg, NAME)
        _wait(lambda: weight() == 0 and f"{NAME}@canary" not in httpx.get(
            f"{server.url}/readyz", timeout=10).text, "the canary to go", server)
        assert {ask(u) for u in users} == {v1}


@pytest.mark.slow
def test_shadow_mirrors_greedy_production_requests_to_the_canary(two_versions, tmp_path):
    from openai import OpenAI

    reg, v1, v2 = two_versions
    set_canary(reg, NAME, v2, 0, shadow=100)  # no traffic to the canary; every greedy request mirrored
    with run_onramp_serve(SERVE_FROM_REGISTRY, log=tmp_path / "serve.log") as server:
        def metrics() -> str:
            return httpx.get(f"{server.url}/metrics", timeout=10).text

        _wait(lambda: _both_ready(server), "production and the canary to load", server)
        client = OpenAI(base_url=f"{server.url}/v1", api_key="unused", max_retries=0)
        for i in range(3):
            # a question whose first 8 greedy tokens have top-2 margins >= 0.56 nats: the canary runs in
            # another batch, and a near tie (the 5th token of "Name three colours." is 0.12 nats) can flip
            raw = client.chat.completions.with_raw_response.create(
                model=NAME, messages=[{"role": "user", "content": PARIS_QUESTION}], max_tokens=8,
                temperature=0, user=f"user-{i}")
            assert raw.headers[VERSION_HEADER] == v1  # the client only sees production's answer
        client.chat.completions.create(model=NAME, messages=[{"role": "user", "content": "Hi"}], max_tokens=4,
                                       temperature=1.0)  # sampled: not comparable, not mirrored
        labels = {"model": NAME, "production": v1, "canary": v2}
        _wait(lambda: _metric(metrics(), "onramp_shadow_requests_total", **labels) == 3, "3 shadowed", server)
        text = metrics()
        # the same engine, greedy: the canary's first tokens continue production's answer
        assert _metric(text, "onramp_shadow_matched_prefix_total", **labels) / 3 > 0.5
        assert _metric(text, "onramp_version_requests_total", model=NAME, version=v2) == 0
