"""Run a server as a child process and wait until it answers: ``onramp serve`` (the flows' latency
benchmark, the tests) or any other HTTP server with a health path (``mlflow server`` in tests).

    with run_onramp_serve(["--engine", f"m={engine_dir}", "--keys-file", keys], log=path) as srv:
        httpx.get(f"{srv.url}/v1/models", ...)

The child is supervised by :mod:`onramp.process`: its own session (a process group), so
``stop()`` ends it and anything it started; its output goes to a log file, whose last lines are
quoted when it exits before it is ready.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from onramp.process import Child, ChildExited, ChildStartError, ChildTimeout, free_port, start_child
from serving.errors import ServingError

__all__ = ["ServerProcess", "ServerStartError", "free_port", "run_onramp_serve", "spawn_server"]


class ServerStartError(ServingError, ChildStartError):
    """A server child process exited, or did not answer its health path in time."""


@dataclass
class ServerProcess(Child):
    """A server running as a child process (its own process group) at ``url``, logging to ``log``."""

    url: str = ""

    @property
    def what(self) -> str:
        return self.name

    def wait_ready(self, *, path: str = "/readyz", timeout: float = 300.0, interval: float = 0.5) -> None:
        """Poll ``GET {url}{path}`` until it answers 200. Raises :class:`ServerStartError` (quoting
        the log's tail) if the process exits first or ``timeout`` seconds pass."""
        try:
            self.wait_healthy(f"{self.url}{path}", timeout=timeout, interval=interval)
        except ChildExited as exc:
            raise ServerStartError(exc.what, exc.fix) from None
        except ChildTimeout:
            raise ServerStartError(f"{self.name} did not answer {path} within {timeout:.0f} s; "
                                   f"its log ends: {self.log_tail()}",
                                   f"the machine may be overloaded (retry), or see {self.log}") from None


def spawn_server(cmd: Sequence[str], *, url: str, log: Path, env: Mapping[str, str] | None = None,
                 cwd: Path | None = None, what: str | None = None) -> ServerProcess:
    """Start ``cmd`` in its own process group, stdout and stderr to ``log``; does not wait."""
    child = start_child(cmd, log=log, name=what, env=env, cwd=cwd)
    return ServerProcess(name=child.name, proc=child.proc, log=child.log, started=child.started, url=url)


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
