"""A parent told to stop (SIGTERM, as `kill PID` sends, or SIGINT) stops its children: nothing is left."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import httpx
import pytest

from onramp.mirror import port_in_use
from tests.conftest import descendants, free_port, kill_all, left_running


def _wait_answering(url: str, proc: subprocess.Popen, timeout: float = 300.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        assert proc.poll() is None, f"the parent exited early ({proc.returncode}): {proc.stderr.read()[-2000:]}"
        try:
            httpx.get(url, timeout=2)
            return
        except httpx.HTTPError:
            assert time.monotonic() < deadline, f"{url} did not answer within {timeout:.0f} s"
            time.sleep(0.3)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_mirror_serve_stops_olah(sig, tmp_path, test_cache):
    port = free_port()
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "onramp", "mirror", "serve", "--port", str(port),
                             "--dir", str(tmp_path / "mirror")], env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    children = []
    try:
        _wait_answering(f"http://127.0.0.1:{port}/api/models/a/b/revision/main", proc)
        children = descendants(proc.pid)
        assert children, "olah should be a child of onramp mirror serve"
        proc.send_signal(sig)
        proc.wait(timeout=90)
        assert left_running(children) == [], "children outlived `onramp mirror serve`"
        assert not port_in_use("127.0.0.1", port)
    finally:
        kill_all([proc, *children])
        proc.wait(timeout=30)


SERVER_PARENT = """
import sys, time
from pathlib import Path
from onramp.signals import exit_on_signals
from serving.process import spawn_server

exit_on_signals()
port, log = sys.argv[1], Path(sys.argv[2])
server = spawn_server([sys.executable, "-m", "http.server", port, "--bind", "127.0.0.1"],
                      url=f"http://127.0.0.1:{port}", log=log, what="http.server")
try:
    server.wait_ready(path="/", timeout=120)
    print("ready", flush=True)
    while True:
        time.sleep(1)
finally:
    server.stop()
"""


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGHUP], ids=["SIGTERM", "SIGHUP"])
def test_a_serving_process_user_stops_its_server(sig, tmp_path):
    """The pattern of benchmarks/serving_bench.py and the flows' latency server: exit_on_signals() +
    serving.process; the server child (its own session) is stopped when the parent is told to."""
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-c", SERVER_PARENT, str(port), str(tmp_path / "server.log")],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    children = []
    try:
        assert proc.stdout.readline().strip() == "ready", proc.stderr.read()[-2000:]
        children = descendants(proc.pid)
        assert children
        proc.send_signal(sig)
        assert proc.wait(timeout=90) == 128 + sig
        assert left_running(children) == []
        assert not port_in_use("127.0.0.1", port)
    finally:
        kill_all([proc, *children])
        proc.wait(timeout=30)
