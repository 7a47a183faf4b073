"""The one small client of an OpenAI-compatible endpoint (``onramp serve`` or any other), for
onramp's own callers: the demo, the onboard flow's wait for a swap, the evals.

    with EndpointClient("http://127.0.0.1:8000", api_key) as ep:
        reply = ep.chat("smol", "What is the capital of France?", max_tokens=16)
        ep.wait_served("smol", "3", timeout=300)

Plain httpx on the wire format (the official ``openai`` client is what the tests check the API
with). A transport failure raises :class:`EndpointUnreachable`, an answer other than 200 raises
:class:`EndpointRefused` (with its status and body); callers re-word them in their own errors.
"""

from __future__ import annotations

import time
from typing import Any

import httpx

from onramp.errors import OnrampError

__all__ = ["EndpointClient", "EndpointError", "EndpointRefused", "EndpointUnreachable", "bearer", "card_version"]


class EndpointError(OnrampError):
    """An OpenAI-compatible endpoint could not be reached, or refused a request."""


class EndpointUnreachable(EndpointError):
    def __init__(self, url: str, cause: BaseException):
        self.url, self.cause = url, cause
        super().__init__(f"endpoint {url} unreachable: {cause}", "start it with `onramp serve` or fix the URL")


class EndpointRefused(EndpointError):
    def __init__(self, url: str, status: int, body: str):
        self.url, self.status, self.body = url, status, body
        super().__init__(f"endpoint {url} answered HTTP {status}: {body[:200]}",
                         "check --model (GET /v1/models lists them) and the API key")


def bearer(api_key: str | None) -> dict[str, str]:
    """The ``Authorization`` header for ``api_key`` (none without one)."""
    return {"Authorization": f"Bearer {api_key}"} if api_key else {}


def card_version(card: dict[str, Any]) -> str | None:
    """The version a ``/v1/models`` card says is served (onramp's ``version``; a few other names)."""
    for key in ("version", "registry_version"):
        if card.get(key) is not None:
            return str(card[key])
    meta = card.get("metadata") or card.get("onramp") or {}
    return str(meta["version"]) if meta.get("version") is not None else None


class EndpointClient:
    """Chat, models, the served version and the wait for a version, against ``base_url``.

    Used as a context manager it keeps one connection pool for its calls; otherwise each call
    opens and closes its own."""

    def __init__(self, base_url: str, api_key: str | None = None, *, timeout: float = 120.0):
        self.url = base_url.rstrip("/")
        self.api_key = api_key
        self.timeout = timeout
        self._http: httpx.Client | None = None

    @property
    def headers(self) -> dict[str, str]:
        return bearer(self.api_key)

    def __enter__(self) -> EndpointClient:
        self._http = httpx.Client(base_url=self.url, headers=self.headers, timeout=self.timeout)
        return self

    def __exit__(self, *exc) -> None:
        if self._http is not None:
            self._http.close()
            self._http = None

    def async_client(self, *, timeout: float | None = None, connect: float = 10.0,
                     keepalive: int = 64) -> httpx.AsyncClient:
        """An ``httpx.AsyncClient`` on this endpoint (its key sent), without a connection limit:
        for load generators."""
        return httpx.AsyncClient(base_url=self.url, headers=self.headers,
                                 timeout=httpx.Timeout(timeout or self.timeout, connect=connect),
                                 limits=httpx.Limits(max_connections=None, max_keepalive_connections=keepalive))

    def request(self, method: str, path: str, *, timeout: float | None = None, **kw: Any) -> httpx.Response:
        """One request (any status); :class:`EndpointUnreachable` if it gets no answer."""
        kw["timeout"] = timeout or self.timeout
        try:
            if self._http is not None:
                return self._http.request(method, path, **kw)
            with httpx.Client(base_url=self.url, headers=self.headers) as http:
                return http.request(method, path, **kw)
        except httpx.HTTPError as exc:
            raise EndpointUnreachable(self.url, exc) from None

    def _ok(self, resp: httpx.Response) -> dict[str, Any]:
        if resp.status_code != 200:
            raise EndpointRefused(self.url, resp.status_code, resp.text)
        return resp.json()

    def chat(self, model: str, messages: str | list[dict[str, Any]], *, max_tokens: int, temperature: float = 0.0,
             **extra: Any) -> dict[str, Any]:
        """One non-streamed chat completion (a string is one user message); the response's JSON."""
        if isinstance(messages, str):
            messages = [{"role": "user", "content": messages}]
        body = {"model": model, "messages": messages, "max_tokens": max_tokens, "temperature": temperature, **extra}
        return self._ok(self.request("POST", "/v1/chat/completions", json=body))

    @staticmethod
    def text(reply: dict[str, Any]) -> str:
        """The first choice's message text of a chat completion ("" for none)."""
        return reply["choices"][0]["message"]["content"] or ""

    def models(self, *, timeout: float = 10.0) -> list[dict[str, Any]]:
        """The cards of ``GET /v1/models``."""
        return list(self._ok(self.request("GET", "/v1/models", timeout=timeout)).get("data", []))

    def served_version(self, model: str) -> str | None:
        """The version of ``model`` the endpoint serves now; None if it does not (or cannot say)."""
        try:
            cards = self.models()
        except (EndpointError, ValueError):
            return None
        return next((card_version(c) for c in cards if c.get("id") == model), None)

    def wait_served(self, model: str, version: str | int, *, timeout: float = 300.0, interval: float = 1.0) -> bool:
        """Poll until ``model`` is served at ``version`` (a swap); False if ``timeout`` passes first."""
        deadline = time.monotonic() + timeout
        while True:
            if self.served_version(model) == str(version):
                return True
            if time.monotonic() >= deadline:
                return False
            time.sleep(interval)
