"""serving.process: a child server that exits or never answers gets a clear error; stop() ends it."""

from __future__ import annotations

import sys

import pytest

from serving.process import ServerStartError, free_port, run_onramp_serve, spawn_server


def test_a_server_that_exits_is_reported_with_its_log_tail(tmp_path):
    server = spawn_server([sys.executable, "-c", "print('cannot bind: port taken'); raise SystemExit(3)"],
                          url=f"http://127.0.0.1:{free_port()}", log=tmp_path / "s.log", what="toy server")
    with pytest.raises(ServerStartError) as err:
        server.wait_ready(timeout=30, interval=0.1)
    message = str(err.value)
    assert "toy server exited with status 3" in message and "cannot bind: port taken" in message
    assert "Traceback" not in message


def test_a_server_that_never_answers_times_out_and_stop_ends_it(tmp_path):
    port = free_port()
    server = spawn_server([sys.executable, "-m", "http.server", str(port), "--bind", "127.0.0.1"],
                          url=f"http://127.0.0.1:{port}", log=tmp_path / "s.log", what="http.server")
    try:
        server.wait_ready(path="/", timeout=30, interval=0.1)  # it does answer /
        with pytest.raises(ServerStartError, match=r"did not answer /readyz within 1 s"):
            server.wait_ready(path="/readyz", timeout=1, interval=0.1)  # 404 there
    finally:
        server.stop(timeout=10)
    assert server.proc.poll() is not None


def test_onramp_serve_with_a_bad_engine_dir_fails_fast(tmp_path):
    with pytest.raises(ServerStartError, match="onramp serve exited") as err:
        with run_onramp_serve(["--engine", f"m={tmp_path / 'nope'}", "--no-auth"], log=tmp_path / "serve.log",
                              timeout=120):
            pass
    assert str(tmp_path / "nope") in str(err.value) or "nope" in (tmp_path / "serve.log").read_text()
