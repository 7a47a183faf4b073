"""Point Prefect at onramp's state directory before Prefect is imported.

Prefect reads its settings from the environment when it is first imported, so every entry
point of ``flows`` (CLI commands, ``onramp up``'s children, the demo) calls
:func:`configure_prefect` first. Nothing is written to ``~/.prefect``: Prefect's home and its
SQLite database live under ``$ONRAMP_HOME/prefect``. With no ``PREFECT_API_URL``, a flow runs
against Prefect's ephemeral API (a temporary server on the same database).
"""

from __future__ import annotations

import json
import os
import urllib.error
import urllib.request
from pathlib import Path

from onramp.files import write_text_atomic
from onramp.settings import Settings

UP_STATE = "up.json"  # written by ``onramp up``: the URLs of the running services


def prefect_env(settings: Settings, api_url: str | None = None) -> dict[str, str]:
    """The environment variables that put Prefect's state under ``$ONRAMP_HOME/prefect``."""
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

    An explicit ``PREFECT_API_URL`` wins; else the server of a running ``onramp up`` is used;
    else Prefect's ephemeral API.
    """
    (settings.home / "prefect").mkdir(parents=True, exist_ok=True)
    api_url = os.environ.get("PREFECT_API_URL")
    if not api_url and use_running_server:
        state = running_services(settings)
        api_url = state["prefect_api"] if state else None
    os.environ.update(prefect_env(settings, api_url))
    return api_url


def write_up_state(settings: Settings, state: dict) -> Path:
    """Write up.json (it holds the admin API key and Prefect's auth string): created 0600, then
    renamed into place, so it is never readable by others, not even for an instant."""
    return write_text_atomic(settings.home / UP_STATE, json.dumps(state, indent=2) + "\n", mode=0o600)
