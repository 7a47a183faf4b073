"""The one plain-HTTP reader of the Prefect API (flow runs, task runs, artifacts), for the demo,
the benchmarks and whoever follows a run from outside it.

Plain HTTP, not Prefect's client: Prefect 3.8.8's clients send ``limit``/``sort`` as null in
their filters, which its own server refuses (422). The server of ``onramp up`` wants basic auth:
the header comes from :func:`flows.prefect_env.auth_headers`.

    with PrefectAPI() as api:
        runs = api.flow_runs({"deployments": {"name": {"any_": ["onboard"]}}})
"""

from __future__ import annotations

import os
from typing import Any

import httpx

from flows.errors import FlowsError
from flows.prefect_env import auth_headers

__all__ = ["PrefectAPI", "prefect_api_url"]


def prefect_api_url() -> str:
    """This process's Prefect API URL (``PREFECT_API_URL``, else Prefect's setting)."""
    api = os.environ.get("PREFECT_API_URL")
    if not api:
        from prefect.settings import PREFECT_API_URL

        api = PREFECT_API_URL.value()
    if not api:
        raise FlowsError("no Prefect API to read runs from", "start the services (onramp up) first")
    return str(api).rstrip("/")


class PrefectAPI:
    """A client of the Prefect API at ``api`` (default: :func:`prefect_api_url`), with ``auth``
    (default: ``PREFECT_API_AUTH_STRING``); a context manager."""

    def __init__(self, api: str | None = None, auth: str | None = None, *, timeout: float = 15.0):
        self.url = (api or prefect_api_url()).rstrip("/")
        self.http = httpx.Client(base_url=self.url + "/", timeout=timeout, headers=auth_headers(auth))

    def __enter__(self) -> PrefectAPI:
        return self

    def __exit__(self, *exc) -> None:
        self.http.close()

    def _post(self, path: str, body: dict[str, Any]) -> Any:
        resp = self.http.post(path, json=body)
        resp.raise_for_status()
        return resp.json()

    def flow_runs(self, filters: dict[str, Any], *, limit: int = 50) -> list[dict[str, Any]]:
        """``POST /flow_runs/filter`` with ``filters`` (e.g. ``{"flow_runs": {...}, "deployments": {...}}``)."""
        return self._post("flow_runs/filter", {**filters, "limit": limit})

    def flow_run(self, run_id: str) -> dict[str, Any]:
        resp = self.http.get(f"flow_runs/{run_id}")
        resp.raise_for_status()
        return resp.json()

    def task_runs(self, flow_run_id: str, *, limit: int = 200) -> list[dict[str, Any]]:
        """The task runs of one flow run."""
        return self._post("task_runs/filter", {"task_runs": {"flow_run_id": {"any_": [str(flow_run_id)]}},
                                               "limit": limit})

    def artifacts(self, keys: list[str], *, latest: bool = False, limit: int = 50) -> list[dict[str, Any]]:
        """The artifacts with these keys (``latest``: the newest of each key only)."""
        path = "artifacts/latest/filter" if latest else "artifacts/filter"
        return self._post(path, {"artifacts": {"key": {"any_": keys}}, "limit": limit})
