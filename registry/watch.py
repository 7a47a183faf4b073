"""Be told when an alias (``production`` by default) of a registered model moves.

:class:`AliasWatcher` polls the registry in a background asyncio task. When the alias of a
model points at a version it has not delivered yet, it fetches that version (verified, see
:meth:`registry.client.Registry.fetch`) and awaits ``on_change(name, version, engine_dir)``.
The first poll delivers every model's current version (a server starting up loads them).
A model without the alias (or whose alias was removed) is left as it is: nothing is unloaded.
A failing fetch or callback is logged and never stops the watcher. While the alias stays on a
version that fails, it is tried again with exponential backoff: after ``interval``, then twice
that, and so on up to ``max_backoff`` seconds (a broken production version is not reloaded on
every tick forever); :attr:`AliasWatcher.failing` says which, why and when the next try is, and
``on_failure(failure, exc)`` is told of each failure. When the alias moves, the new version is tried at once.
MLflow calls run in a thread (``asyncio.to_thread``) so the event loop keeps serving.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

log = logging.getLogger(__name__)

__all__ = ["DEFAULT_MAX_BACKOFF_S", "AliasWatcher", "Failure", "WatchedRegistry"]


class WatchedRegistry(Protocol):
    """What the watcher needs of a registry (:class:`registry.client.Registry` is one)."""

    def model_names(self) -> list[str]: ...

    def alias_version(self, name: str, alias: str) -> str | None: ...

    def fetch(self, name: str, version_or_alias: str | int = ...) -> Path: ...


OnChange = Callable[[str, str, Path], Awaitable[None]]
DEFAULT_MAX_BACKOFF_S = 300.0


@dataclass
class Failure:
    """A version of a model that failed to arrive (fetch or ``on_change``), and when to try again."""

    name: str
    version: str
    failures: int  # consecutive failures of this version
    error: str
    backoff_s: float  # wait before the next try
    retry_at: float  # time.time() of the next try
    retry_at_monotonic: float


OnFailure = Callable[[Failure, Exception], None]
OnNames = Callable[[list[str]], None]
OnFetch = Callable[[str, str], None]


class AliasWatcher:
    def __init__(
        self,
        registry: WatchedRegistry,
        alias: str = "production",
        names: list[str] | None = None,
        interval: float = 5.0,
        on_change: OnChange | None = None,
        max_backoff: float = DEFAULT_MAX_BACKOFF_S,
        on_failure: OnFailure | None = None,
        on_names: OnNames | None = None,
        on_fetch: OnFetch | None = None,
    ):
        if on_change is None:
            raise ValueError("AliasWatcher needs an on_change coroutine function")
        self.registry = registry
        self.alias = alias
        self.names = list(names) if names else None
        self.interval = interval
        self.on_change = on_change
        self.max_backoff = max(max_backoff, interval)
        self.on_failure = on_failure
        self.on_names = on_names  # told the registered model names at each poll (serving's aliases)
        self.on_fetch = on_fetch  # told (name, version) before a version is fetched (serving: "loading")
        self.current: dict[str, str] = {}  # name -> version delivered to on_change
        self.failing: dict[str, Failure] = {}  # name -> the version that keeps failing
        self.errors = 0
        self._task: asyncio.Task | None = None
        self._stopping = asyncio.Event()

    async def start(self) -> None:
        """Start polling in the background (the first poll runs at once)."""
        if self._task is not None and not self._task.done():
            return
        self._stopping = asyncio.Event()
        self._task = asyncio.create_task(self._loop(), name=f"alias-watcher:{self.alias}")

    async def stop(self) -> None:
        self._stopping.set()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def __aenter__(self) -> AliasWatcher:  # noqa: PYI034
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def _loop(self) -> None:
        while not self._stopping.is_set():
            await self.poll_once()
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), timeout=self.interval)

    async def poll_once(self) -> dict[str, str]:
        """One poll: deliver every alias that moved; returns {name: version} delivered now."""
        delivered: dict[str, str] = {}
        try:
            names = self.names or await asyncio.to_thread(self.registry.model_names)
            if self.on_names is not None:
                self.on_names(list(names))
        except Exception as exc:  # noqa: BLE001 - the watcher must survive anything
            self.errors += 1
            log.warning("watching %r: cannot list registered models: %s", self.alias, exc)
            return delivered
        for name in names:
            version = None
            try:
                version = await asyncio.to_thread(self.registry.alias_version, name, self.alias)
                if version is None or self.current.get(name) == version:
                    self.failing.pop(name, None)  # the alias left the failing version
                    continue
                failing = self.failing.get(name)
                if (failing is not None and failing.version == version
                        and time.monotonic() < failing.retry_at_monotonic):
                    continue  # backing off
                if self.on_fetch is not None:
                    self.on_fetch(name, version)
                engine_dir = await asyncio.to_thread(self.registry.fetch, name, version)
                await self.on_change(name, version, engine_dir)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - the watcher must survive anything
                self.errors += 1
                if version is not None:
                    self._failed(name, version, exc)
                else:
                    log.warning("watching %s@%s: %s; will retry in %.1fs", name, self.alias, exc, self.interval)
                continue
            log.info("%s@%s -> version %s (was %s)", name, self.alias, version, self.current.get(name))
            self.current[name] = version
            self.failing.pop(name, None)
            delivered[name] = version
        return delivered

    def _failed(self, name: str, version: str, exc: Exception) -> None:
        before = self.failing.get(name)
        count = before.failures + 1 if before is not None and before.version == version else 1
        backoff = min(self.interval * 2 ** (count - 1), self.max_backoff)
        failure = Failure(name=name, version=version, failures=count, error=str(exc), backoff_s=backoff,
                          retry_at=time.time() + backoff, retry_at_monotonic=time.monotonic() + backoff)
        self.failing[name] = failure
        log.warning("watching %s@%s: version %s failed (%d in a row): %s; next try in %.0f s", name, self.alias,
                    version, count, exc, backoff)
        if self.on_failure is not None:
            try:
                self.on_failure(failure, exc)
            except Exception:  # noqa: BLE001
                log.exception("on_failure callback failed")
