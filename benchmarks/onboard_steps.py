"""How long each step of an onboarding takes, fresh and rerun (the idempotency payoff).

    .venv/bin/python benchmarks/onboard_steps.py [--profile quick] [--no-latency]

Publishes the reference model on a loopback mirror (olah) in a temporary ONRAMP_HOME (the
shared cache dir is reused: reference model, olah's venv, cached reference evals), runs the
``onboard`` flow twice on Prefect's ephemeral API and prints the wall time of every task run.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path


def main() -> None:
    from onramp.signals import exit_on_signals

    exit_on_signals()  # SIGTERM stops what the run started (export, latency server) too
    parser = argparse.ArgumentParser()
    parser.add_argument("--profile", default="quick")
    parser.add_argument("--no-latency", action="store_true")
    args = parser.parse_args()

    from onramp.settings import load_settings

    cache = load_settings().cache_dir
    home = Path(tempfile.mkdtemp(prefix="onramp-bench-"))
    os.environ["ONRAMP_HOME"] = str(home)
    os.environ["ONRAMP_CACHE_DIR"] = str(cache)
    from onramp.mirror import MirrorServer, publish
    from onramp.reference import HUB_REPO_ID, make_reference_model
    from onramp.process import free_port

    reference = make_reference_model(cache_dir=cache)
    mirror = MirrorServer(home / "mirror", port=free_port(), venv=cache / "olah-venv", work_dir=home / "olah")
    (home / "mirror").mkdir()
    sha = publish(HUB_REPO_ID, reference, home / "mirror")
    os.environ["ONRAMP_HF_ENDPOINT"] = mirror.url
    with mirror:
        from flows.prefect_env import configure_prefect

        configure_prefect(load_settings(), use_running_server=False)
        from flows.onboard import OnboardConfig, onboard

        for label in ("fresh", "rerun"):
            started = time.monotonic()
            state = onboard(OnboardConfig(repo=HUB_REPO_ID, revision=sha, profile=args.profile,
                                          latency=not args.no_latency, serving_timeout_s=0), return_state=True)
            total = time.monotonic() - started
            print(f"\n{label}: {state.name} in {total:.1f} s (flow run incl. Prefect overhead)")
            for name, seconds in _task_times(state.state_details.flow_run_id):
                print(f"  {name:<28} {seconds:7.1f} s")
            if state.is_completed():
                r = state.result()
                print(f"  builds made {r.builds_made}, evals run {r.evals_run}, version {r.version}")
    sys.stdout.flush()


def _task_times(flow_run_id) -> list[tuple[str, float]]:
    from flows.prefect_api import PrefectAPI

    with PrefectAPI() as api:
        runs = api.task_runs(flow_run_id)
    runs.sort(key=lambda r: r.get("start_time") or r.get("expected_start_time") or "")
    return [(r["name"], float(r.get("total_run_time") or 0)) for r in runs]


if __name__ == "__main__":
    main()
