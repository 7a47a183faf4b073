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
