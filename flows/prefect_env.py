"""Point Prefect at onramp's state directory before Prefect is imported.

Prefect reads its settings from the environment when it is first imported, so every entry
point of ``flows`` (CLI commands, ``onramp up``'s children, the demo) calls
:func:`configure_prefect` first. Nothing is written to ``~/.prefect``: Prefect's home and its
SQLite database live under ``$ONRAMP_HOME/prefect``. With no ``PREFECT_API_URL``, a flow runs
against Prefect's ephemeral API (a temporary server on the same database).

The Prefect server of ``onramp up`` requires Prefect's own basic auth
(``PREFECT_SERVER_API_AUTH_STRING``, a fresh random ``onramp:<secret>`` per ``up``, kept in
``up.json``); its clients send it (``PREFECT_API_AUTH_STRING``), and onramp's few plain-HTTP
readers of the Prefect API add :func:`auth_headers`.
"""

from __future__ import annotations

import base64
import json
import os
import secrets
import urllib.error
import urllib.request
from pathlib import Path

from onramp.files import write_text_atomic
from onramp.settings import Settings

UP_STATE = "up.json"  # written by ``onramp up``: the URLs of the running services


AUTH_USER = "onramp"


def new_auth_string() -> str:
    """A fresh ``user:password`` for Prefect's basic auth (the form its UI's login asks for)."""
    return f"{AUTH_USER}:{secrets.token_urlsafe(24)}"


def auth_headers(auth: str | None = None) -> dict[str, str]:
    """The header a plain HTTP client needs for a Prefect API with basic auth: ``auth``, else this
    process's ``PREFECT_API_AUTH_STRING``; ``{}`` when there is none."""
    auth = auth or os.environ.get("PREFECT_API_AUTH_STRING")
    if not auth:
        return {}
    return {"Authorization": "Basic " + base64.b64encode(auth.encode()).decode()}


def prefect_env(settings: Settings, api_url: str | None = None, auth: str | None = None) -> dict[str, str]:
    """The environment variables that put Prefect's state under ``$ONRAMP_HOME/prefect``; with
    ``auth``, the client's basic-auth string for the server at ``api_url``."""
    home = settings.home / "prefect"
    env = {
        "PREFECT_HOME": str(home),
        "PREFECT_API_DATABASE_CONNECTION_URL": f"sqlite+aiosqlite:///{home / 'prefect.db'}",
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_LOGGING_COLOR": "false",
        # the ephemeral API starts a temporary server; on a busy 2-core machine that takes > 20 s
        "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "180",
        "DO_NOT_TRACK": "1",
    }
    if api_url:
        env["PREFECT_API_URL"] = api_url
    if auth:
        env["PREFECT_API_AUTH_STRING"] = auth
    return env


def running_services(settings: Settings) -> dict | None:
    """The services of a running ``onramp up`` for this ``ONRAMP_HOME``, or None."""
    path = settings.home / UP_STATE
    try:
        state = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    try:
        with urllib.request.urlopen(state["prefect_api"] + "/health", timeout=2):
            return state
    except (urllib.error.URLError, OSError, KeyError):
        return None


def configure_prefect(settings: Settings, *, use_running_server: bool = True) -> str | None:
    """Set Prefect's environment for this process; return the API URL in use (None: ephemeral).

    An explicit ``PREFECT_API_URL`` wins (with the caller's own ``PREFECT_API_AUTH_STRING``, if
    any); else the server of a running ``onramp up`` is used, with its auth string from up.json;
    else Prefect's ephemeral API.
    """
    (settings.home / "prefect").mkdir(parents=True, exist_ok=True)
    api_url = os.environ.get("PREFECT_API_URL")
    auth = None
    if not api_url and use_running_server:
        state = running_services(settings)
        api_url = state["prefect_api"] if state else None
        auth = state.get("prefect_auth") if state else None
    os.environ.update(prefect_env(settings, api_url, auth))
    return api_url


def write_up_state(settings: Settings, state: dict) -> Path:
    """Write up.json (it holds the admin API key and Prefect's auth string): created 0600, then
    renamed into place, so it is never readable by others, not even for an instant."""
    return write_text_atomic(settings.home / UP_STATE, json.dumps(state, indent=2) + "\n", mode=0o600)
