"""Live engines by served name, and hot-swap.

Each served name is a slot holding its live engine. A swap loads the new engine in a worker
thread and warms it up with a one-token request while the old one keeps serving; then, under
the name's ``asyncio.Lock``, the slot points at the new engine, so every new request goes to it
from that moment. Requests already running hold a lease on the old engine and finish there; when
the last lease is released the old engine is closed and its memory freed. A failed load or
warm-up leaves the old engine serving and reports why.

Load plus warm-up is bounded by ``swap_timeout_s`` (``onramp serve --swap-timeout``, default
600 s). The load runs in a daemon thread of its own (a load that hangs forever holds no pool
thread and does not keep the process alive); past the deadline the swap fails with
``engine_load_timeout``, the old engine keeps serving, and an engine that finishes loading later
is closed at once.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from collections.abc import Callable

from onramp.errors import OnrampError
from serving.engine import Engine, GenerationRequest, SamplingParams
from serving.errors import ModelNotFound, Overloaded, RequestError
from serving.metrics import Metrics

log = logging.getLogger(__name__)

__all__ = ["Lease", "Live", "SlotStatus", "Slots", "SwapFailed"]


DEFAULT_SWAP_TIMEOUT_S = 600.0


class SwapFailed(RequestError):
    def __init__(self, name: str, reason: str, *, code: str = "engine_load_failed", status: int | None = None):
        super().__init__(f"swap of model '{name}' failed, the previous engine keeps serving: {reason}",
                         param="engine_dir", code=code, status=status)
        self.reason = reason


def _close_quietly(engine: Engine) -> None:
    try:
        engine.close()
    except Exception:  # noqa: BLE001 - an abandoned engine: nothing to report to
        log.exception("closing an abandoned engine failed")


def _in_daemon_thread(fn: Callable[..., Engine], *args: Any, **kwargs: Any) -> asyncio.Future:
    """``fn(*args, **kwargs)`` in a daemon thread of its own, as a future of the running loop. If
    the future was cancelled (a timeout) by the time ``fn`` returns an engine, that engine is closed."""
    loop = asyncio.get_running_loop()
    future = loop.create_future()

    def settle(result: Any, error: BaseException | None) -> None:
        if future.cancelled():
            if result is not None:
                threading.Thread(target=_close_quietly, args=(result,), daemon=True).start()
        elif error is not None:
            future.set_exception(error)
        else:
            future.set_result(result)

    def run() -> None:
        result, error = None, None
        try:
            result = fn(*args, **kwargs)
        except BaseException as exc:  # noqa: BLE001 - handed to the awaiting swap
            error = exc
        try:
            loop.call_soon_threadsafe(settle, result, error)
        except RuntimeError:  # the loop is gone (server stopped): nobody will use it
            if result is not None:
                _close_quietly(result)

    threading.Thread(target=run, name=f"engine-load-{args[1] if len(args) > 1 else ''}", daemon=True).start()
    return future


@dataclass(eq=False)
class Live:
    name: str
    engine: Engine
    version: str
    backend: str
    engine_dir: str
    since: float = field(default_factory=time.time)
    inflight: int = 0
    retiring: bool = False
    idle: asyncio.Event = field(default_factory=asyncio.Event)


@dataclass
class SlotStatus:
    name: str
    state: str  # loading | ready | failed
    version: str | None = None
    engine_dir: str | None = None
    error: str | None = None
    draining: int = 0  # old engines still finishing their requests


class Lease:
    """A request's hold on one live engine; release it exactly once (it is a context manager)."""

    def __init__(self, slots: Slots, live: Live):
        self._slots = slots
        self.live = live
        self.engine = live.engine
        self._released = False

    def release(self) -> None:
        if self._released:
            return
        self._released = True
        self._slots._release(self.live)

    def __enter__(self) -> Lease:
        return self

    def __exit__(self, *exc) -> None:
        self.release()


class Slots:
    def __init__(self, *, metrics: Metrics | None = None, max_queue: int = 128,
                 engine_options: dict[str, Any] | None = None, loader: Callable[..., Engine] | None = None,
                 swap_timeout_s: float = DEFAULT_SWAP_TIMEOUT_S):
        self.metrics = metrics or Metrics()
        self.swap_timeout_s = swap_timeout_s
        self.max_queue = max_queue
        self.engine_options = dict(engine_options or {})
        if loader is None:
            from serving.engines import load_engine

            loader = load_engine
        self._loader = loader
        self._live: dict[str, Live] = {}
        self._locks: dict[str, asyncio.Lock] = {}
        self._loading: dict[str, str] = {}
        self._errors: dict[str, str] = {}
        self._queued: dict[str, int] = {}
        self._retiring: set[asyncio.Task] = set()
        self._retired: set[Live] = set()  # retired engines not closed yet
        self._draining: dict[str, int] = {}
        self._aliases: dict[str, str] = {}

    # ------------------------------------------------------------------ lookups
    def names(self) -> list[str]:
        return sorted(self._live)

    def set_aliases(self, aliases: dict[str, str]) -> None:
        """Other names requests may use for a served model: ``{alias: name}`` (e.g. the short name
        of a registered model, see registry.names.short_aliases). Replaces the previous aliases;
        a served name always wins over an alias of the same text."""
        self._aliases = dict(aliases)

    def aliases(self) -> dict[str, str]:
        """``{alias: name}`` of the aliases whose model is live."""
        return {a: n for a, n in sorted(self._aliases.items()) if n in self._live and a not in self._live}

    def resolve(self, name: str) -> str:
        """The served name that ``name`` stands for (itself, unless it is an alias)."""
        return name if name in self._live else self._aliases.get(name, name)

    def live(self, name: str) -> Live | None:
        return self._live.get(self.resolve(name))

    def inflight(self, name: str) -> int:
        return self._queued.get(name, 0)

    def status(self) -> list[SlotStatus]:
        out = []
        for name in sorted(set(self._live) | set(self._loading) | set(self._errors)):
            live = self._live.get(name)
            if name in self._loading and live is None:
                state = "loading"
            elif live is not None:
                state = "ready"
            else:
                state = "failed"
            out.append(SlotStatus(name=name, state=state, version=live.version if live else None,
                                  engine_dir=live.engine_dir if live else self._loading.get(name),
                                  error=self._errors.get(name), draining=self._draining.get(name, 0)))
        return out

    def pending(self, name: str, what: str) -> None:
        """``name`` is on its way (e.g. a version being fetched from the registry): until it loads
        (:meth:`swap`) or fails (:meth:`pending_failed`), requests for it get 503 ``model_loading``
        with Retry-After instead of 404, and ``/readyz`` says "loading"."""
        self._loading[name] = what

    def pending_failed(self, name: str, reason: str) -> None:
        """What :meth:`pending` announced did not arrive (a failed fetch): requests get 503
        ``model_unavailable`` (an engine already live keeps serving)."""
        self._loading.pop(name, None)
        if name not in self._live:
            self._errors[name] = reason

    def acquire(self, name: str) -> Lease:
        """A lease on the live engine of ``name`` (or of the model it is an alias of): 404 unknown,
        503 loading, 429 when its queue is full."""
        name = self.resolve(name)
        live = self._live.get(name)
        if live is None:
            if name in self._loading:
                raise RequestError(f"Model '{name}' is still loading; retry shortly.", param="model",
                                   code="model_loading", status=503, headers={"Retry-After": "5"})
            if name in self._errors:
                raise RequestError(f"Model '{name}' failed to load: {self._errors[name]}", param="model",
                                   code="model_unavailable", status=503, headers={"Retry-After": "30"})
            raise ModelNotFound(name, list(self._live))
        count = self._queued.get(name, 0)
        if count >= self.max_queue:
            raise Overloaded(name, self.max_queue, retry_after=1)
        self._queued[name] = count + 1
        live.inflight += 1
        return Lease(self, live)

    def _release(self, live: Live) -> None:
        self._queued[live.name] = max(0, self._queued.get(live.name, 1) - 1)
        live.inflight -= 1
        if live.inflight <= 0 and live.retiring:
            live.idle.set()

    # ------------------------------------------------------------------ swap
    async def swap(self, name: str, engine_dir: Path | str, version: str | None = None) -> Live:
        """Load ``engine_dir`` as ``name`` (a new slot if the name is new) without dropping requests."""
        lock = self._locks.setdefault(name, asyncio.Lock())
        async with lock:
            engine_dir = str(Path(engine_dir).expanduser())
            self._loading[name] = engine_dir
            t0 = time.perf_counter()
            deadline = asyncio.get_running_loop().time() + self.swap_timeout_s
            try:
                engine = await self._load(name, engine_dir, deadline)
                try:
                    left = deadline - asyncio.get_running_loop().time()
                    await asyncio.wait_for(self._warmup(engine), timeout=max(left, 0.001))
                except TimeoutError:
                    threading.Thread(target=_close_quietly, args=(engine,), daemon=True).start()
                    raise SwapFailed(name, f"the engine in {engine_dir} loaded but its one-token warm-up did not "
                                     f"finish within the swap timeout of {self.swap_timeout_s:g} s (--swap-timeout)",
                                     code="engine_load_timeout", status=504) from None
                except Exception as err:  # noqa: BLE001
                    await asyncio.to_thread(engine.close)
                    raise SwapFailed(name, f"warm-up request failed: {err}") from None
            except SwapFailed as err:
                self._errors[name] = err.reason
                self.metrics.swaps.labels(name, "failed").inc()
                self.metrics.swap_failures.labels(name).inc()
                log.error("model %s: %s", name, err.message)
                raise
            finally:
                self._loading.pop(name, None)
            info = engine.describe()
            new = Live(name=name, engine=engine, version=version or info.version, backend=info.backend,
                       engine_dir=engine_dir)
            old = self._live.get(name)
            self._live[name] = new
            self._errors.pop(name, None)
            self.metrics.set_active(name, new.version, new.backend)
            self.metrics.swaps.labels(name, "ok").inc()
            log.info("model %s: engine %s (%s) live after %.1fs%s", name, new.version, info.backend,
                     time.perf_counter() - t0, f", replacing {old.version}" if old else "")
        if old is not None:
            self._retire(old)
        return new

    async def _load(self, name: str, engine_dir: str, deadline: float) -> Engine:
        future = _in_daemon_thread(self._loader, engine_dir, name, **self.engine_options)
        try:
            return await asyncio.wait_for(future, timeout=max(deadline - asyncio.get_running_loop().time(), 0.001))
        except TimeoutError:
            raise SwapFailed(name, f"loading the engine in {engine_dir} did not finish within the swap timeout of "
                             f"{self.swap_timeout_s:g} s (--swap-timeout); if it finishes later it is closed",
                             code="engine_load_timeout", status=504) from None
        except OnrampError as err:
            raise SwapFailed(name, str(err)) from None
        except Exception as err:  # noqa: BLE001 - a backend's own failure, reported as is
            log.exception("loading %s for %s failed", engine_dir, name)
            raise SwapFailed(name, f"{type(err).__name__}: {err}") from None

    async def _warmup(self, engine: Engine) -> None:
        request = GenerationRequest(request_id=f"warmup-{uuid.uuid4().hex[:8]}",
                                    sampling=SamplingParams(max_tokens=1, temperature=0.0), prompt="Hello")
        async for _ in engine.stream(request):
            pass

    def _retire(self, old: Live) -> None:
        old.retiring = True
        self._retired.add(old)
        self._draining[old.name] = self._draining.get(old.name, 0) + 1
        if old.inflight <= 0:
            old.idle.set()
        task = asyncio.get_running_loop().create_task(self._close_when_idle(old))
        self._retiring.add(task)
        task.add_done_callback(self._retiring.discard)

    async def _close_when_idle(self, old: Live) -> None:
        await old.idle.wait()
        try:
            await asyncio.to_thread(old.engine.close)
            log.info("model %s: old engine %s drained and closed", old.name, old.version)
        finally:
            self._draining[old.name] -= 1
            self._retired.discard(old)

    async def remove(self, name: str) -> None:
        lock = self._locks.setdefault(name, asyncio.Lock())
        async with lock:
            old = self._live.pop(name, None)
            if old is None:
                raise ModelNotFound(name, list(self._live))
            self.metrics.remove_model(name)
            self._retire(old)

    def forget_failure(self, name: str) -> None:
        """Drop the failed-load record of ``name`` (e.g. a canary that was withdrawn)."""
        self._errors.pop(name, None)

    async def drained(self) -> None:
        """Wait until every retired engine is closed (tests, shutdown)."""
        while self._retiring:
            await asyncio.gather(*list(self._retiring), return_exceptions=True)

    async def close(self) -> None:
        for name in list(self._live):
            live = self._live.pop(name)
            self._retire(live)
        for live in list(self._retired):
            live.idle.set()  # shutting down: do not wait for stragglers
        await self.drained()
