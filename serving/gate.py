"""The gate in front of routing: a route's API key is checked before its body is read, and a body
over the limit is refused (413). ``require_user`` / ``require_admin`` are the routes' key scopes."""

from __future__ import annotations

import re
from dataclasses import dataclass
from collections.abc import Sequence

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse, Response
from fastapi.routing import APIRoute

from serving.auth import ADMIN, USER, KeyStore
from serving.errors import RequestError
from serving.http_errors import UNMATCHED, error_response
from serving.metrics import Metrics
from serving.usage import current_key

__all__ = ["MAX_BODY_BYTES", "Gate", "GatedRoute", "gated_routes", "require_admin", "require_user"]

MAX_BODY_BYTES = 4 * 1024 * 1024  # a 4096-token context is ~16 KB of text; bodies beyond this are refused


@dataclass(frozen=True)
class GatedRoute:
    path: str  # the route template (the metrics label)
    regex: re.Pattern
    methods: frozenset[str]
    key_scope: str | None  # the key scope it declares (require_user/require_admin), or None


def gated_routes(routers: Sequence[APIRouter]) -> list[GatedRoute]:
    """What the gate needs to know of each route, read from the routers' own declarations."""
    out = []
    for router in routers:
        for route in router.routes:
            if isinstance(route, APIRoute):
                deps = route.dependencies
                scope = ADMIN if any(d is require_admin for d in deps) else \
                    USER if any(d is require_user for d in deps) else None
                out.append(GatedRoute(route.path, route.path_regex, frozenset(route.methods), scope))
    return out


class Gate:
    """Runs before routing reads a request's body: the API key its route needs is checked first
    (401/403, the body never read), then the body is read here and refused (413) once it passes
    ``limit`` bytes, whatever its transfer encoding (Content-Length or chunked). The handler then
    gets the body already read."""

    def __init__(self, app, routes: list[GatedRoute], limit: int = MAX_BODY_BYTES):
        self.app = app
        self.routes = routes
        self.limit = limit

    def _route(self, scope) -> GatedRoute | None:
        path = scope["path"]
        root = scope.get("root_path") or ""
        if root and path.startswith(root):
            path = path[len(root):]
        for route in self.routes:
            if scope["method"] in route.methods and route.regex.match(path):
                return route
        return None

    async def _refuse(self, scope, receive, send, route, response: Response) -> None:
        metrics: Metrics = scope["app"].state.metrics
        metrics.requests.labels("", route.path if route else UNMATCHED, str(response.status_code)).inc()
        await response(scope, receive, send)

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        route = self._route(scope)
        needed = route.key_scope if route else None
        if needed is not None:
            headers = dict(scope.get("headers") or ())
            authorization = headers.get(b"authorization")
            try:
                scope["app"].state.keys.check(authorization.decode("latin-1") if authorization else None, needed)
            except RequestError as err:
                await self._refuse(scope, receive, send, route, error_response(
                    err.status, err.message, type=err.type, param=err.param, code=err.code))
                return
        for key, value in scope.get("headers", ()):
            if key == b"content-length" and value.isdigit() and int(value) > self.limit:
                await self._refuse(scope, receive, send, route, _too_large(f"{int(value)} bytes", self.limit))
                return
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] != "http.request":
                return  # the client went away before its body was read
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.limit:
                await self._refuse(scope, receive, send, route, _too_large(f"over {self.limit} bytes", self.limit))
                return
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        body = b"".join(chunks)
        replayed = False

        async def replay():
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()  # then http.disconnect, as the server sends it

        await self.app(scope, replay, send)


def _too_large(size: str, limit: int) -> JSONResponse:
    return error_response(413, f"The request body is {size}; the limit is {limit}.", code="request_too_large")


def _require(scope: str):
    async def check(request: Request) -> None:
        keys: KeyStore = request.app.state.keys
        current_key.set(keys.check(request.headers.get("authorization"), scope))  # usage is billed to it

    return check


require_user = Depends(_require(USER))
require_admin = Depends(_require(ADMIN))
