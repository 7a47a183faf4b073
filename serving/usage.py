"""Usage per API key: counted, exported, limited.

Every request is counted under its key's *name* (never the key): Prometheus counters
``onramp_key_requests``, ``onramp_key_prompt_tokens`` and ``onramp_key_completion_tokens``
(label ``key``), and running totals written to ``usage.json`` beside the keys file (at most once a
second, atomically), which ``onramp keys list`` shows. A key with limits (``rpm``: requests per
minute, ``tpm``: prompt + completion tokens per minute, set by ``onramp keys create --rpm/--tpm``)
is refused with 429 and ``Retry-After`` while its last 60 seconds are at the limit; other keys are
not affected. The key of the request being served is in the :data:`current_key` context variable
(set by the auth dependency).
"""

from __future__ import annotations

import asyncio
import contextvars
import json
import logging
import math
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path

from prometheus_client import CollectorRegistry, Counter

from serving.errors import RequestError

log = logging.getLogger(__name__)

__all__ = ["ANONYMOUS", "RateLimited", "UsageMeter", "current_key", "read_usage", "usage_file"]

ANONYMOUS = "anonymous"  # requests of a server without auth
WINDOW_S = 60.0
FLUSH_S = 1.0

current_key: contextvars.ContextVar = contextvars.ContextVar("onramp_api_key", default=None)


def usage_file(keys_file: Path) -> Path:
    return Path(keys_file).with_name("usage.json")


def read_usage(path: Path) -> dict[str, dict[str, int]]:
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


class RateLimited(RequestError):
    status = 429
    type = "rate_limit_error"

    def __init__(self, name: str, what: str, limit: int, retry_after: int):
        super().__init__(f"API key '{name}' is over its limit of {limit} {what} per minute; retry after "
                         f"{retry_after}s.", code="rate_limit_exceeded", headers={"Retry-After": str(retry_after)})


@dataclass
class _Window:
    requests: deque = field(default_factory=deque)  # admission times
    tokens: deque = field(default_factory=deque)  # (time, tokens) of finished requests

    def trim(self, now: float) -> None:
        while self.requests and now - self.requests[0] >= WINDOW_S:
            self.requests.popleft()
        while self.tokens and now - self.tokens[0][0] >= WINDOW_S:
            self.tokens.popleft()


class UsageMeter:
    """Counts and limits per key name; one per app."""

    def __init__(self, registry: CollectorRegistry, path: Path | None = None):
        self.path = path
        self.requests = Counter("onramp_key_requests", "Requests admitted, by API key name.", ["key"],
                                registry=registry)
        self.prompt_tokens = Counter("onramp_key_prompt_tokens", "Prompt tokens, by API key name.", ["key"],
                                     registry=registry)
        self.completion_tokens = Counter("onramp_key_completion_tokens", "Completion tokens, by API key name.",
                                         ["key"], registry=registry)
        self._windows: dict[str, _Window] = {}
        self._totals: dict[str, dict[str, int]] = read_usage(path) if path else {}
        self._lock = threading.Lock()
        self._last_flush = 0.0
        self._flush_pending = False

    def admit(self, key) -> str:
        """Check ``key``'s limits (429 when over) and count the request; returns the name to bill."""
        if key is None:
            name, rpm, tpm = ANONYMOUS, None, None
        else:
            name, rpm, tpm = key.name, getattr(key, "rpm", None), getattr(key, "tpm", None)
        now = time.monotonic()
        window = self._windows.setdefault(name, _Window())
        window.trim(now)
        if rpm is not None and len(window.requests) >= rpm:
            raise RateLimited(name, "requests", rpm, _retry(window.requests[0], now))
        if tpm is not None:
            used = sum(n for _, n in window.tokens)
            if used >= tpm:
                # wait until enough of the window's tokens have aged out
                excess, when = used - tpm, window.tokens[0][0]
                for t, n in window.tokens:
                    when = t
                    excess -= n
                    if excess < 0:
                        break
                raise RateLimited(name, "tokens", tpm, _retry(when, now))
        window.requests.append(now)
        self.requests.labels(name).inc()
        self._add(name, requests=1)
        return name

    def record(self, name: str, prompt_tokens: int, completion_tokens: int) -> None:
        """A finished request's tokens (they count against the key's tokens per minute)."""
        self.prompt_tokens.labels(name).inc(prompt_tokens)
        self.completion_tokens.labels(name).inc(completion_tokens)
        self._windows.setdefault(name, _Window()).tokens.append((time.monotonic(), prompt_tokens + completion_tokens))
        self._add(name, prompt_tokens=prompt_tokens, completion_tokens=completion_tokens)

    def _add(self, name: str, **counts: int) -> None:
        with self._lock:
            totals = self._totals.setdefault(name, {"requests": 0, "prompt_tokens": 0, "completion_tokens": 0})
            for k, v in counts.items():
                totals[k] = totals.get(k, 0) + v
        self._schedule_flush()

    def _schedule_flush(self) -> None:
        if self.path is None or self._flush_pending:
            return
        wait = self._last_flush + FLUSH_S - time.monotonic()
        if wait <= 0:
            self.flush()
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            self.flush()
            return
        self._flush_pending = True
        loop.call_later(wait, self.flush)

    def flush(self) -> None:
        """Write the running totals (atomically) for ``onramp keys list``."""
        self._flush_pending = False
        self._last_flush = time.monotonic()
        if self.path is None:
            return
        from onramp.files import write_text_atomic

        with self._lock:
            text = json.dumps(self._totals, indent=2, sort_keys=True) + "\n"
        try:
            write_text_atomic(self.path, text)
        except OSError as exc:  # usage is reporting, never a reason to fail a request
            log.warning("cannot write %s: %s", self.path, exc)


def _retry(oldest: float, now: float) -> int:
    return max(1, math.ceil(WINDOW_S - (now - oldest)))
