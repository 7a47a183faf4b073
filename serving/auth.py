"""API keys: stored hashed, compared in constant time, never logged.

The keys file (``ONRAMP_KEYS_FILE``, default ``$ONRAMP_HOME/keys.json``) is a JSON list of
``{"name", "sha256", "scopes", "created"}``; ``onramp keys create NAME [--admin]`` prints a new
random key once and stores only its hash. ``ONRAMP_API_KEYS`` may hold comma-separated raw
keys for quick starts (scope ``user``; admin keys only come from the keys file).

A running server follows the keys file: :meth:`KeyStore.check` stats it at most once per
``reload_interval`` seconds (1 s) and re-reads it when its inode, size or mtime changed, so
``onramp keys revoke`` and ``onramp keys create`` take effect within about a second. A file that
became unreadable keeps the keys read last (and is logged); a deleted file holds no keys.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import os
import secrets
import time
from dataclasses import dataclass
from datetime import datetime, UTC
from pathlib import Path

from onramp.files import write_json_atomic
from serving.errors import AuthConfigError, Forbidden, Unauthorized

log = logging.getLogger(__name__)

__all__ = ["ADMIN", "USER", "ApiKey", "KeyStore", "create_key", "hash_key", "list_keys", "revoke_key"]

USER = "user"
ADMIN = "admin"
ENV_KEYS = "ONRAMP_API_KEYS"
KEY_PREFIX = "onr-"


def hash_key(raw: str) -> str:
    return hashlib.sha256(raw.encode()).hexdigest()


@dataclass(frozen=True)
class ApiKey:
    name: str
    sha256: str
    scopes: tuple[str, ...]
    rpm: int | None = None  # requests per minute (serving.usage); None: no limit
    tpm: int | None = None  # prompt + completion tokens per minute


def _read_file(path: Path) -> list[dict]:
    if not path.is_file():
        return []
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise AuthConfigError(f"cannot read the keys file {path}: {exc}",
                              "fix or delete it, then `onramp keys create NAME`") from None
    if not isinstance(data, list) or not all(isinstance(e, dict) and {"name", "sha256"} <= set(e) for e in data):
        raise AuthConfigError(f"keys file {path} is not a list of {{name, sha256, scopes}}",
                              "recreate it with `onramp keys create NAME`")
    return data


def _write_file(path: Path, entries: list[dict]) -> None:
    write_json_atomic(path, entries, mode=0o600)


def create_key(path: Path, name: str, *, admin: bool = False, rpm: int | None = None,
               tpm: int | None = None) -> str:
    """Add a key named ``name`` to the keys file and return the raw key (shown once, never stored)."""
    entries = _read_file(path)
    if any(e["name"] == name for e in entries):
        raise AuthConfigError(f"a key named {name!r} already exists in {path}",
                              f"pick another name, or `onramp keys revoke {name}` first")
    raw = KEY_PREFIX + secrets.token_urlsafe(32)
    scopes = [USER, ADMIN] if admin else [USER]
    entry = {"name": name, "sha256": hash_key(raw), "scopes": scopes,
             "created": datetime.now(UTC).isoformat(timespec="seconds")}
    for limit, value in (("rpm", rpm), ("tpm", tpm)):
        if value is not None:
            if value < 1:
                raise AuthConfigError(f"--{limit} must be at least 1 (got {value})", "leave it out for no limit")
            entry[limit] = int(value)
    entries.append(entry)
    _write_file(path, entries)
    return raw


def revoke_key(path: Path, name: str) -> None:
    entries = _read_file(path)
    kept = [e for e in entries if e["name"] != name]
    if len(kept) == len(entries):
        raise AuthConfigError(f"no key named {name!r} in {path}", "see `onramp keys list`")
    _write_file(path, kept)


def list_keys(path: Path) -> list[ApiKey]:
    return [ApiKey(e["name"], e["sha256"], tuple(e.get("scopes") or [USER]), e.get("rpm"), e.get("tpm"))
            for e in _read_file(path)]


def _signature(path: Path) -> tuple | None:
    """What changes when the keys file is rewritten (atomically: a new inode) or edited."""
    try:
        st = path.stat()
    except OSError:
        return None
    return st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns


class KeyStore:
    """The keys a server accepts. ``enabled=False`` (``--no-auth``) lets everything through.

    With ``keys_file``, the file's keys are re-read when it changes (checked at most every
    ``reload_interval`` seconds); ``keys`` then holds the keys that do not come from the file
    (``ONRAMP_API_KEYS``)."""

    def __init__(self, keys: list[ApiKey], *, enabled: bool = True, keys_file: Path | None = None,
                 reload_interval: float = 1.0):
        self.enabled = enabled
        self._fixed = list(keys)
        self.keys_file = keys_file
        self.reload_interval = reload_interval
        self._file_keys: list[ApiKey] = []
        self._signature: tuple | None = None
        self._next_stat = 0.0
        if keys_file is not None:
            self._file_keys = list_keys(keys_file)  # unreadable at start: refuse to start (AuthConfigError)
            self._signature = _signature(keys_file)

    @classmethod
    def load(cls, keys_file: Path | None, *, enabled: bool = True, env: dict | None = None,
             reload_interval: float = 1.0) -> KeyStore:
        if not enabled:
            return cls([], enabled=False)
        env = os.environ if env is None else env
        raw_env = [k.strip() for k in (env.get(ENV_KEYS) or "").split(",") if k.strip()]
        store = cls([ApiKey(f"env-{i}", hash_key(k), (USER,)) for i, k in enumerate(raw_env)],
                    keys_file=keys_file, reload_interval=reload_interval)
        if not len(store):
            raise AuthConfigError(
                f"auth is on but there are no API keys (keys file {keys_file}, ${ENV_KEYS} empty)",
                f"run `onramp keys create NAME`, or set {ENV_KEYS}=KEY, or pass --no-auth for a local test server")
        return store

    @property
    def _keys(self) -> list[ApiKey]:
        return self._file_keys + self._fixed

    def refresh(self, *, force: bool = False) -> bool:
        """Re-read the keys file if it changed since the last read; True when the keys changed.
        Without ``force`` the file is stat-ed at most once per ``reload_interval`` seconds."""
        if self.keys_file is None:
            return False
        now = time.monotonic()
        if not force and now < self._next_stat:
            return False
        self._next_stat = now + self.reload_interval
        signature = _signature(self.keys_file)
        if signature == self._signature:
            return False
        try:
            keys = list_keys(self.keys_file) if signature is not None else []
        except AuthConfigError as err:
            log.error("keys file changed but cannot be read, keeping the %d keys read before: %s",
                      len(self._file_keys), err)
            self._signature = signature  # log once per change
            return False
        self._signature = signature
        before = {k.name for k in self._file_keys}
        after = {k.name for k in keys}
        self._file_keys = keys
        log.info("keys file %s re-read: %d keys (added: %s; removed: %s)", self.keys_file, len(keys),
                 ", ".join(sorted(after - before)) or "none", ", ".join(sorted(before - after)) or "none")
        return True

    def __len__(self) -> int:
        return len(self._keys)

    def check(self, authorization: str | None, scope: str = USER) -> ApiKey | None:
        """The key behind an ``Authorization: Bearer KEY`` header, or raise 401/403."""
        if not self.enabled:
            return None
        if not authorization:
            raise Unauthorized("Missing API key: send it as 'Authorization: Bearer KEY' "
                               "(create one with `onramp keys create NAME`).")
        scheme, _, raw = authorization.partition(" ")
        if scheme.lower() != "bearer" or not raw.strip():
            raise Unauthorized("Malformed Authorization header: expected 'Bearer KEY'.")
        self.refresh()
        digest = hash_key(raw.strip())
        found = None
        for key in self._keys:  # compare against every key, so timing says nothing about which matched
            if hmac.compare_digest(digest, key.sha256):
                found = key
        if found is None:
            raise Unauthorized("Incorrect API key provided.")
        if scope not in found.scopes:
            raise Forbidden(f"This key lacks the '{scope}' scope "
                            f"(create one with `onramp keys create NAME --{scope}`).")
        return found
