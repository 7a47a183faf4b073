"""AliasWatcher: told when production moves; failures are retried, never fatal."""

from __future__ import annotations

import asyncio
import time

from registry.client import Registry
from registry.watch import AliasWatcher

NAME = "huggingfacetb--smollm2-135m-instruct"  # registered: the full repo id


async def _until(predicate, timeout: float = 20.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not predicate():
        assert asyncio.get_running_loop().time() < deadline, "timed out"
        await asyncio.sleep(0.05)


async def test_watcher_follows_production(make_engine):
    reg = Registry()
    engines = {reg.register(make_engine(t), gate_passed=True): t for t in ("a", "b")}
    # no production alias: ignored
    reg.register(make_engine("other", name="other-model", repo="someone/other-model"), gate_passed=True)
    reg.promote(NAME, "1")

    seen: list[tuple[str, str, str]] = []
    fail_next = {"count": 1}

    async def on_change(name, version, engine_dir):
        if version == "2" and fail_next["count"]:
            fail_next["count"] -= 1
            raise RuntimeError("warm-up failed")  # the watcher must retry on the next tick
        seen.append((name, version, (engine_dir / "openvino_model.xml").read_text()))

    watcher = AliasWatcher(reg, alias="production", interval=0.1, on_change=on_change)
    await watcher.start()
    try:
        await _until(lambda: len(seen) == 1)
        assert seen[0][:2] == (NAME, "1") and "'a'" in seen[0][2]
        await asyncio.to_thread(reg.promote, NAME, "2")
        await _until(lambda: len(seen) == 2)
        assert seen[1][:2] == (NAME, "2") and "'b'" in seen[1][2]
        assert watcher.errors >= 1 and watcher.current == {NAME: "2"}
        await asyncio.to_thread(reg.rollback, NAME)
        await _until(lambda: len(seen) == 3)
        assert seen[2][:2] == (NAME, "1")
        await asyncio.sleep(0.3)
        assert len(seen) == 3  # nothing delivered twice
    finally:
        await watcher.stop()
    assert engines == {"1": "a", "2": "b"}


async def test_watcher_survives_a_bad_version_and_an_unknown_model(make_engine):
    reg = Registry()
    engine = make_engine("a")
    reg.register(engine, gate_passed=True)
    reg.promote(NAME, "1")
    # damage the stored copy: every fetch is refused, the watcher keeps polling and logs
    stored = next((reg.settings.home / "mlartifacts").rglob("engine/config.json"))
    stored.write_text("{}")
    calls = []

    async def on_change(name, version, engine_dir):
        calls.append(version)

    watcher = reg.watch(names=[NAME, "not-registered"], interval=0.05, on_change=on_change)
    async with watcher:
        await _until(lambda: watcher.errors >= 2)
        assert calls == []
        stored.write_bytes((engine / "config.json").read_bytes())  # repaired: delivered next tick
        await _until(lambda: calls == ["1"])


async def test_watcher_backs_off_a_failing_version_and_tries_a_new_one_at_once(make_engine):
    reg = Registry()
    for tag in ("a", "b"):
        reg.register(make_engine(tag), gate_passed=True)
    reg.promote(NAME, "1")
    calls: list[str] = []
    told = []

    async def on_change(name, version, engine_dir):
        calls.append(version)
        if version == "1":
            raise RuntimeError("engine did not load")

    watcher = AliasWatcher(reg, interval=0.2, max_backoff=0.8, on_change=on_change,
                           on_failure=lambda failure, exc: told.append((failure.failures, str(exc))))
    waits = []
    for _ in range(4):
        await watcher.poll_once()
        failure = watcher.failing[NAME]
        waits.append(failure.backoff_s)
        await watcher.poll_once()  # within the backoff: not tried again
        assert len(calls) == failure.failures
        await asyncio.sleep(failure.retry_at_monotonic - time.monotonic() + 0.01)
    assert waits == [0.2, 0.4, 0.8, 0.8]  # doubling, capped
    assert told == [(n, "engine did not load") for n in (1, 2, 3, 4)]
    assert watcher.failing[NAME].version == "1" and watcher.current == {}
    # the alias moves: the new version is tried at once, and the failure is forgotten when it arrives
    await asyncio.to_thread(reg.promote, NAME, "2")
    assert await watcher.poll_once() == {NAME: "2"}
    assert calls[-1] == "2" and watcher.failing == {}


async def test_watcher_tells_on_fetch_before_it_fetches(make_engine):
    reg = Registry()
    reg.register(make_engine("a"), gate_passed=True)
    reg.promote(NAME, "1")
    events: list[tuple] = []

    async def on_change(name, version, engine_dir):
        events.append(("change", name, version))

    watcher = AliasWatcher(reg, interval=0.1, on_change=on_change,
                           on_fetch=lambda name, version: events.append(("fetch", name, version)))
    assert await watcher.poll_once() == {NAME: "1"}
    assert await watcher.poll_once() == {}  # nothing moved: nothing fetched again
    assert events == [("fetch", NAME, "1"), ("change", NAME, "1")]
