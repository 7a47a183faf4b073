"""The one child-process supervisor of onramp: servers started by ``onramp serve`` callers,
``onramp up``, the Hub mirror and the tests.

- :func:`start_child` starts a command in its own session (a process group: a Ctrl-C in the
  terminal reaches the parent only, and stopping the group ends everything the child started),
  its stdout and stderr going to a log file;
- :func:`wait_healthy` polls each child's health URL until it answers, raising
  :class:`ChildExited` (quoting the log's last lines) if a child exits first, or
  :class:`ChildTimeout` when the time is up;
- :func:`stop_children` sends SIGTERM to each group, then SIGKILL to those still running after
  the timeout;
- :func:`free_port` and :func:`port_in_use` for picking and checking loopback ports.

Callers turn :class:`ChildStartError` into their own error (``ServerStartError``, ``UpError``,
``MirrorError``) when they want their own words.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from onramp.errors import OnrampError

__all__ = ["Child", "ChildExited", "ChildStartError", "ChildTimeout", "any_answer", "answers", "below_500",
           "free_port", "ok_200", "port_in_use", "start_child", "stop_children", "wait_healthy"]

log = logging.getLogger(__name__)

Ready = Callable[[int], bool]  # is this HTTP status an answer of a ready server?


def ok_200(status: int) -> bool:
    return status == 200


def any_answer(status: int) -> bool:
    return True


def below_500(status: int) -> bool:
    return status < 500


def free_port(host: str = "127.0.0.1") -> int:
    """A port that is free on ``host`` right now."""
    with socket.socket() as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def port_in_use(host: str, port: int) -> bool:
    """Whether something listens on (or holds) ``host:port``."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return True
    return False


@dataclass
class Child:
    """A command running in its own process group, logging to ``log``."""

    name: str
    proc: subprocess.Popen
    log: Path
    started: float = field(default_factory=time.monotonic)

    def alive(self) -> bool:
        return self.proc.poll() is None

    def log_text(self, last: int | None = None) -> str:
        """The log (its last ``last`` characters); "" when there is none."""
        try:
            text = self.log.read_text(errors="replace")
        except OSError:
            return ""
        return text if last is None else text[-last:]

    def log_tail(self, lines: int = 3) -> str:
        """The last non-blank lines of the log, on one line (at most 600 characters)."""
        text = [ln for ln in self.log_text(last=8000).splitlines() if ln.strip()]
        return " | ".join(text[-lines:])[-600:] or "(no output)"

    def signal(self, sig: int) -> None:
        """Send ``sig`` to the child's whole process group."""
        try:
            os.killpg(self.proc.pid, sig)
        except ProcessLookupError:
            pass

    def wait_healthy(self, url: str, *, timeout: float, interval: float = 0.5, ready: Ready = ok_200) -> None:
        wait_healthy([(self, url)], timeout=timeout, interval=interval, ready=ready)

    def stop(self, timeout: float = 30.0) -> None:
        stop_children([self], timeout=timeout)


class ChildStartError(OnrampError):
    """A child exited before it was ready, or did not answer its health URL in time."""


class ChildExited(ChildStartError):
    def __init__(self, child: Child):
        self.child, self.code, self.tail = child, child.proc.returncode, child.log_tail()
        super().__init__(f"{child.name} exited with status {self.code} before it was ready; its log ends: {self.tail}",
                         f"see {child.log}")


class ChildTimeout(ChildStartError):
    def __init__(self, pending: Sequence[tuple[Child, str]], timeout: float):
        self.pending, self.timeout = list(pending), timeout
        names = ", ".join(f"{c.name} ({url})" for c, url in pending)
        tails = "; ".join(f"{c.name}'s log ends: {c.log_tail()}" for c, _ in pending)
        super().__init__(f"{names} did not answer within {timeout:.0f} s; {tails}",
                         "the machine may be overloaded (retry), or see " + ", ".join(str(c.log) for c, _ in pending))


def start_child(cmd: Sequence[str], *, log: Path, name: str | None = None, env: Mapping[str, str] | None = None,
                cwd: Path | str | None = None, append: bool = False) -> Child:
    """Start ``cmd`` in its own session, stdout and stderr to ``log`` (appended to with
    ``append``, else truncated); does not wait."""
    log = Path(log)
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("ab" if append else "wb") as out:
        proc = subprocess.Popen(list(cmd), stdout=out, stderr=subprocess.STDOUT, cwd=cwd,
                                env=dict(env) if env is not None else None, start_new_session=True)
    return Child(name=name or Path(cmd[0]).name, proc=proc, log=log)


def answers(url: str, ready: Ready = ok_200, timeout: float = 3.0) -> bool:
    """Whether ``GET url`` gets an HTTP answer that ``ready`` accepts."""
    import httpx

    try:
        return ready(httpx.get(url, timeout=timeout).status_code)
    except httpx.HTTPError:
        return False


def wait_healthy(checks: Iterable[tuple[Child, str]], *, timeout: float, interval: float = 0.5,
                 ready: Ready = ok_200, on_ready: Callable[[Child], None] | None = None) -> None:
    """Poll each ``(child, health URL)`` until the URL answers with a status ``ready`` accepts
    (``on_ready(child)`` then); raise :class:`ChildExited` if a child exits first, or
    :class:`ChildTimeout` naming those still pending after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    pending = list(checks)
    while pending:
        for child, url in list(pending):
            if not child.alive():
                raise ChildExited(child)
            if answers(url, ready):
                pending.remove((child, url))
                if on_ready is not None:
                    on_ready(child)
        if not pending:
            return
        if time.monotonic() > deadline:
            raise ChildTimeout(pending, timeout)
        time.sleep(interval)


def stop_children(children: Iterable[Child], *, timeout: float = 30.0) -> None:
    """SIGTERM each child's process group (in the order given), wait for them all together at most
    ``timeout`` seconds, then SIGKILL the groups of those still running."""
    children = list(children)
    for child in children:
        if child.alive():
            child.signal(signal.SIGTERM)
    deadline = time.monotonic() + timeout
    for child in children:
        try:
            child.proc.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            log.warning("%s did not stop within %.0f s of SIGTERM; killing it", child.name, timeout)
            child.signal(signal.SIGKILL)
            try:
                child.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:  # pragma: no cover - a process stuck in the kernel
                log.error("%s (pid %d) did not die after SIGKILL", child.name, child.proc.pid)
