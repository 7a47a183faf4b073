"""``onramp serve --registry``: serve each registered model's ``production`` version and follow it.

:class:`RegistryFollower` runs a :class:`registry.watch.AliasWatcher` whose ``on_change`` swaps
the slot. A production version that fails to arrive (fetch, load, warm-up, timeout) is retried
with exponential backoff (``--registry-poll`` seconds, doubling, capped at
``--registry-max-backoff``); the old engine keeps serving meanwhile. Each failure counts in
``onramp_swap_failures_total{model}``; ``onramp_swap_backoff_seconds{model}`` and
``onramp_swap_next_retry_timestamp_seconds{model}`` say how long until the next try, and the
admin view of ``/readyz`` (and ``GET /admin/models``) says which version fails and why.
Swaps by version (``POST /admin/models/{name}/swap {"version": ...}``) go through
:meth:`RegistryFollower.resolve`, which refuses a version whose gate did not pass unless forced.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from prometheus_client.core import GaugeMetricFamily

from serving.admin import GateNotPassed
from serving.errors import ServingError
from serving.slots import SwapFailed

log = logging.getLogger(__name__)

__all__ = ["RegistryFollower"]


class _BackoffCollector:
    """The follower's backoff as gauges, read from the watcher at each scrape (never stale)."""

    def __init__(self, follower: RegistryFollower):
        self.follower = follower

    def collect(self):
        backoff = GaugeMetricFamily("onramp_swap_backoff_seconds", "Wait before the registry follower tries a "
                                    "failing production version again (absent: nothing failing).", labels=["model"])
        retry = GaugeMetricFamily("onramp_swap_next_retry_timestamp_seconds", "When the registry follower tries a "
                                  "failing production version again (unix time).", labels=["model"])
        for name, failure in sorted(self.follower.failing().items()):
            backoff.add_metric([name], failure.backoff_s)
            retry.add_metric([name], failure.retry_at)
        yield backoff
        yield retry


class RegistryFollower:
    def __init__(self, settings: Any, *, interval: float = 5.0, max_backoff: float = 300.0,
                 registry: Any | None = None):
        try:
            from registry.client import Registry
            from registry.names import short_aliases
            from registry.watch import AliasWatcher
        except ModuleNotFoundError as exc:
            raise ServingError(f"--registry needs the registry package ({exc.name} is missing)",
                               "serve explicit engines with --engine NAME=DIR") from None
        self._watcher_class = AliasWatcher
        self._short_aliases = short_aliases
        self.registry = registry or Registry(settings)
        self.interval = interval
        self.max_backoff = max_backoff
        self.watcher = None
        self._metrics = None
        self._slots = None

    @property
    def cache_dir(self) -> Path:
        """Where fetched versions live (swaps may load from here)."""
        return Path(self.registry.cache_dir)

    def failing(self) -> dict:
        return dict(self.watcher.failing) if self.watcher is not None else {}

    def status(self) -> dict[str, dict[str, Any]]:
        """Per model whose production version keeps failing: which, why, and the next try."""
        return {name: {"version": f.version, "failures": f.failures, "error": f.error, "backoff_s": f.backoff_s,
                       "next_retry_at": f.retry_at}
                for name, f in self.failing().items()}

    async def start(self, app) -> None:
        slots = app.state.slots
        self._metrics = app.state.metrics
        app.state.follower = self
        self._metrics.registry.register(_BackoffCollector(self))

        async def on_change(name: str, version: str, engine_dir: Path) -> None:
            await slots.swap(name, engine_dir, version=version)

        def on_names(names: list[str]) -> None:  # short names, where no two registered models share one
            slots.set_aliases(self._short_aliases(names))

        def on_fetch(name: str, version: str) -> None:  # 503 "loading", not 404, while it downloads
            slots.pending(name, f"registry version {version} (fetching)")

        self._slots = slots
        self.watcher = self._watcher_class(self.registry, alias="production", interval=self.interval,
                                           max_backoff=self.max_backoff, on_change=on_change,
                                           on_failure=self._on_failure, on_names=on_names, on_fetch=on_fetch)
        await self.watcher.start()

    async def stop(self, app) -> None:
        if self.watcher is not None:
            await self.watcher.stop()

    def _on_failure(self, failure, exc: Exception) -> None:
        if isinstance(exc, SwapFailed):
            return  # the slots counted it and keep its reason
        if self._metrics is not None:
            self._metrics.swap_failures.labels(failure.name).inc()
        if self._slots is not None:
            self._slots.pending_failed(failure.name, f"version {failure.version}: {exc}")

    def resolve(self, name: str, version: str, *, force: bool = False) -> Path:
        """The verified local copy of ``name`` ``version`` (a number or an alias); a version whose
        gate did not pass is refused (:class:`GateNotPassed`) unless ``force``."""
        info = self.registry.version_info(name, version)
        if info.gate != "passed" and not force:
            raise GateNotPassed(name, info.version, info.gate)
        return Path(self.registry.fetch(name, info.version))
