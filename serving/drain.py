"""Graceful drain on SIGTERM, so a rolling update (Kubernetes, ``maxUnavailable: 0``) drops nothing.

On SIGTERM the server keeps listening but stops taking work: every new request except the probes
and ``/metrics`` gets 503 with ``Retry-After`` and an OpenAI-shaped error, ``/readyz`` answers 503
(the load balancer stops sending), and requests already in flight — streams included — run to
their end. When none is left, or ``drain_timeout`` seconds have passed, uvicorn shuts down as usual
(lifespan shutdown closes the engines) and the process exits 0. A second SIGTERM, or SIGINT, stops
at once as uvicorn does.

uvicorn's own SIGTERM handling closes the listening socket and ends idle keep-alive connections at
once, then waits for running requests (``timeout_graceful_shutdown``); a client that connects during
that window is refused instead of told to retry, and ``/readyz`` never says "draining". Hence
:class:`DrainingServer`, a ``uvicorn.Server`` whose ``handle_exit`` flips the drain first.
"""

from __future__ import annotations

import logging
import signal
import time
from typing import Any

import uvicorn
from starlette.responses import JSONResponse

log = logging.getLogger(__name__)

__all__ = ["Drain", "DrainGate", "DrainingServer", "run_server"]

# answered while draining (the probes and the metrics scrape); everything else is refused
OPS_PATHS = frozenset({"/healthz", "/readyz", "/metrics"})


class Drain:
    """The drain state of one server: whether it is draining, and how many requests are in flight."""

    def __init__(self, retry_after_s: int = 2) -> None:
        self.draining = False
        self.inflight = 0
        self.retry_after_s = retry_after_s
        self.started: float | None = None

    def start(self) -> None:
        if not self.draining:
            self.draining, self.started = True, time.monotonic()


class DrainGate:
    """ASGI middleware: counts requests in flight, refuses new ones (503 + Retry-After) while
    draining, and makes ``/readyz`` answer 503 then."""

    def __init__(self, app: Any, drain: Drain, metrics: Any = None) -> None:
        self.app = app
        self.drain = drain
        self.metrics = metrics  # serving.metrics.Metrics: refusals count as requests with status 503

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path = scope.get("path", "")
        drain = self.drain
        if drain.draining and path == "/readyz":
            await JSONResponse({"status": "draining", "inflight": drain.inflight}, status_code=503)(
                scope, receive, send)
            return
        if path in OPS_PATHS:
            await self.app(scope, receive, send)
            return
        if drain.draining:
            if self.metrics is not None:
                self.metrics.requests.labels("", path, "503").inc()
            body = {"error": {"message": "The server is shutting down and takes no new requests; retry (another "
                                         "replica will answer).",
                              "type": "server_error", "param": None, "code": "server_shutting_down"}}
            await JSONResponse(body, status_code=503, headers={"Retry-After": str(drain.retry_after_s),
                                                               "Connection": "close"})(scope, receive, send)
            return
        drain.inflight += 1
        try:
            await self.app(scope, receive, send)  # returns after a streamed body's last chunk
        finally:
            drain.inflight -= 1


class DrainingServer(uvicorn.Server):
    """``uvicorn.Server`` that drains on the first SIGTERM (see the module's docstring)."""

    def __init__(self, config: uvicorn.Config, drain: Drain, drain_timeout: float = 30.0) -> None:
        super().__init__(config)
        self.drain = drain
        self.drain_timeout = drain_timeout

    def handle_exit(self, sig: int, frame: Any) -> None:
        if sig == signal.SIGTERM and not self.drain.draining and not self.should_exit:
            # not recorded in _captured_signals: uvicorn would re-raise it after shutdown, and the
            # process would end by the signal instead of exiting 0
            self.drain.start()
            log.info("SIGTERM: draining (%d requests in flight; new ones get 503; at most %.0f s)",
                     self.drain.inflight, self.drain_timeout)
            return
        super().handle_exit(sig, frame)

    async def on_tick(self, counter: int) -> bool:
        if await super().on_tick(counter):
            return True
        drain = self.drain
        if not drain.draining:
            return False
        if drain.inflight == 0:
            log.info("drained in %.1f s; shutting down", time.monotonic() - drain.started)
            return True
        if time.monotonic() - drain.started > self.drain_timeout:
            log.warning("drain timeout (%.0f s): %d requests still in flight are cut; shutting down",
                        self.drain_timeout, drain.inflight)
            return True
        return False


def run_server(app: Any, *, host: str, port: int, drain_timeout: float = 30.0, log_level: str = "info") -> None:
    """Serve ``app`` (built by :func:`serving.app.build_app`, whose ``app.state.drain`` is the gate's
    state) until SIGTERM and a drain, or SIGINT."""
    drain = getattr(app.state, "drain", None) or Drain()
    config = uvicorn.Config(app, host=host, port=port, log_level=log_level,
                            timeout_graceful_shutdown=5)  # after the drain: what is left gets 5 s
    server = DrainingServer(config, drain, drain_timeout=drain_timeout)
    server.run()
    if not server.started:  # as uvicorn.run: e.g. the port is taken
        raise SystemExit(3)
