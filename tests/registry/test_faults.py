"""Faults of the registry on real servers: racing promotions, kill -9 mid-step, MLflow going away.

The local registry (SQLite + filelock) and the scale-out shape (``mlflow server`` + moto S3, where
the lock is a create-only registered model) run the same race tests. Kill points are reached
exactly: a proxy in front of ``mlflow server`` holds the request that would do the next write
(``tests.netfaults.FaultProxy.stall_on``), the test sees it held and SIGKILLs the child process making it.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import pytest

from flows import steps
from registry.client import CANDIDATE, PREVIOUS, PRODUCTION
from registry.errors import PromotionError, RegistryUnavailableError, StalePromotionError
from registry.promotion import LOCK_SUFFIX

REPO_ROOT = Path(__file__).resolve().parents[2]
OLD_DATE, NEW_DATE, BASE_DATE = "2026-03-01T10:00:00+00:00", "2026-03-02T10:00:00+00:00", "2026-02-01T10:00:00+00:00"


@pytest.fixture(params=["sqlite", pytest.param("server", marks=pytest.mark.slow)])
def registry_kind(request, registry_factory, s3):
    """``(make_registry, model_name)`` for a local SQLite registry or an ``mlflow server``."""
    name = f"faults--m-{uuid.uuid4().hex[:8]}"  # the registered name of the repo faults/m-...
    if request.param == "sqlite":
        return (lambda **kw: registry_factory(s3.root, **kw)), name
    url, _ = request.getfixturevalue("mlflow_server")
    return (lambda **kw: registry_factory(tracking_uri=url, experiment=f"onramp-{s3.prefix}", **kw)), name


def _repo(name: str) -> str:
    """The Hub repo whose registered model is ``name`` (``faults--m-x`` ← ``faults/m-x``)."""
    return name.replace("--", "/", 1)


def _replay(start, moves) -> tuple[str | None, list[str]]:
    """Production and history after ``moves``, as promote (push) and rollback (pop) define them."""
    production, history = start.production, list(start.history)
    for move in moves:
        assert move["from"] == production, moves  # each move starts where the one before ended
        if move["op"] == "promote":
            history.append(move["from"])
        else:
            assert move["op"] == "rollback", move
            while history and history[-1] == move["from"]:
                history.pop()
            assert history.pop() == move["to"], moves
        production = move["to"]
    return production, history


def test_racing_promotes_and_rollbacks_leave_one_consistent_history(registry_kind, make_engine):
    make_registry, name = registry_kind
    reg = make_registry()
    versions = [reg.register(make_engine(t, name=name, repo=_repo(name)), gate_passed=True) for t in "abc"]
    reg.promote(name, versions[0])
    start = reg.production_state(name)
    moved: list[tuple[str, str]] = []  # (op, to) of every call that moved the alias
    errors: list[BaseException] = []
    barrier = threading.Barrier(4)

    def worker(seed: int) -> None:
        mine, rnd = make_registry(), random.Random(seed)
        barrier.wait()
        for _ in range(6):
            try:
                if rnd.random() < 0.6:
                    version = rnd.choice(versions)
                    if mine.promote(name, version, force=True) is not None:
                        moved.append(("promote", version))
                else:
                    moved.append(("rollback", mine.rollback(name)))
            except PromotionError as exc:
                if "no earlier production version" not in str(exc):
                    errors.append(exc)
            except Exception as exc:  # noqa: BLE001 - reported below
                errors.append(exc)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=600)
    assert not errors, errors
    assert moved, "no call moved production"

    state = reg.production_state(name)
    new = [m for m in state.moves if m["seq"] > start.seq]
    # every move recorded exactly once, in one unbroken sequence
    assert state.seq == start.seq + len(moved)
    assert [m["seq"] for m in new] == list(range(start.seq + 1, state.seq + 1))
    assert sorted((m["op"], m["to"]) for m in new) == sorted(moved)
    production, history = _replay(start, new)
    # the record matches the aliases
    assert state.pending is None
    assert state.production == production == reg.alias_version(name, PRODUCTION)
    assert state.history == history
    assert reg.alias_version(name, PREVIOUS) == (history[-1] if history else None)
    assert all(not m.name.endswith(LOCK_SUFFIX) for m in reg.client.search_registered_models())


def _register_revision(reg, make_engine, name: str, tag: str, date: str) -> str:
    engine = make_engine(tag, name=name, repo=_repo(name), revision=tag[0] * 40)
    return reg.register(engine, gate_passed=True, tags={"hf_revision_date": date})


def test_production_ends_on_the_newer_revision_whichever_finishes_last(registry_kind, make_engine):
    make_registry, name = registry_kind
    reg = make_registry()
    base = _register_revision(reg, make_engine, name, "base", BASE_DATE)
    old = _register_revision(reg, make_engine, name, "old", OLD_DATE)
    new = _register_revision(reg, make_engine, name, "new", NEW_DATE)

    # the older onboarding finishing last: refused, nothing recorded
    reg.promote(name, base)
    assert steps.promote(reg, name, new).promoted
    before = reg.production_state(name)
    outcome = steps.promote(reg, name, old)
    assert not outcome.promoted and "older than production" in outcome.reason
    with pytest.raises(StalePromotionError, match="rollback"):
        reg.promote(name, old)
    assert reg.production_state(name).seq == before.seq and reg.alias_version(name, PRODUCTION) == new
    # explicit ways back still work
    assert reg.promote(name, old, force=True) == new
    assert reg.rollback(name) == new

    # both promoting at once, three times: always the newer one at the end
    for _ in range(3):
        reg.promote(name, base, force=True)
        results: dict[str, object] = {}
        barrier = threading.Barrier(2)

        def onboarding(version: str, barrier: threading.Barrier, results: dict) -> None:
            mine = make_registry()
            barrier.wait()
            results[version] = steps.promote(mine, name, version)

        threads = [threading.Thread(target=onboarding, args=(v, barrier, results)) for v in (old, new)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=300)
        assert reg.alias_version(name, PRODUCTION) == new
        assert results[new].promoted
        state = reg.production_state(name)
        assert state.moves[-1]["to"] == new and state.production == new


# ------------------------------------------------------------------------------ kill -9 (mlflow server)

def _spawn(op: str, uri: str, args: dict, log: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "tests.registry._child", op, uri, json.dumps(args)],
                            cwd=REPO_ROOT, stdout=log.open("wb"), stderr=subprocess.STDOUT)


def _kill_when_stalled(proc: subprocess.Popen, proxy, log: Path, timeout: float = 300.0) -> None:
    deadline = time.monotonic() + timeout
    while not proxy.stalled.wait(0.5):
        assert proc.poll() is None, f"the child ended (rc {proc.returncode}) before the kill point:\n" \
                                    f"{log.read_text()[-3000:]}"
        assert time.monotonic() < deadline, "the child never reached the kill point"
    os.kill(proc.pid, signal.SIGKILL)
    assert proc.wait(timeout=60) == -signal.SIGKILL


@pytest.fixture
def server_registry(mlflow_server, s3, registry_factory):
    url, _ = mlflow_server
    experiment = f"onramp-{s3.prefix}"
    return registry_factory(tracking_uri=url, experiment=experiment, lock_lease_s=2.0), experiment


@pytest.mark.slow
@pytest.mark.parametrize("point,pattern,nth", [
    ("before-alias", b"POST /api/2.0/mlflow/registered-models/alias", 1),
    ("after-alias", b"POST /api/2.0/mlflow/registered-models/set-tag", 2),
])
def test_kill_9_during_promotion_then_the_next_run_finishes(point, pattern, nth, server_registry, stall_proxy,
                                                            make_engine, tmp_path):
    reg, experiment = server_registry
    name = f"faults--m-{uuid.uuid4().hex[:8]}"
    v1, v2 = (reg.register(make_engine(t, name=name, repo=_repo(name)), gate_passed=True) for t in ("one", "two"))
    reg.promote(name, v1)
    before = reg.production_state(name)

    stall_proxy.stall_on(pattern, nth)
    log = tmp_path / "child.log"
    proc = _spawn("promote", stall_proxy.url, {"name": name, "version": v2, "cache_dir": str(tmp_path / "c"),
                                               "experiment": experiment, "lease": 2.0}, log)
    _kill_when_stalled(proc, stall_proxy, log)
    # killed between its writes: the alias is either still the old version or already the new one
    assert reg.alias_version(name, PRODUCTION) == (v1 if point == "before-alias" else v2)

    # the next run finishes the job (after the dead holder's 2 s lease), recording the move once
    reg.promote(name, v2)
    state = reg.production_state(name)
    assert state.pending is None and state.production == v2
    assert state.seq == before.seq + 1
    assert {k: state.moves[-1][k] for k in ("op", "from", "to")} == {"op": "promote", "from": v1, "to": v2}
    assert reg.aliases(name) == {CANDIDATE: v2, PRODUCTION: v2, PREVIOUS: v1}
    assert reg.rollback(name) == v1 and reg.production_state(name).seq == before.seq + 2
    assert name + LOCK_SUFFIX not in [m.name for m in reg.client.search_registered_models()]


@pytest.mark.slow
@pytest.mark.parametrize("point,pattern", [
    ("before-version", b"POST /api/2.0/mlflow/model-versions/create"),
    ("before-candidate", b"POST /api/2.0/mlflow/registered-models/alias"),
])
def test_kill_9_during_registration_then_the_next_run_finishes(point, pattern, server_registry, stall_proxy,
                                                               make_engine, tmp_path):
    reg, experiment = server_registry
    name = f"faults--m-{uuid.uuid4().hex[:8]}"
    engine = make_engine("k", name=name, repo=_repo(name), big=2 * 1024 * 1024)
    stall_proxy.stall_on(pattern)
    log = tmp_path / "child.log"
    proc = _spawn("register", stall_proxy.url, {"engine": str(engine), "cache_dir": str(tmp_path / "c"),
                                                "experiment": experiment}, log)
    _kill_when_stalled(proc, stall_proxy, log)
    versions = reg.client.search_model_versions(f"name = '{name}'")
    if point == "before-version":  # files uploaded, no version: nothing can serve them
        assert versions == []
    else:  # the version exists only with every file stored and listed back: complete, not yet candidate
        assert len(versions) == 1 and CANDIDATE not in reg.aliases(name)
        assert reg.fetch(name, versions[0].version).is_dir()  # verified against its manifest

    got_name, version, created = steps.register(reg, engine, run_id=None, gate_passed=True, metrics={}, tags={})
    assert got_name == name and created == (point == "before-version")
    assert [v.version for v in reg.client.search_model_versions(f"name = '{name}'")] == [version]
    assert reg.aliases(name) == {CANDIDATE: version}
    path = reg.fetch(name, version)
    assert (path / "weights_big.bin").read_bytes() == (engine / "weights_big.bin").read_bytes()


# ------------------------------------------------------------------------------ MLflow down

@pytest.mark.slow
def test_mlflow_down_mid_registration_fails_naming_it_and_the_next_run_recovers(server_registry, stall_proxy,
                                                                                 make_engine, registry_factory,
                                                                                 s3, monkeypatch):
    # a request the server never answers times out (MLflow's default is 120 s), then is retried
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "15")
    _, experiment = server_registry
    reg = registry_factory(tracking_uri=stall_proxy.url, experiment=experiment)
    name = f"faults--m-{uuid.uuid4().hex[:8]}"
    engine = make_engine("down", name=name, repo=_repo(name))
    stall_proxy.stall_on(b"POST /api/2.0/mlflow/model-versions/create")
    failure: list[BaseException] = []

    def register() -> None:
        try:
            steps.register(reg, engine, run_id=None, gate_passed=True, metrics={}, tags={})
        except BaseException as exc:  # noqa: BLE001 - checked below
            failure.append(exc)

    thread = threading.Thread(target=register)
    thread.start()
    assert stall_proxy.stalled.wait(120)
    stall_proxy.down(True)  # the server goes away with the request in flight
    started = time.monotonic()
    thread.join(timeout=300)
    assert len(failure) == 1 and isinstance(failure[0], RegistryUnavailableError), failure
    assert stall_proxy.url in str(failure[0]) and "ONRAMP_MLFLOW_TRACKING_URI" in str(failure[0])
    assert time.monotonic() - started < 120  # bounded: MLflow's retries (2 here), then the error

    stall_proxy.down(False)
    got_name, version, created = steps.register(reg, engine, run_id=None, gate_passed=True, metrics={}, tags={})
    assert created and [v.version for v in reg.client.search_model_versions(f"name = '{name}'")] == [version]
    assert reg.aliases(name) == {CANDIDATE: version} and reg.fetch(name, version).is_dir()
