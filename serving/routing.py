"""Canary routing: a share of a model's requests goes to its ``canary`` version.

A registered model may have a ``canary`` alias beside ``production`` and a canary weight (percent,
the registered model's tag ``onramp.canary_weight``, see :mod:`registry.canary`). Every replica
reads both from the registry (:class:`CanaryFollower`), loads the canary engine as the slot
``NAME@canary`` beside ``NAME`` and routes a request to it when the request's routing key (its
``user`` field, else its API key's name) falls in a bucket below the weight: the same user stays
on one version, and all replicas agree. A request with no key is routed at random by the weight.

The version that answered is told to the handler through :data:`ROUTE` (a per-request dict), so
responses carry ``x-onramp-version``.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import random
from contextvars import ContextVar
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from registry.client import Registry
    from serving.slots import Slots

log = logging.getLogger(__name__)

__all__ = ["CANARY_SUFFIX", "ROUTE", "CanaryFollower", "Router", "bucket", "canary_hooks"]

CANARY_SUFFIX = "@canary"
VERSION_HEADER = "x-onramp-version"

# per request: {"key": routing key or None, "version": the version that answered}
ROUTE: ContextVar[dict | None] = ContextVar("onramp_route", default=None)


def bucket(key: str) -> float:
    """A stable number in [0, 100) for a routing key (the same on every replica and run)."""
    return int.from_bytes(hashlib.sha256(key.encode()).digest()[:8], "big") % 10000 / 100.0


def canary_slot(name: str) -> str:
    return f"{name}{CANARY_SUFFIX}"


SHADOW_K = 16  # agreement is judged on the first K tokens


class Router:
    """Canary weights (and shadow rates) by served name; picks the slot a request goes to."""

    def __init__(self) -> None:
        self.weights: dict[str, float] = {}
        self.shadow: dict[str, float] = {}  # percent of production's greedy requests mirrored to the canary
        self._tasks: set[asyncio.Task] = set()

    def wants_shadow(self, slots: Slots, name: str, slot: str, temperature: float) -> bool:
        """Mirror this production request to the canary? Only greedy requests (their answers compare)."""
        rate = self.shadow.get(name, 0.0)
        return (rate > 0 and slot != canary_slot(name) and temperature == 0
                and slots.live(canary_slot(name)) is not None
                and random.uniform(0, 100) < rate)  # noqa: S311

    def mirror(self, slots: Slots, name: str, version: str, request, answer: str, tokens: int) -> None:
        """Run ``request`` on the canary in the background and record how its first K tokens (at most
        production's ``tokens``) agree with production's ``answer`` (each canary token must continue
        production's text)."""
        task = asyncio.get_running_loop().create_task(
            self._shadow(slots, name, version, request, answer, max(1, min(SHADOW_K, tokens))))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _shadow(self, slots: Slots, name: str, version: str, request, answer: str, k: int) -> None:
        import dataclasses
        import uuid

        from serving.errors import RequestError

        try:
            lease = slots.acquire(canary_slot(name))
        except RequestError:
            return  # the canary is busy or gone: skip, never queue shadow work
        sampling = dataclasses.replace(request.sampling, max_tokens=k, logprobs=True)
        shadow = dataclasses.replace(request, request_id=f"shadow-{uuid.uuid4().hex}", sampling=sampling)
        tokens: list[str] = []
        try:
            with lease:
                async for delta in lease.engine.stream(shadow):
                    tokens += [t.token for t in delta.logprobs or ()]
        except Exception as exc:  # noqa: BLE001 - shadow work never affects production
            log.info("shadow request on %s failed: %s", canary_slot(name), exc)
            return
        matched, prefix = 0, ""
        for token in tokens[:k]:
            prefix += token
            if not answer.startswith(prefix):
                break
            matched += 1
        want = min(k, len(tokens))
        m = slots.metrics
        labels = (name, version, lease.live.version)
        m.shadow_requests.labels(*labels).inc()
        m.shadow_identical.labels(*labels).inc(1 if want and matched == want else 0)
        m.shadow_matched.labels(*labels).inc(matched / want if want else 1.0)

    def pick(self, slots: Slots, model: str, key: str | None) -> str:
        name = slots.resolve(model)
        weight = self.weights.get(name, 0.0)
        if weight <= 0 or slots.live(canary_slot(name)) is None:
            return model
        point = bucket(key) if key else random.uniform(0, 100)  # noqa: S311 - routing, not security
        return canary_slot(name) if point < weight else model


class CanaryFollower:
    """Polls the registry: loads/unloads each model's canary engine and sets its weight."""

    def __init__(self, registry: Registry, slots: Slots, router: Router, interval: float = 5.0):
        self.registry = registry
        self.slots = slots
        self.router = router
        self.interval = interval
        self._task: asyncio.Task | None = None

    async def start(self) -> None:
        self._task = asyncio.create_task(self._loop(), name="canary-follower")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _loop(self) -> None:
        while True:
            try:
                await self.poll_once()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - the follower must survive anything
                log.warning("canary follower: %s; will retry", exc)
            await asyncio.sleep(self.interval)

    async def poll_once(self) -> None:
        from registry.canary import canary_state

        for name in await asyncio.to_thread(self.registry.model_names):
            state = await asyncio.to_thread(canary_state, self.registry, name)
            # the shadow rate first: a canary that goes live in _apply is mirrored from its first request on
            if state.active and state.shadow > 0:
                self.router.shadow[name] = state.shadow
            else:
                self.router.shadow.pop(name, None)
            await self._apply(name, state.version if state.active else None, state.weight)

    async def _apply(self, name: str, version: str | None, weight: float) -> None:
        slot = canary_slot(name)
        live = self.slots.live(slot) if slot in self.slots.names() else None
        metrics = self.slots.metrics
        if version is None:
            self.slots.forget_failure(slot)
            if name in self.router.weights or live is not None:
                self.router.weights.pop(name, None)
                if live is not None:
                    metrics.canary_weight.remove(name, live.version)
                    await self.slots.remove(slot)  # running requests finish on it
                log.info("model %s: canary removed", name)
            return
        if live is None or live.version != version:
            engine_dir = Path(await asyncio.to_thread(self.registry.fetch, name, version))
            if live is not None:
                with contextlib.suppress(KeyError):
                    metrics.canary_weight.remove(name, live.version)
            await self.slots.swap(slot, engine_dir, version=version)
        if self.router.weights.get(name) != weight:
            log.info("model %s: canary %s at %g%%", name, version, weight)
        self.router.weights[name] = weight
        metrics.canary_weight.labels(name, version).set(weight)


def canary_hooks(registry: Registry, interval: float = 5.0):
    """``(start, stop)`` app hooks of ``onramp serve --registry``: a :class:`Router` on the app's
    service and a :class:`CanaryFollower` polling every ``interval`` seconds."""
    state: dict = {}

    async def start(app) -> None:
        router = Router()
        app.state.service.router = router
        state["follower"] = CanaryFollower(registry, app.state.slots, router, interval=interval)
        await state["follower"].start()

    async def stop(app) -> None:
        if "follower" in state:
            await state["follower"].stop()

    return start, stop
