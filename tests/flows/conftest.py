"""Fixtures of the flows tests.

Prefect is pointed at a throw-away home before it is imported (nothing goes to ~/.prefect),
and one temporary Prefect API server (``prefect_test_harness``) serves the whole session.
"""

from __future__ import annotations

import asyncio
import os
import tempfile
import time

import pytest
from datetime import UTC

os.environ.setdefault("PREFECT_HOME", tempfile.mkdtemp(prefix="onramp-test-prefect-"))
os.environ["PREFECT_SERVER_ANALYTICS_ENABLED"] = "false"
os.environ["DO_NOT_TRACK"] = "1"


@pytest.fixture(scope="session")
def prefect_server():
    """A temporary Prefect API (its own SQLite database) for the whole session."""
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=180):
        yield


def read_events(name: str, *, min_count: int = 1, timeout: float = 20.0, since: float | None = None) -> list[dict]:
    """Events named ``name`` as the Prefect server stored them (polls until ``min_count`` arrive)."""
    from prefect.client.orchestration import get_client
    from prefect.events.worker import EventsWorker

    EventsWorker.instance().wait_until_empty()

    async def fetch() -> list[dict]:
        body: dict = {"filter": {"event": {"name": [name]}}, "limit": 50}
        if since is not None:
            from datetime import datetime

            body["filter"]["occurred"] = {"since": datetime.fromtimestamp(since, UTC).isoformat()}
        async with get_client() as client:
            deadline = time.monotonic() + timeout
            while True:
                resp = await client._client.post("/events/filter", json=body)
                resp.raise_for_status()
                events = resp.json()["events"]
                if len(events) >= min_count or time.monotonic() > deadline:
                    return events
                await asyncio.sleep(0.3)

    return asyncio.run(fetch())
