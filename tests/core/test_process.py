"""onramp.process: real child processes in their own sessions, health waits, stopping the group."""

from __future__ import annotations

import os
import signal
import socket
import sys
import time

import pytest

from onramp.process import (ChildExited, ChildTimeout, below_500, free_port, port_in_use, start_child, stop_children,
                            wait_healthy)

# A child that starts a grandchild in its group, then serves HTTP (404 everywhere but /ok).
SERVER = """
import http.server, subprocess, sys
subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200 if self.path == "/ok" else 404)
        self.end_headers()
    def log_message(self, *a):
        pass
print("serving", flush=True)
http.server.HTTPServer(("127.0.0.1", int(sys.argv[1])), H).serve_forever()
"""


def _group_gone(pgid: int, timeout: float = 30) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return True
        time.sleep(0.1)
    return False


def test_free_port_is_free_and_port_in_use_sees_a_listener():
    port = free_port()
    assert not port_in_use("127.0.0.1", port)
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", port))
        sock.listen()
        assert port_in_use("127.0.0.1", port)


def test_child_in_its_own_session_becomes_healthy_and_stop_ends_its_group(tmp_path):
    port = free_port()
    child = start_child([sys.executable, "-c", SERVER, str(port)], log=tmp_path / "logs" / "s.log", name="toy")
    try:
        assert os.getpgid(child.proc.pid) == child.proc.pid != os.getpgid(0)  # a session of its own
        seen = []
        wait_healthy([(child, f"http://127.0.0.1:{port}/ok")], timeout=60, interval=0.1, on_ready=seen.append)
        assert seen == [child] and child.alive()
        with pytest.raises(ChildTimeout, match=r"toy \(http://127.0.0.1:\d+/missing\) did not answer within 1 s"):
            child.wait_healthy(f"http://127.0.0.1:{port}/missing", timeout=1, interval=0.1)
        child.wait_healthy(f"http://127.0.0.1:{port}/missing", timeout=30, ready=below_500, interval=0.1)  # a 404
        assert "serving" in child.log_text()
    finally:
        child.stop(timeout=10)
    assert child.proc.returncode == -signal.SIGTERM
    assert _group_gone(child.proc.pid)  # the grandchild went with it


def test_a_child_that_exits_is_reported_with_its_log_tail(tmp_path):
    child = start_child([sys.executable, "-c", "print('one'); print(); print('two: port taken'); raise SystemExit(3)"],
                        log=tmp_path / "x.log", name="toy")
    with pytest.raises(ChildExited) as err:
        child.wait_healthy(f"http://127.0.0.1:{free_port()}/", timeout=60, interval=0.1)
    assert err.value.code == 3 and err.value.tail == "one | two: port taken"
    assert "toy exited with status 3 before it was ready; its log ends: one | two: port taken" in str(err.value)
    assert str(tmp_path / "x.log") in str(err.value)


def test_stop_kills_a_child_that_ignores_sigterm_and_logs_append(tmp_path):
    log = tmp_path / "stubborn.log"
    log.write_text("earlier run\n")
    code = ("import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); print('ready', flush=True); "
            "time.sleep(600)")
    child = start_child([sys.executable, "-c", code], log=log, append=True)
    deadline = time.monotonic() + 60
    while "ready" not in child.log_text() and time.monotonic() < deadline:
        time.sleep(0.1)
    stop_children([child], timeout=1)
    assert child.proc.returncode == -signal.SIGKILL
    assert child.log_text().startswith("earlier run\nready")
    assert child.name == "python" or child.name.startswith("python")
