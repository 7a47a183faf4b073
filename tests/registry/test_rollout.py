"""`onramp rollout` on two `onramp serve --registry` replicas behind a round-robin proxy, under load."""

from __future__ import annotations

import asyncio
import contextlib
import json
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest

from evals.gates import RolloutRules
from evals.rollout import Stats, judge, parse_steps
from registry.client import Registry
from serving.process import run_onramp_serve
from serving.routing import VERSION_HEADER
from tests.conftest import free_port
from tests.registry.conftest import SERVE_FROM_REGISTRY

NAME = "huggingfacetb--smollm2-135m-instruct"


def test_parse_steps_and_judge():
    assert parse_steps("5,25,100") == [5, 25, 100]
    for bad in ("5,200", "25,5,100", "5,25", "x"):
        with pytest.raises(Exception, match="--steps"):
            parse_steps(bad)
    rules = RolloutRules(error_rate_max_increase=0.01, decode_speed_ratio_min=0.8, min_requests=2)
    prod = Stats(requests=10, ttft_buckets={0.1: 10, float("inf"): 10}, itl_sum=1.0, itl_count=100)
    slow = Stats(requests=4, ttft_buckets={0.1: 4, float("inf"): 4}, itl_sum=1.0, itl_count=50)
    failed = {c.metric for c in judge(slow, prod, rules) if not c.passed}
    assert failed == {"decode_speed_ratio"}
    broken = Stats(requests=4, errors=1, ttft_buckets={0.1: 4, float("inf"): 4}, itl_sum=1.0, itl_count=100)
    assert {c.metric for c in judge(broken, prod, rules) if not c.passed} == {"error_rate_increase"}
    assert all(c.passed for c in judge(Stats(requests=1, itl_sum=9, itl_count=1), prod, rules))  # too few
    strict = RolloutRules(shadow_agreement_min=0.9)
    disagree = Stats(requests=4, itl_sum=1.0, itl_count=100, shadow_requests=4, shadow_matched=2)
    assert {c.metric for c in judge(disagree, prod, strict) if not c.passed} == {"shadow_agreement"}


class RoundRobin:
    """A TCP proxy on loopback: each new connection goes to the next backend."""

    def __init__(self, backends: list[tuple[str, int]]):
        self.backends, self.i, self.port = backends, 0, free_port()

    async def _pipe(self, reader, writer):
        with contextlib.suppress(Exception):
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        with contextlib.suppress(Exception):
            writer.close()

    async def _handle(self, reader, writer):
        host, port = self.backends[self.i % len(self.backends)]
        self.i += 1
        up_reader, up_writer = await asyncio.open_connection(host, port)
        await asyncio.gather(self._pipe(reader, up_writer), self._pipe(up_reader, writer))

    async def serve(self, stop: asyncio.Event):
        server = await asyncio.start_server(self._handle, "127.0.0.1", self.port)
        async with server:
            await stop.wait()


class Load:
    """A proxy and a few concurrent chat streams through it, in a thread, until stopped."""

    def __init__(self, proxy: RoundRobin, streams: int = 3):
        self.proxy, self.streams = proxy, streams
        self.ok, self.failures, self.versions, self.max_tokens, self.prompt = 0, [], {}, 4, "Hi"
        self._stop = threading.Event()
        self._thread = threading.Thread(target=lambda: asyncio.run(self._main()), daemon=True)

    def start(self):
        self._thread.start()

    def stop(self):
        self._stop.set()
        self._thread.join(timeout=300)

    async def _worker(self, w: int):
        from openai import AsyncOpenAI

        n = 0
        while not self._stop.is_set():
            n += 1
            async with httpx.AsyncClient(limits=httpx.Limits(max_keepalive_connections=0), timeout=120) as http:
                client = AsyncOpenAI(base_url=f"http://127.0.0.1:{self.proxy.port}/v1", api_key="unused",
                                     http_client=http, max_retries=0)
                try:
                    async with client.chat.completions.with_streaming_response.create(
                            model=NAME, messages=[{"role": "user", "content": self.prompt}], max_tokens=self.max_tokens,
                            stream=True, user=f"user-{w}-{n}", extra_body={"ignore_eos": True}) as raw:
                        version = raw.headers.get(VERSION_HEADER)
                        text = await raw.text()
                    assert "[DONE]" in text and '"error"' not in text, text[-300:]
                    self.ok += 1
                    self.versions[version] = self.versions.get(version, 0) + 1
                except Exception as exc:  # noqa: BLE001 - every failure is recorded and asserted on
                    self.failures.append(f"{type(exc).__name__}: {exc}")

    async def _main(self):
        stop = asyncio.Event()
        proxy = asyncio.create_task(self.proxy.serve(stop))
        await asyncio.sleep(0.2)
        await asyncio.gather(*(self._worker(w) for w in range(self.streams)))
        stop.set()
        await proxy


def _version(url: str) -> str | None:
    with contextlib.suppress(httpx.HTTPError):
        for card in httpx.get(f"{url}/v1/models", timeout=10).json()["data"]:
            if card["id"] == NAME:
                return card["version"]
    return None


def _gates(path: Path, **rules) -> Path:
    path.write_text(json.dumps({"version": "test", "rollout": rules}))  # JSON is YAML
    return path


def _rollout_cli(version: str, servers: list[str], gates: Path, steps: str, window: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "onramp", "rollout", NAME, version, "--steps", steps, "--window", window,
           "--gates", str(gates)]
    for s in servers:
        cmd += ["--server", s]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=600)


@pytest.mark.slow
def test_rollout_on_two_replicas_under_load_promotes_with_no_failures(two_versions, tmp_path):
    reg, v1, v2 = two_versions
    with run_onramp_serve(SERVE_FROM_REGISTRY, log=tmp_path / "a.log") as a, \
            run_onramp_serve(SERVE_FROM_REGISTRY, log=tmp_path / "b.log") as b:
        servers = [a.url, b.url]
        for s in servers:
            deadline = time.monotonic() + 240
            while _version(s) != v1:
                assert time.monotonic() < deadline, "replica did not load production"
                time.sleep(0.5)
        load = Load(RoundRobin([(s.split(":")[1][2:], int(s.rsplit(":", 1)[1])) for s in servers]))
        load.start()
        try:
            gates = _gates(tmp_path / "gates.yaml", ttft_p99_ratio_max=1000, decode_speed_ratio_min=0.01,
                           error_rate_max_increase=0.0, min_requests=2)
            done = _rollout_cli(v2, servers, gates, "5,100", "12s")
            assert done.returncode == 0, done.stdout + done.stderr
            assert "promoted" in done.stdout
            for s in servers:  # both replicas follow production to v2, and the canary goes away
                deadline = time.monotonic() + 240
                while _version(s) != v2 or f"{NAME}@canary" in httpx.get(f"{s}/readyz", timeout=10).text:
                    assert time.monotonic() < deadline, "replica did not move to v2"
                    time.sleep(0.5)
            time.sleep(2)
        finally:
            load.stop()
    assert load.failures == [], load.failures[:5]
    assert load.ok >= 10 and load.versions.get(v2, 0) > 0 and load.versions.get(v1, 0) > 0, load.versions
    assert reg.alias_version(NAME, "production") == v2 and reg.alias_version(NAME, "canary") is None
    tags = reg.client.get_model_version(NAME, v2).tags
    assert json.loads(tags["rollout.decision"])["decision"] == "promoted"
    assert json.loads(tags["rollout.step.2"])["weight"] == 100


def _throttled_copy(engine: Path, dest: Path) -> Path:
    """The engine with one inference thread and a prefill of one token per step (its manifest's
    runtime; the weights are the same): a build whose runtime settings make it slow. One thread alone
    was not measurably slower on the loaded 2-core test machine (decode 12.2 vs 9.0 tok/s)."""
    from builders.manifest import read_manifest
    from evals.tune import engine_copy, with_value

    runtime = with_value(read_manifest(engine).runtime.model_dump(), "threads", 1)
    return engine_copy(engine, with_value(runtime, "max_num_batched_tokens", 1), dest)


@pytest.mark.slow
def test_a_throttled_canary_is_rolled_back_naming_the_metric(ov_int8_engine, onramp_home, tmp_path):
    reg = Registry()
    v1 = reg.register(ov_int8_engine, gate_passed=True)
    v2 = reg.register(_throttled_copy(ov_int8_engine, tmp_path / "throttled"), name=NAME, gate_passed=True)
    reg.promote(NAME, v1)
    with run_onramp_serve(SERVE_FROM_REGISTRY, log=tmp_path / "a.log") as a:
        deadline = time.monotonic() + 240
        while _version(a.url) != v1:
            assert time.monotonic() < deadline, "the server did not load production"
            time.sleep(0.5)
        load = Load(RoundRobin([("127.0.0.1", int(a.url.rsplit(":", 1)[1]))]), streams=3)
        load.prompt = "Summarize in one line: " + " ".join(["the quick brown fox jumps over the lazy dog"] * 8)
        load.start()
        try:  # a long prompt: the canary's prefill takes one step per token, production's one step
            gates = _gates(tmp_path / "gates.yaml", ttft_p99_ratio_max=1.5, decode_speed_ratio_min=0.01,
                           error_rate_max_increase=0.0, min_requests=2)
            done = _rollout_cli(v2, [a.url], gates, "50,100", "20s")
        finally:
            load.stop()
        assert done.returncode == 1, done.stdout + done.stderr
        assert "rolled back: ttft_p99_ratio breached" in done.stdout, done.stdout + done.stderr
        deadline = time.monotonic() + 120
        while f"{NAME}@canary" in httpx.get(f"{a.url}/readyz", timeout=10).text:
            assert time.monotonic() < deadline, "the canary was not unloaded"
            time.sleep(0.5)
    assert load.failures == [], load.failures[:5]
    assert reg.alias_version(NAME, "production") == v1 and reg.alias_version(NAME, "canary") is None
    tags = reg.client.get_model_version(NAME, v2).tags
    decision = json.loads(tags["rollout.decision"])
    assert decision["decision"] == "rolled_back" and decision["metric"] == "ttft_p99_ratio"
    step = json.loads(tags["rollout.step.1"])  # rolled back at the first step, 50 %
    ratio = next(c for c in step["checks"] if c["metric"] == "ttft_p99_ratio")
    assert not ratio["passed"] and ratio["canary"] > 1.5, step
    assert "rollout.step.2" not in tags
