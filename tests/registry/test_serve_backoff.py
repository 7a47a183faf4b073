"""`onramp serve --registry` (a real process over the int8 OpenVINO engine) when production moves
to a version that cannot load: the old engine keeps serving, the version is retried with
exponential backoff (not on every poll), and /readyz (admin view) and /metrics say so. Swaps by
version refuse a version whose gate failed unless forced."""

from __future__ import annotations

import time

import httpx
import pytest

from builders.manifest import read_manifest
from onramp.reference import PARIS_QUESTION
from registry.client import Registry
from registry.names import registered_name
from serving.auth import create_key
from serving.process import run_onramp_serve

POLL_S = 0.5
MAX_BACKOFF_S = 8.0


def _metric(text: str, name: str, **labels) -> float | None:
    for line in text.splitlines():
        if line.startswith(name + "{") and all(f'{k}="{v}"' in line for k, v in labels.items()):
            return float(line.rsplit(" ", 1)[1])
    return None


def _max_tries(elapsed: float) -> int:
    """The most tries exponential backoff allows in ``elapsed`` seconds (the first one at 0)."""
    tries, t = 0, 0.0
    while t <= elapsed:
        tries += 1
        t += min(POLL_S * 2 ** (tries - 1), MAX_BACKOFF_S)
    return tries


def _until(check, what: str, server, timeout: float = 240.0):
    deadline = time.monotonic() + timeout
    while not (result := check()):
        assert server.proc.poll() is None, f"onramp serve exited: {server.log_text(last=3000)}"
        assert time.monotonic() < deadline, f"{what} within {timeout:.0f} s: {server.log_text(last=2000)}"
        time.sleep(0.2)
    return result


@pytest.mark.slow
def test_broken_production_version_backs_off_and_is_reported(ov_int8_engine, make_engine, tmp_path):
    manifest = read_manifest(ov_int8_engine)
    name = registered_name(manifest.source.repo, manifest.name)  # the registered model: the full repo id
    reg = Registry()
    v1 = reg.register(ov_int8_engine, gate_passed=True)
    broken = make_engine("broken", name=manifest.name, repo=manifest.source.repo)  # a valid manifest, no model
    v2 = reg.register(broken, gate_passed=True)
    v3 = reg.register(ov_int8_engine, gate_passed=False)
    reg.promote(name, v1)
    keys_file = tmp_path / "keys.json"
    user = {"Authorization": f"Bearer {create_key(keys_file, 'alice')}"}
    admin = {"Authorization": f"Bearer {create_key(keys_file, 'ops', admin=True)}"}
    args = ["--registry", "--keys-file", str(keys_file), "--default-max-tokens", "8",
            "--registry-poll", str(POLL_S), "--registry-max-backoff", str(MAX_BACKOFF_S)]

    with run_onramp_serve(args, log=tmp_path / "serve.log") as server:
        url = server.url

        def served() -> str | None:
            models = httpx.get(f"{url}/v1/models", headers=user, timeout=30).json()["data"]
            return next((m["version"] for m in models if m["id"] == name), None)

        def failing() -> dict | None:
            models = httpx.get(f"{url}/readyz", headers=admin, timeout=30).json()["models"]
            return next((m.get("production_failing") for m in models if m["name"] == name), None)

        _until(lambda: served() == v1, f"{name} version {v1} served", server)
        reg.promote(name, v2)
        promoted = time.monotonic()
        _until(lambda: (f := failing()) and f["failures"] >= 5, "5 failed tries of the broken version", server)
        elapsed = time.monotonic() - promoted
        while True:  # a consistent snapshot: no try between the two scrapes
            before = httpx.get(f"{url}/metrics", timeout=30).text
            detail = failing()
            metrics = httpx.get(f"{url}/metrics", timeout=30).text
            if _metric(before, "onramp_swap_failures_total", model=name) == _metric(
                    metrics, "onramp_swap_failures_total", model=name):
                break
        tries = detail["failures"]
        assert detail["version"] == v2 and "could not load" in detail["error"]
        # backing off: far fewer tries than polls, each wait twice the one before, up to the cap
        assert tries <= _max_tries(elapsed) < elapsed / POLL_S, (tries, elapsed)
        assert detail["backoff_s"] == min(POLL_S * 2 ** (tries - 1), MAX_BACKOFF_S)
        assert detail["next_retry_at"] > time.time() - 30
        assert _metric(metrics, "onramp_swap_failures_total", model=name) == tries
        assert _metric(metrics, "onramp_swap_backoff_seconds", model=name) == detail["backoff_s"]
        assert _metric(metrics, "onramp_swap_next_retry_timestamp_seconds", model=name) == detail["next_retry_at"]
        # the old engine keeps serving
        assert served() == v1
        reply = httpx.post(f"{url}/v1/chat/completions", headers=user, timeout=120, json={
            "model": name, "messages": [{"role": "user", "content": PARIS_QUESTION}],
            "temperature": 0})
        assert reply.status_code == 200 and "Paris" in reply.json()["choices"][0]["message"]["content"]
        # without the admin key /readyz says only the state
        public = httpx.get(f"{url}/readyz", timeout=30)
        assert public.json()["models"] == [{"name": name, "state": "ready"}]
        assert "could not load" not in public.text and str(tmp_path) not in public.text

        # a version whose gate failed is refused by a swap unless forced
        swap = f"{url}/admin/models/{name}/swap"
        refused = httpx.post(swap, headers=admin, json={"version": v3}, timeout=300)
        assert refused.status_code == 409, refused.text
        err = refused.json()["error"]
        assert err["param"] == "version" and err["code"] == "gate_not_passed" and '"force": true' in err["message"]
        assert served() == v1
        forced = httpx.post(swap, headers=admin, json={"version": v3, "force": True}, timeout=300)
        assert forced.status_code == 200, forced.text
        assert served() == v3

        # production leaves the broken version: nothing fails any more
        reg.rollback(name)
        _until(lambda: failing() is None, "the failure cleared after the rollback", server)
        metrics = httpx.get(f"{url}/metrics", timeout=30).text
        assert _metric(metrics, "onramp_swap_backoff_seconds", model=name) is None
