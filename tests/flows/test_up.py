"""``onramp up``: real Prefect, MLflow and API servers, the pools, deployments, worker and trigger."""

from __future__ import annotations

import json
import time

import httpx
import pytest

from flows.errors import UpError
from flows.up import Up, settings_env
from onramp.settings import load_settings
from tests.conftest import free_port


def _authed(auth: str) -> httpx.Client:
    """An HTTP client for a Prefect API with basic auth (what the raw readers in flows send)."""
    from flows.prefect_env import auth_headers

    return httpx.Client(headers=auth_headers(auth))


def _ports(monkeypatch) -> None:
    for var in ("ONRAMP_PREFECT_PORT", "ONRAMP_MLFLOW_PORT", "ONRAMP_API_PORT"):
        monkeypatch.setenv(var, str(free_port()))


def test_settings_env_round_trips(monkeypatch):
    monkeypatch.setenv("ONRAMP_WATCH_REPOS", "a/b,c/d")
    settings = load_settings(webhook_secret="s")
    env = settings_env(settings)
    assert env["ONRAMP_WATCH_REPOS"] == "a/b,c/d" and env["ONRAMP_WEBHOOK_SECRET"] == "s"
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    assert load_settings() == settings


def test_up_json_is_created_private(monkeypatch):
    import os

    from flows.prefect_env import UP_STATE, write_up_state

    settings = load_settings()
    old = os.umask(0o022)  # the usual umask: plain files would be world-readable
    try:
        path = settings.home / UP_STATE
        path.write_text("{}")  # an older, world-readable up.json is replaced by a private one
        assert path.stat().st_mode & 0o077
        write_up_state(settings, {"api_key": "secret"})
    finally:
        os.umask(old)
    assert path.stat().st_mode & 0o777 == 0o600
    assert json.loads(path.read_text()) == {"api_key": "secret"}
    assert [p.name for p in settings.home.iterdir()] == [UP_STATE]  # no temp file left


def test_busy_port_is_refused_with_the_flag_to_use(monkeypatch):
    import socket

    _ports(monkeypatch)
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        monkeypatch.setenv("ONRAMP_API_PORT", str(sock.getsockname()[1]))
        with pytest.raises(UpError, match="--api-port"):
            Up(load_settings(), progress=lambda _: None).start()


@pytest.mark.slow
def test_up_starts_everything_and_the_trigger_turns_an_event_into_an_onboard_run(monkeypatch, hub_mirror):
    _ports(monkeypatch)
    monkeypatch.setenv("ONRAMP_HF_ENDPOINT", hub_mirror.url)
    settings = load_settings()
    up = Up(settings, progress=lambda _: None)
    state = up.start()
    try:
        saved = json.loads((settings.home / "up.json").read_text())
        assert saved["api_key"] == state["api_key"] and (settings.home / "up.json").stat().st_mode & 0o077 == 0
        assert httpx.get(f"{state['prefect_api']}/health", timeout=10).status_code == 200
        assert httpx.get(f"{state['mlflow']}/health", timeout=10).status_code == 200
        models = httpx.get(f"{state['api']}/v1/models", headers={"Authorization": f"Bearer {state['api_key']}"},
                           timeout=10)
        assert models.status_code == 200 and models.json()["data"] == []
        assert httpx.get(f"{state['api']}/v1/models", timeout=10).status_code == 401  # auth on by default
        for name in ("prefect-server", "mlflow-server", "api-server", "worker-cpu"):
            assert (settings.home / "logs" / f"{name}.log").is_file()

        api = state["prefect_api"]
        assert httpx.post(f"{api}/work_pools/filter", json={}, timeout=10).status_code == 401  # Prefect's auth is on
        prefect = _authed(state["prefect_auth"])
        pools = {p["name"]: p["type"] for p in prefect.post(f"{api}/work_pools/filter", json={}, timeout=10).json()}
        assert pools.get("cpu") == "process" and pools.get("gpu") == "process"
        deployments = {d["name"]: d for d in prefect.post(f"{api}/deployments/filter", json={}, timeout=10).json()}
        assert deployments["onboard"]["work_pool_name"] == "cpu"
        assert deployments["build-layout"]["work_pool_name"] == "gpu"
        watch_schedules = deployments["watch"]["schedules"]
        assert watch_schedules and watch_schedules[0]["schedule"]["interval"] == settings.watch_interval_s

        # an event as the watcher or the webhook emits it -> the trigger creates an onboard run
        repo, sha = "nobody/not-a-model", "f" * 40
        event = {"occurred": time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime()), "event": "onramp.model.revision",
                 "resource": {"prefect.resource.id": f"huggingface.model.{repo}"},
                 "payload": {"repo": repo, "sha": sha, "previous": None, "source": "poll"},
                 "id": "0198f8a2-0000-7000-8000-000000000001"}
        assert prefect.post(f"{api}/events", json=[event], timeout=10).status_code in (200, 202, 204)
        run = None
        deadline = time.monotonic() + 120
        while run is None and time.monotonic() < deadline:
            runs = prefect.post(f"{api}/flow_runs/filter", json={"deployments": {"id": {
                "any_": [deployments["onboard"]["id"]]}}}, timeout=10).json()
            run = next((r for r in runs if r["parameters"].get("config", {}).get("repo") == repo), None)
            time.sleep(1)
        assert run is not None, "the trigger did not create an onboard flow run"
        assert run["parameters"]["config"]["revision"] == sha
        # the cpu worker runs it (our flow code, in its own process): the repo is not on the Hub
        while time.monotonic() < deadline + 180 and run["state"]["type"] not in ("FAILED", "COMPLETED", "CRASHED"):
            time.sleep(2)
            run = prefect.get(f"{api}/flow_runs/{run['id']}", timeout=10).json()
        assert run["state"]["type"] == "FAILED", run["state"]
        assert "nobody/not-a-model" in run["state"]["message"] and "404" in run["state"]["message"]
    finally:
        pids = [c.proc.pid for c in up.children if c.proc]
        up.stop()
    assert not (settings.home / "up.json").exists()
    import os

    for pid in pids:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)


@pytest.mark.slow
def test_onramp_up_process_requires_prefect_auth_and_sigterm_leaves_no_child(monkeypatch, tmp_path):
    """`onramp up` as a real process: its Prefect server refuses calls without the auth string of
    this start (401) and accepts its clients (the CLI finds it in up.json); `kill PID` (SIGTERM)
    stops every service it started."""
    import base64
    import os
    import signal
    import subprocess
    import sys

    from tests.conftest import descendants, kill_all, left_running

    _ports(monkeypatch)
    settings = load_settings()
    up_json = settings.home / "up.json"
    proc = subprocess.Popen([sys.executable, "-m", "onramp", "up"], stdout=subprocess.DEVNULL,
                            stderr=open(tmp_path / "up.err", "wb"), env={**os.environ, "PYTHONUNBUFFERED": "1"})
    children = []
    try:
        deadline = time.monotonic() + 540  # generous: four servers and the deployments on a loaded machine
        while not up_json.exists():
            assert proc.poll() is None, (tmp_path / "up.err").read_text()[-3000:]
            assert time.monotonic() < deadline, "onramp up did not finish starting"
            time.sleep(1)
        state = json.loads(up_json.read_text())
        assert up_json.stat().st_mode & 0o777 == 0o600
        auth, api = state["prefect_auth"], state["prefect_api"]
        assert auth.startswith("onramp:") and len(auth) > 30
        assert httpx.get(f"{api}/health", timeout=10).status_code == 200  # probes stay open
        for headers in ({}, {"Authorization": "Basic " + base64.b64encode(b"onramp:wrong").decode()}):
            resp = httpx.post(f"{api}/flows/filter", json={}, headers=headers, timeout=10)
            assert resp.status_code == 401, resp.text
        assert _authed(auth).post(f"{api}/flows/filter", json={}, timeout=10).status_code == 200
        # a client the CLI configures from up.json (here `onramp watch`: it runs a flow on that server)
        env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
        watch = subprocess.run([sys.executable, "-m", "onramp", "watch"], env=env, capture_output=True, text=True,
                               timeout=300)
        assert watch.returncode == 0, watch.stderr[-3000:]
        flows = _authed(auth).post(f"{api}/flows/filter", json={}, timeout=10).json()
        assert "watch" in {f["name"] for f in flows}

        children = descendants(proc.pid)
        assert len(children) >= 4, children  # prefect, mlflow, api and worker, and what they started
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=120)
        assert left_running(children) == [], "services outlived `onramp up`"
        assert not up_json.exists()
    finally:
        kill_all([proc, *children])
        proc.wait(timeout=30)
