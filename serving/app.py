"""The FastAPI app: ``build_app(config)`` creates every service once; handlers stay thin.

Endpoints: ``POST /v1/chat/completions`` (OpenAI), ``POST /chat/completions`` (pplx-api's wire
format), ``POST /v1/completions``, ``GET /v1/models``, ``GET /healthz``, ``GET /readyz``,
``GET /metrics``, and the admin endpoints ``GET /admin/models``,
``POST /admin/models/{name}/swap``, ``DELETE /admin/models/{name}``.
Every error has OpenAI's shape ``{"error": {"message", "type", "param", "code"}}``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import time
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from collections.abc import Awaitable, Callable, Sequence

from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.routing import APIRoute
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.utils import get_openapi
from fastapi.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field
from starlette.exceptions import HTTPException as StarletteHTTPException

from serving import admin
from serving.auth import ADMIN, USER, KeyStore
from serving.drain import Drain, DrainGate
from serving.errors import RequestError
from serving.metrics import CONTENT_TYPE_LATEST, Metrics
from serving.protocol import (AdminModels, ChatCompletionRequest, ChatCompletionResponse, CompletionRequest,
                              CompletionResponse, ErrorResponse, Health, ModelCard, ModelList, Readiness,
                              RemoveResponse, SwapRequest, SwapResponse)
from serving.routing import CANARY_SUFFIX, ROUTE, VERSION_HEADER
from serving.service import OpenAIService
from serving.slots import Slots
from serving.usage import UsageMeter, current_key, usage_file

log = logging.getLogger(__name__)

__all__ = ["ServeConfig", "build_app", "error_response"]

Hook = Callable[[FastAPI], Awaitable[None]]


class ServeConfig(BaseModel):
    """What one server serves and how. Internal config: unknown fields are refused."""

    model_config = ConfigDict(extra="forbid", arbitrary_types_allowed=True)

    engines: dict[str, Path] = Field(default_factory=dict, description="served name -> engine directory")
    auth: bool = True
    keys_file: Path | None = None
    max_queue: int = Field(128, ge=1, description="requests waiting + running per model; beyond: 429")
    engine_options: dict[str, Any] = Field(default_factory=dict, description="passed to the backend")
    log_prompts: bool = False
    default_max_tokens: int | None = Field(
        default=None, ge=1, description="cap for requests that set no max_tokens (default: the context left)")
    max_n: int = Field(8, ge=1, le=128, description="most choices (n) one request may ask for")
    resolve_version: Callable[..., Path] | None = Field(
        default=None, description="(name, registry version, force=) -> engine dir, for swaps by version")
    swap_roots: list[Path] = Field(
        default_factory=list, description="directories engine_dir swaps may load from (besides `engines`)")
    swap_timeout_s: float = Field(600.0, gt=0, description="bound on an engine's load + warm-up in a swap")


def error_response(status: int, message: str, *, type: str = "invalid_request_error", param: str | None = None,
                   code: str | None = None, headers: dict[str, str] | None = None) -> JSONResponse:
    """The one helper that builds an error: OpenAI's shape."""
    return JSONResponse({"error": {"message": message, "type": type, "param": param, "code": code}},
                        status_code=status, headers=headers)


MAX_BODY_BYTES = 4 * 1024 * 1024  # a 4096-token context is ~16 KB of text; bodies beyond this are refused
UNMATCHED = "unmatched"  # the endpoint label of every path no route serves


@dataclass(frozen=True)
class _GatedRoute:
    path: str  # the route template (the metrics label)
    regex: re.Pattern
    methods: frozenset[str]
    key_scope: str | None  # the key scope it declares (require_user/require_admin), or None


def _gated_routes(routers: Sequence[APIRouter]) -> list[_GatedRoute]:
    """What the gate needs to know of each route, read from the routers' own declarations."""
    out = []
    for router in routers:
        for route in router.routes:
            if isinstance(route, APIRoute):
                deps = route.dependencies
                scope = ADMIN if any(d is require_admin for d in deps) else \
                    USER if any(d is require_user for d in deps) else None
                out.append(_GatedRoute(route.path, route.path_regex, frozenset(route.methods), scope))
    return out


class _Gate:
    """Runs before routing reads a request's body: the API key its route needs is checked first
    (401/403, the body never read), then the body is read here and refused (413) once it passes
    ``limit`` bytes, whatever its transfer encoding (Content-Length or chunked). The handler then
    gets the body already read."""

    def __init__(self, app, routes: list[_GatedRoute], limit: int = MAX_BODY_BYTES):
        self.app = app
        self.routes = routes
        self.limit = limit

    def _route(self, scope) -> _GatedRoute | None:
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


def _param(loc: Sequence[Any]) -> str | None:
    parts = [p for p in loc if p != "body"]
    out = ""
    for p in parts:
        if isinstance(p, int):
            out += f"[{p}]"
        elif p in ("str", "int", "float", "bool") or "[" in str(p):
            continue  # pydantic's union branch names are not parameters
        else:
            out += ("." if out else "") + str(p)
    return out or None


def _endpoint(request: Request) -> str:
    """The metrics label of a request's endpoint: its route template; every unknown path shares one."""
    return getattr(request.scope.get("route"), "path", None) or UNMATCHED


def _count_error(request: Request, status: int) -> None:
    metrics: Metrics = request.app.state.metrics
    model = getattr(request.state, "model", "") or ""
    metrics.requests.labels(model, _endpoint(request), str(status)).inc()


def _install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(RequestError)
    async def _request_error(request: Request, exc: RequestError):
        _count_error(request, exc.status)
        return error_response(exc.status, exc.message, type=exc.type, param=exc.param, code=exc.code,
                              headers=exc.headers)

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, exc: RequestValidationError):
        _count_error(request, 400)
        errors = exc.errors()
        first = errors[0] if errors else {"loc": (), "msg": "invalid request", "type": ""}
        if first.get("type") == "json_invalid":
            return error_response(400, f"The request body is not valid JSON: {first.get('ctx', {}).get('error', '')}",
                                  code="invalid_json")
        param = (first.get("ctx") or {}).get("param") or _param(first.get("loc", ()))
        msg = str(first.get("msg", "invalid value")).removeprefix("Value error, ")
        if first.get("type") == "missing":
            message = f"Missing required parameter: '{param}'." if param else "The request body is missing."
        else:
            message = f"Invalid value for '{param}': {msg}." if param else f"Invalid request: {msg}."
        return error_response(400, message, param=param, code="invalid_value" if first.get("type") != "missing"
                              else "missing_required_parameter")

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException):
        _count_error(request, exc.status_code)
        kind = "not_found_error" if exc.status_code == 404 else "invalid_request_error"
        message = str(exc.detail)
        if exc.status_code == 404:
            message = f"Unknown path {request.method} {request.url.path}."
        elif exc.status_code == 405:
            message = f"Method {request.method} is not allowed on {request.url.path}."
        return error_response(exc.status_code, message, type=kind, headers=getattr(exc, "headers", None))

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception):
        log.exception("unhandled error on %s", request.url.path)
        _count_error(request, 500)
        return error_response(500, "Internal server error; see the server log.", type="server_error")


def _require(scope: str):
    async def check(request: Request) -> None:
        keys: KeyStore = request.app.state.keys
        current_key.set(keys.check(request.headers.get("authorization"), scope))  # usage is billed to it

    return check


require_user = Depends(_require(USER))
require_admin = Depends(_require(ADMIN))


def _stream_or_json(result, route: dict | None = None) -> Response:
    extra = {VERSION_HEADER: route["version"]} if route and route.get("version") else {}
    if isinstance(result, Response):
        return result
    if isinstance(result, dict):
        return JSONResponse(result, headers=extra or None)
    return StreamingResponse(result, media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no", **extra})


def _route(request: Request, user: str | None) -> dict:
    """The request's canary routing record (see serving.routing): keyed by ``user``, else the key name."""
    key = current_key.get()
    route = {"key": user or (key.name if key is not None else None)}
    ROUTE.set(route)
    return route


async def _unless_disconnected(request: Request, work: Awaitable) -> Any:
    """Await ``work``, cancelling it (which aborts its engine request) if the client goes away."""
    task = asyncio.ensure_future(work)
    try:
        while True:
            done, _ = await asyncio.wait({task}, timeout=0.5)
            if done:
                return task.result()
            if await request.is_disconnected():
                task.cancel()
                with contextlib.suppress(BaseException):
                    await task
                log.info("client went away from %s; request aborted", request.url.path)
                return Response(status_code=499)
    finally:
        if not task.done():
            task.cancel()


_ERROR = {"model": ErrorResponse, "description": "An error in OpenAI's shape"}


_SSE_EVENT = {"type": "object", "required": ["data"], "description": "one server-sent event",
              "properties": {"data": {"type": "string", "description": "a JSON chunk; the last one is [DONE]"}}}


def _generation(body: type) -> dict:
    """The responses of a generation endpoint: the whole completion, or SSE chunks when streaming."""
    return {200: {"model": body, "description": "The completion (JSON), or with stream=true its chunks (SSE)",
                  "content": {"text/event-stream": {"schema": _SSE_EVENT}}},
            404: _ERROR, 429: _ERROR, 503: _ERROR}


def _openapi_document(app: FastAPI, routes: list[_GatedRoute]) -> dict:
    """FastAPI's document, told what the gate and the error handlers really do: errors are 400s in
    OpenAI's shape (never 422), a body can be refused with 413, a route that needs a key says so
    (bearer) and can answer 401 (and 403 for the admin scope)."""
    if app.openapi_schema:
        return app.openapi_schema
    doc = get_openapi(title=app.title, version=app.version, description=app.description, routes=app.routes)
    scopes = {(re.sub(r":\w+}", "}", r.path), m.lower()): r.key_scope for r in routes for m in r.methods}
    error = {"description": "An error in OpenAI's shape",
             "content": {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorResponse"}}}}
    for path, ops in doc.get("paths", {}).items():
        for method, op in ops.items():
            responses = op.setdefault("responses", {})
            if responses.get("422", {}).get("description") == "Validation Error":
                del responses["422"]  # FastAPI's default; the handlers answer 400
            if op.get("requestBody") or op.get("parameters"):
                responses.setdefault("400", error)
            if op.get("requestBody"):
                responses.setdefault("413", error)
            key_scope = scopes.get((path, method))
            if key_scope is not None:
                op["security"] = [{"bearer": []}]
                responses.setdefault("401", error)
                if key_scope == ADMIN:
                    responses.setdefault("403", error)
    components = doc.setdefault("components", {})
    components.setdefault("schemas", {})["ErrorResponse"] = ErrorResponse.model_json_schema(
        ref_template="#/components/schemas/{model}")
    for name, sub in ErrorResponse.model_json_schema(ref_template="#/components/schemas/{model}").get(
            "$defs", {}).items():
        components["schemas"].setdefault(name, sub)
    components["schemas"]["ErrorResponse"].pop("$defs", None)
    for unused in ("HTTPValidationError", "ValidationError"):
        components["schemas"].pop(unused, None)
    components["securitySchemes"] = {"bearer": {"type": "http", "scheme": "bearer",
                                                "description": "an API key: `onramp keys create NAME`"}}
    app.openapi_schema = doc
    return doc


def _model_label(slots: Slots, model: str) -> str:
    """The metrics label of a request's model: the served name (an alias counts as its model)."""
    return slots.resolve(model) if slots.live(model) is not None else "unknown"


def _openai_router() -> APIRouter:
    router = APIRouter()

    @router.post("/v1/chat/completions", dependencies=[require_user], responses=_generation(ChatCompletionResponse))
    async def chat_completions(body: ChatCompletionRequest, request: Request):
        request.state.model = _model_label(request.app.state.slots, body.model)
        service: OpenAIService = request.app.state.service
        route = _route(request, body.user)
        work = service.chat(body, endpoint="/v1/chat/completions")
        return _stream_or_json(await _unless_disconnected(request, work), route)

    @router.post("/chat/completions", dependencies=[require_user], responses=_generation(ChatCompletionResponse))
    async def pplx_chat_completions(body: ChatCompletionRequest, request: Request):
        request.state.model = _model_label(request.app.state.slots, body.model)
        service: OpenAIService = request.app.state.service
        route = _route(request, body.user)
        work = service.chat(body, endpoint="/chat/completions", pplx=True)
        return _stream_or_json(await _unless_disconnected(request, work), route)

    @router.post("/v1/completions", dependencies=[require_user], responses=_generation(CompletionResponse))
    async def completions(body: CompletionRequest, request: Request):
        request.state.model = _model_label(request.app.state.slots, body.model)
        service: OpenAIService = request.app.state.service
        route = _route(request, body.user)
        work = service.completion(body, endpoint="/v1/completions")
        return _stream_or_json(await _unless_disconnected(request, work), route)

    def _model_card(live, alias: str | None = None) -> dict:
        info = live.engine.describe()
        return {"id": alias or live.name, "object": "model", "created": int(live.since), "owned_by": "onramp",
                "root": live.name, "version": live.version, "backend": info.backend, "max_context": info.max_context}

    @router.get("/v1/models", dependencies=[require_user], responses={200: {"model": ModelList}})
    async def list_models(request: Request):
        slots: Slots = request.app.state.slots
        cards = [_model_card(slots.live(n)) for n in slots.names()]
        cards += [_model_card(slots.live(n), alias=a) for a, n in slots.aliases().items()]
        return {"object": "list", "data": cards}

    @router.get("/v1/models/{name:path}", dependencies=[require_user],
                responses={200: {"model": ModelCard}, 404: _ERROR})
    async def get_model(name: str, request: Request):
        slots: Slots = request.app.state.slots
        live = slots.live(name)
        if live is None:
            from serving.errors import ModelNotFound

            raise ModelNotFound(name, slots.names())
        return _model_card(live, alias=name if name != live.name else None)

    return router


def _ops_router() -> APIRouter:
    router = APIRouter()

    @router.get("/healthz", responses={200: {"model": Health}})
    async def healthz():
        return {"status": "ok"}

    @router.get("/readyz", responses={200: {"model": Readiness}, 503: {"model": Readiness}})
    async def readyz(request: Request):
        """Each model's state; errors, paths and the registry follower's backoff with the admin key."""
        slots: Slots = request.app.state.slots
        status = slots.status()
        # a canary that loads or failed (serving.routing) never takes the replica out of the balancer
        ready = bool(status) and all(s.state == "ready" for s in status if not s.name.endswith(CANARY_SUFFIX))
        try:
            request.app.state.keys.check(request.headers.get("authorization"), ADMIN)
            models = admin.detailed_status(slots, getattr(request.app.state, "follower", None))
        except RequestError:
            models = admin.public_status(status)
        return JSONResponse({"status": "ready" if ready else "not ready", "models": models},
                            status_code=200 if ready else 503)

    @router.get("/metrics", response_class=PlainTextResponse)
    async def metrics(request: Request):
        return PlainTextResponse(request.app.state.metrics.render(), media_type=CONTENT_TYPE_LATEST)

    return router


def _admin_router() -> APIRouter:
    router = APIRouter(prefix="/admin", dependencies=[require_admin])

    @router.get("/models", responses={200: {"model": AdminModels}})
    async def admin_models(request: Request):
        return {"models": admin.detailed_status(request.app.state.slots, getattr(request.app.state, "follower", None))}

    @router.post("/models/{name}/swap", responses={200: {"model": SwapResponse}, 404: _ERROR})
    async def swap(name: str, body: SwapRequest, request: Request):
        slots: Slots = request.app.state.slots
        config: ServeConfig = request.app.state.config
        engine_dir = await admin.swap_target(config, name, body.engine_dir, body.version, force=body.force)
        previous = slots.live(name)
        t0 = time.perf_counter()
        live = await slots.swap(name, engine_dir, version=body.version)
        return {"model": name, "version": live.version, "engine_dir": live.engine_dir,
                "previous_version": previous.version if previous else None,
                "seconds": round(time.perf_counter() - t0, 2)}

    @router.delete("/models/{name}", responses={200: {"model": RemoveResponse}, 404: _ERROR})
    async def remove(name: str, request: Request):
        await request.app.state.slots.remove(name)
        return {"model": name, "removed": True}

    return router


def build_app(config: ServeConfig | Any | None = None, *, slots: Slots | None = None,
              keys: KeyStore | None = None, startup_hooks: Sequence[Hook] = (),
              shutdown_hooks: Sequence[Hook] = (), settings: Any | None = None,
              routers: Sequence[APIRouter] = ()) -> FastAPI:
    """The server. ``config`` is a :class:`ServeConfig` or onramp ``Settings`` (then nothing is
    preloaded and the keys file comes from the settings). Engines named in ``config.engines``
    load in the background at startup (``/readyz`` says when they are live). ``startup_hooks``
    and ``shutdown_hooks`` are ``async fn(app)`` run after the engines start loading and before
    they close (e.g. a registry alias watcher that calls ``app.state.slots.swap``). ``settings``
    (onramp Settings) is kept on ``app.state.settings`` for routers that need it. ``routers`` are
    more routes the caller mounts (``onramp serve`` mounts the Hub webhook of flows), gated by the
    API-key dependencies they declare."""
    if config is None:
        config = ServeConfig()
    elif not isinstance(config, ServeConfig):  # onramp Settings
        settings = settings or config
        config = ServeConfig(keys_file=getattr(config, "keys_file", None))
    metrics = slots.metrics if slots is not None else Metrics()
    slots = slots or Slots(metrics=metrics, max_queue=config.max_queue, engine_options=config.engine_options,
                           swap_timeout_s=config.swap_timeout_s)
    keys = keys or KeyStore.load(config.keys_file, enabled=config.auth)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        loading = [asyncio.create_task(_load(slots, name, path)) for name, path in config.engines.items()]
        app.state.loading = loading
        for hook in startup_hooks:
            await hook(app)
        try:
            yield
        finally:
            for hook in shutdown_hooks:
                try:
                    await hook(app)
                except Exception:  # noqa: BLE001
                    log.exception("shutdown hook failed")
            for task in loading:
                task.cancel()
            await slots.close()

    app = FastAPI(title="onramp", version="0.1.0", lifespan=lifespan,
                  description="OpenAI- and pplx-api-compatible chat completions over hot-swappable engines.")
    app.state.config = config
    app.state.settings = settings  # onramp Settings when given (the webhook router reads its secret there)
    app.state.slots = slots
    app.state.metrics = metrics
    app.state.keys = keys
    usage = UsageMeter(metrics.registry, usage_file(config.keys_file) if config.keys_file and config.auth else None)
    app.state.usage = usage
    app.state.service = OpenAIService(slots, metrics, log_prompts=config.log_prompts,
                                      default_max_tokens=config.default_max_tokens, usage=usage,
                                      max_n=config.max_n)
    _install_error_handlers(app)
    routers = [_openai_router(), _ops_router(), _admin_router(), *routers]
    for router in routers:
        app.include_router(router)
    gated = _gated_routes(routers)
    app.add_middleware(_Gate, routes=gated)
    app.state.drain = Drain()  # SIGTERM drain (serving.drain): outermost, counts requests in flight
    app.add_middleware(DrainGate, drain=app.state.drain, metrics=metrics)
    app.openapi = lambda: _openapi_document(app, gated)
    return app


async def _load(slots: Slots, name: str, path: Path) -> None:
    try:
        await slots.swap(name, path)
    except RequestError as err:
        log.error("model %s not loaded: %s", name, err.message)
