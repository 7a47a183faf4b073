"""Moves of the ``production`` alias: serialized, forward-only unless forced, and recoverable.

Every promote and rollback of a model runs under that model's *production lock*:

- a local registry (``sqlite:///...`` or a directory): a :mod:`filelock` file beside the
  database. The operating system releases it when its holder dies, even by ``kill -9``.
- any other tracking URI (an ``mlflow server``, a database shared by several machines): a
  mutex kept in MLflow itself, the registered model ``<name>.onramp-lock``, created with
  ``create_registered_model``. The store's unique constraint on model names lets exactly one
  creator win; the loser waits. The lock carries its holder's token and a lease
  (``lock_lease_s``); a lock whose holder died is broken once its lease has run out, and a
  holder re-reads its token right before it moves the alias (a holder that overran its
  lease aborts instead of writing).

The production record is one registered-model tag, ``onramp.production_state`` (JSON):
``seq`` (number of moves), ``production``, ``history`` (what ``rollback`` walks back),
``moves`` (the last moves, each ``{seq, op, from, to, at}``) and ``pending``. A move is
written ahead: first ``pending`` (op, from, to, the history after it), then the alias, then the
record with the move appended and ``pending`` cleared. Whoever takes the lock next first
*reconciles*: a pending move whose alias did move is recorded; one whose alias did not move
is dropped (it never happened; the interrupted command failed and a rerun does it); an alias
moved by something else (the MLflow UI) is adopted as a move. So the record always matches
the alias, and every move of the alias is recorded exactly once.

Promotion moves forward only: a version built from an older Hub revision than production's
(version tag ``hf_revision_date``, the commit's date recorded at pull time) is refused with
:class:`StalePromotionError` unless forced; ``rollback`` is the explicit way back. So when two
onboardings of the same repo race, production ends on the newer revision whichever finishes
last.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import random
import socket
import time
import uuid
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from registry.errors import LockTimeoutError, ModelNotFoundError, PromotionError, StalePromotionError
from registry.names import LOCK_SUFFIX
from registry.versions import PREVIOUS, PRODUCTION

if TYPE_CHECKING:
    from mlflow.entities.model_registry import ModelVersion

    from registry.versions import Versions

log = logging.getLogger(__name__)

__all__ = ["LOCK_SUFFIX", "LockPolicy", "ProductionState", "production_lock", "production_state", "promote",
           "reconcile", "revision_date", "rollback"]

STATE_TAG = "onramp.production_state"
LEGACY_HISTORY_TAG = "onramp.production_history"
REVISION_DATE_TAG = "hf_revision_date"
_HISTORY_MAX = 50
_MOVES_MAX = 40


@dataclass(frozen=True)
class LockPolicy:
    """How long to wait for a model's production lock, and the lease of a lock kept in MLflow."""

    timeout_s: float = 120.0
    lease_s: float = 60.0


@dataclass
class ProductionState:
    seq: int = 0
    production: str | None = None
    history: list[str] = field(default_factory=list)
    moves: list[dict[str, Any]] = field(default_factory=list)
    pending: dict[str, Any] | None = None

    def record(self, op: str, frm: str | None, to: str | None, history: list[str]) -> None:
        self.seq += 1
        self.production = to
        self.history = [h for h in history if h][-_HISTORY_MAX:]
        self.moves = [*self.moves, {"seq": self.seq, "op": op, "from": frm, "to": to,
                                    "at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}][-_MOVES_MAX:]


# ------------------------------------------------------------------------------ state

def read_state(versions: Versions, name: str) -> ProductionState:
    tags = versions.model(name).tags or {}
    raw = tags.get(STATE_TAG)
    if raw:
        try:
            data = json.loads(raw)
            return ProductionState(seq=int(data.get("seq", 0)), production=data.get("production"),
                                   history=[str(v) for v in data.get("history", [])],
                                   moves=list(data.get("moves", [])), pending=data.get("pending"))
        except (ValueError, TypeError, AttributeError):
            log.warning("%s: unreadable %s tag; starting a new production record", name, STATE_TAG)
    state = ProductionState()
    with contextlib.suppress(ValueError, TypeError):  # a registry written before the state tag
        state.history = [str(v) for v in json.loads(tags.get(LEGACY_HISTORY_TAG) or "[]")]
    state.production = versions.alias_version(name, PRODUCTION)
    return state


def _write_state(versions: Versions, name: str, state: ProductionState) -> None:
    versions.client.set_registered_model_tag(name, STATE_TAG, json.dumps(asdict(state), separators=(",", ":")))


def _set_previous_alias(versions: Versions, name: str, history: list[str]) -> None:
    from mlflow.exceptions import MlflowException

    if history:
        versions.client.set_registered_model_alias(name, PREVIOUS, history[-1])
    else:
        with contextlib.suppress(MlflowException):
            versions.client.delete_registered_model_alias(name, PREVIOUS)


def reconcile(versions: Versions, name: str) -> ProductionState:
    """Make the production record agree with the alias (call under the lock): record or drop an
    interrupted move, adopt a move made outside onramp, and fix ``previous_production``."""
    state = read_state(versions, name)
    actual = versions.alias_version(name, PRODUCTION)
    changed = False
    if state.pending:
        p, state.pending, changed = state.pending, None, True
        if actual == p.get("to") and actual != state.production:
            log.warning("%s: finishing an interrupted %s of production %s -> %s", name, p.get("op"),
                        p.get("from"), p.get("to"))
            state.record(str(p.get("op")), p.get("from"), p.get("to"), list(p.get("history") or []))
        else:
            log.warning("%s: an interrupted %s to %s never moved the alias; dropped", name, p.get("op"),
                        p.get("to"))
    if actual != state.production:
        log.warning("%s: production was moved outside onramp (%s -> %s); recording it", name,
                    state.production, actual)
        history = [*state.history, state.production] if state.production else list(state.history)
        state.record("adopted", state.production, actual, history)
        changed = True
    if changed:
        _write_state(versions, name, state)
    want_previous = state.history[-1] if state.history else None
    if changed or versions.alias_version(name, PREVIOUS) != want_previous:
        _set_previous_alias(versions, name, state.history)
    return state


# ------------------------------------------------------------------------------ the lock

def _local_store_path(uri: str) -> Path | None:
    if uri.startswith("sqlite:///"):
        return Path(uri.removeprefix("sqlite:///"))
    if uri.startswith("file://"):
        return Path(uri.removeprefix("file://")) / "mlruns.db"
    if "://" not in uri:
        return Path(uri) / "mlruns.db"
    return None


@contextlib.contextmanager
def production_lock(versions: Versions, name: str, lock: LockPolicy) -> Iterator[_Holder]:
    """Hold ``name``'s production lock for the block (see the module's doc); yields a holder whose
    ``check()`` raises if the lock was lost (a lease that ran out)."""
    path = _local_store_path(versions.tracking.tracking_uri)
    if path is not None:
        yield from _file_lock(path, name, lock.timeout_s)
    else:
        yield from _model_lock(versions, name, lock)


class _Holder:
    def __init__(self, check: Any = None):
        self._check = check

    def check(self) -> None:
        if self._check is not None:
            self._check()


def _file_lock(path: Path, name: str, timeout: float) -> Iterator[_Holder]:
    from filelock import FileLock, Timeout

    key = hashlib.sha256(name.encode()).hexdigest()[:16]
    lock_path = path.parent / f".{path.name}.production-{key}.lock"
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    lock = FileLock(str(lock_path), thread_local=False, is_singleton=False)
    try:
        lock.acquire(timeout=timeout)
    except Timeout:
        raise LockTimeoutError(f"{name}: another promote/rollback held {lock_path} for over {timeout:.0f} s",
                               "wait for it to finish and run the command again") from None
    try:
        yield _Holder()
    finally:
        lock.release()


def _model_lock(versions: Versions, name: str, lock: LockPolicy) -> Iterator[_Holder]:
    from mlflow.exceptions import MlflowException

    client, lock_name = versions.client, name + LOCK_SUFFIX
    token = uuid.uuid4().hex
    deadline = time.monotonic() + lock.timeout_s
    tagless_since: float | None = None
    while True:
        tags = {"onramp.lock_token": token, "onramp.lock_expires": f"{time.time() + lock.lease_s:.3f}",
                "onramp.lock_holder": f"{socket.gethostname()}:{os.getpid()}"}
        try:
            versions.tracking.call(lambda t=tags: client.create_registered_model(
                lock_name, tags=t, description=f"onramp: the production lock of {name} (removed when released)"))
            break
        except MlflowException as exc:
            # RESOURCE_DOES_NOT_EXIST: the store saw the name taken, then the holder released it
            # before the store could read it back; try again
            if exc.error_code == "RESOURCE_DOES_NOT_EXIST" and time.monotonic() < deadline:
                time.sleep(random.uniform(0.01, 0.05))
                continue
            if exc.error_code != "RESOURCE_ALREADY_EXISTS":
                raise
        try:
            held = client.get_registered_model(lock_name)
        except MlflowException:
            continue  # released meanwhile
        raw_expires = (held.tags or {}).get("onramp.lock_expires")
        if raw_expires is None:
            # a lock is created with its tags in one transaction; one read without them was read while
            # being deleted (MLflow loads a model and its tags in two queries): wait, but not forever
            tagless_since = tagless_since or time.monotonic()
            expires = time.time() + 1 if time.monotonic() - tagless_since < lock.lease_s else 0.0
        else:
            tagless_since = None
            expires = float(raw_expires)
        if time.time() > expires:
            log.warning("%s: breaking the production lock of %s (lease ran out)", name,
                        (held.tags or {}).get("onramp.lock_holder", "?"))
            with contextlib.suppress(MlflowException):
                client.delete_registered_model(lock_name)
            continue
        if time.monotonic() > deadline:
            raise LockTimeoutError(
                f"{name}: another promote/rollback ({(held.tags or {}).get('onramp.lock_holder', '?')}) held the "
                f"lock {lock_name!r} for over {lock.timeout_s:.0f} s",
                f"wait for it (a dead holder's lock is broken after {lock.lease_s:.0f} s) and retry")
        time.sleep(random.uniform(0.05, 0.25))

    def check() -> None:
        try:
            held = client.get_registered_model(lock_name)
        except MlflowException:
            held = None
        if held is None or (held.tags or {}).get("onramp.lock_token") != token:
            raise LockTimeoutError(f"{name}: lost the production lock (its {lock.lease_s:.0f} s lease ran "
                                   "out and another holder took it); nothing was moved",
                                   "run the command again")

    try:
        yield _Holder(check)
    finally:
        with contextlib.suppress(MlflowException):
            held = client.get_registered_model(lock_name)
            if (held.tags or {}).get("onramp.lock_token") == token:
                client.delete_registered_model(lock_name)


# ------------------------------------------------------------------------------ moves

def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def _move(versions: Versions, name: str, state: ProductionState, holder: _Holder, op: str,
          frm: str | None, to: str, history: list[str]) -> None:
    state.pending = {"op": op, "from": frm, "to": to, "history": [h for h in history if h][-_HISTORY_MAX:]}
    holder.check()
    _write_state(versions, name, state)
    versions.client.set_registered_model_alias(name, PRODUCTION, to)
    state.pending = None
    state.record(op, frm, to, history)
    _write_state(versions, name, state)
    _set_previous_alias(versions, name, state.history)


def revision_date(mv: ModelVersion) -> datetime | None:
    raw = (mv.tags or {}).get(REVISION_DATE_TAG)
    if not raw:
        return None
    try:
        return datetime.fromisoformat(raw.replace("Z", "+00:00"))
    except ValueError:
        return None


def _refuse_older(versions: Versions, name: str, mv: ModelVersion, current: str) -> None:
    try:
        cur = versions.get(name, current)
    except ModelNotFoundError:
        return  # production's version was deleted: nothing to compare with
    new_date, cur_date = revision_date(mv), revision_date(cur)
    same_revision = (mv.tags or {}).get("hf_revision") == (cur.tags or {}).get("hf_revision")
    if new_date is None or cur_date is None or same_revision or new_date >= cur_date:
        return
    rev = (mv.tags or {}).get("hf_revision", "?")[:12]
    cur_rev = (cur.tags or {}).get("hf_revision", "?")[:12]
    raise StalePromotionError(
        f"{name} version {mv.version} ({rev}, committed {new_date.isoformat()}) is older than production "
        f"version {current} ({cur_rev}, committed {cur_date.isoformat()}); production moves forward only",
        f"to go back use `onramp rollback {name}`, or `onramp promote {name} {mv.version} --force`",
    )


def promote(versions: Versions, name: str, version_or_alias: str | int, *, lock: LockPolicy,
            force: bool = False) -> str | None:
    """Point ``production`` at a version; remember the one before. Returns the previous version.

    Refused unless ``force``: a version whose gates failed (:class:`PromotionError`) and a
    version of an older Hub revision than production's (:class:`StalePromotionError`).
    Serialized with every other promote/rollback of ``name`` (see the module's doc).
    """
    mv = versions.get(name, version_or_alias)
    if mv.tags.get("gate") != "passed" and not force:
        raise PromotionError(
            f"{name} version {mv.version} did not pass its gates (gate={mv.tags.get('gate', 'unknown')})",
            f"promote a version that passed (see `onramp models`), "
            f"or use `onramp promote {name} {mv.version} --force`",
        )
    version = str(mv.version)
    with production_lock(versions, name, lock) as holder:
        state = reconcile(versions, name)
        current = state.production
        if current == version:
            return None
        if current is not None and not force:
            _refuse_older(versions, name, mv, current)
        history = [*state.history, current] if current else list(state.history)
        _move(versions, name, state, holder, "promote", current, version, history)
    with contextlib.suppress(Exception):
        versions.client.set_model_version_tag(name, version, "promoted_at", _now())
    log.info("promoted %s version %s to production (was %s)", name, version, current)
    return current


def rollback(versions: Versions, name: str, *, lock: LockPolicy) -> str:
    """Move production back to the version before the last promote; return it."""
    versions.model(name)  # a clear error for an unknown model
    with production_lock(versions, name, lock) as holder:
        state = reconcile(versions, name)
        current = state.production
        history = list(state.history)
        while history:
            previous = history.pop()
            if previous == current:
                continue
            try:
                versions.get(name, previous)
            except ModelNotFoundError:
                log.warning("%s version %s was deleted; skipping it in the rollback", name, previous)
                continue
            _move(versions, name, state, holder, "rollback", current, previous, history)
            break
        else:
            if state.history:
                state.history = []
                _write_state(versions, name, state)
                _set_previous_alias(versions, name, [])
            raise PromotionError(
                f"{name} has no earlier production version to roll back to (production: {current or 'none'})",
                f"promote a version explicitly: `onramp promote {name} VERSION`",
            )
    if current is not None:
        with contextlib.suppress(Exception):
            versions.client.set_model_version_tag(name, current, "rolled_back_at", _now())
    log.info("rolled %s back from version %s to %s", name, current, previous)
    return previous


def production_state(versions: Versions, name: str, *, lock: LockPolicy) -> ProductionState:
    """The production record (seq, production, history, recent moves), reconciled with the alias."""
    with production_lock(versions, name, lock):
        return reconcile(versions, name)
