"""Run a server as a child process and wait until it answers: ``onramp serve`` (the flows' latency
benchmark, the tests) or any other HTTP server with a health path (``mlflow server`` in tests).

    with run_onramp_serve(["--engine", f"m={engine_dir}", "--keys-file", keys], log=path) as srv:
        httpx.get(f"{srv.url}/v1/models", ...)

The child gets its own session (a process group), so ``stop()`` ends it and anything it started;
its output goes to a log file, whose last lines are quoted when it exits before it is ready.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx

from serving.errors import ServingError

__all__ = ["ServerProcess", "ServerStartError", "free_port", "run_onramp_serve", "spawn_server"]


class ServerStartError(ServingError):
    """A server child process exited, or did not answer its health path in time."""


def free_port(host: str = "127.0.0.1") -> int:
    """A port that is free on ``host`` right now."""
    with socket.socket() as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


@dataclass
class ServerProcess:
    """A server running as a child process (its own process group), logging to ``log``."""

    url: str
    proc: subprocess.Popen
    log: Path
    what: str = "server"

    def log_text(self, last: int | None = None) -> str:
        try:
            text = self.log.read_text(errors="replace")
        except OSError:
            return ""
        return text if last is None else text[-last:]

    def wait_ready(self, *, path: str = "/readyz", timeout: float = 300.0, interval: float = 0.5) -> None:
        """Poll ``GET {url}{path}`` until it answers 200. Raises :class:`ServerStartError` (quoting
        the log's tail) if the process exits first or ``timeout`` seconds pass."""
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                raise ServerStartError(f"{self.what} exited with status {self.proc.returncode} before it was ready; "
                                       f"its log ends: {self._tail()}",
                                       f"see {self.log}")
            try:
                if httpx.get(f"{self.url}{path}", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise ServerStartError(f"{self.what} did not answer {path} within {timeout:.0f} s; "
                                       f"its log ends: {self._tail()}",
                                       f"the machine may be overloaded (retry), or see {self.log}")
            time.sleep(interval)

    def stop(self, timeout: float = 30.0) -> None:
        """SIGTERM the process group, SIGKILL it after ``timeout`` seconds."""
        if self.proc.poll() is None:
            self._signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self._signal(signal.SIGKILL)
                self.proc.wait(timeout=10)

    def _signal(self, sig: int) -> None:
        try:
            os.killpg(self.proc.pid, sig)
        except ProcessLookupError:
            pass

    def _tail(self) -> str:
        lines = self.log_text(last=4000).strip().splitlines()
        return " | ".join(lines[-3:])[-600:] if lines else "(no output)"


def spawn_server(cmd: Sequence[str], *, url: str, log: Path, env: Mapping[str, str] | None = None,
                 cwd: Path | None = None, what: str | None = None) -> ServerProcess:
    """Start ``cmd`` in its own process group, stdout and stderr to ``log``; does not wait."""
    log = Path(log)
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("wb") as out:
        proc = subprocess.Popen(list(cmd), stdout=out, stderr=subprocess.STDOUT, cwd=cwd,
                                env=dict(env) if env is not None else None, start_new_session=True)
    return ServerProcess(url=url, proc=proc, log=log, what=what or Path(cmd[0]).name)


@contextmanager
def run_onramp_serve(args: Sequence[str], *, log: Path, env: Mapping[str, str] | None = None,
                     host: str = "127.0.0.1", port: int | None = None,
                     timeout: float = 300.0) -> Iterator[ServerProcess]:
    """``onramp serve ARGS --host HOST --port PORT`` (a free port by default) as a child process,
    ready (``/readyz`` answers 200) when the block starts, stopped when it ends."""
    port = port or free_port(host)
    cmd = [sys.executable, "-m", "onramp", "serve", *args, "--host", host, "--port", str(port)]
    server = spawn_server(cmd, url=f"http://{host}:{port}", log=log, env=env, what="onramp serve")
    try:
        server.wait_ready(timeout=timeout)
        yield server
    finally:
        server.stop()
