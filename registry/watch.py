"""Be told when an alias (``production`` by default) of a registered model moves.

:class:`AliasWatcher` polls the registry in a background asyncio task. When the alias of a
model points at a version it has not delivered yet, it fetches that version (verified, see
:meth:`registry.client.Registry.fetch`) and awaits ``on_change(name, version, engine_dir)``.
The first poll delivers every model's current version (a server starting up loads them).
A model without the alias (or whose alias was removed) is left as it is: nothing is unloaded.
A failing fetch or callback is logged and tried again on the next tick; it never stops the
watcher. MLflow calls run in a thread (``asyncio.to_thread``) so the event loop keeps serving.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from registry.client import Registry

log = logging.getLogger(__name__)

OnChange = Callable[[str, str, Path], Awaitable[None]]
OnNames = Callable[[list[str]], None]


class AliasWatcher:
    def __init__(
        self,
        registry: Registry,
        alias: str = "production",
        names: list[str] | None = None,
        interval: float = 5.0,
        on_change: OnChange | None = None,
        on_names: OnNames | None = None,
    ):
        if on_change is None:
            raise ValueError("AliasWatcher needs an on_change coroutine function")
        self.registry = registry
        self.alias = alias
        self.names = list(names) if names else None
        self.interval = interval
        self.on_change = on_change
        self.on_names = on_names  # told the registered model names at each poll (serving's aliases)
        self.current: dict[str, str] = {}  # name -> version delivered to on_change
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
            try:
                version = await asyncio.to_thread(self.registry.alias_version, name, self.alias)
                if version is None or self.current.get(name) == version:
                    continue
                engine_dir = await asyncio.to_thread(self.registry.fetch, name, version)
                await self.on_change(name, version, engine_dir)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - the watcher must survive anything
                self.errors += 1
                log.warning("watching %s@%s: %s; will retry in %.1fs", name, self.alias, exc, self.interval)
                continue
            log.info("%s@%s -> version %s (was %s)", name, self.alias, version, self.current.get(name))
            self.current[name] = version
            delivered[name] = version
        return delivered
