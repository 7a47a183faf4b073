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
import time
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any
from collections.abc import Awaitable, Callable, Sequence

from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field
from starlette.exceptions import HTTPException as StarletteHTTPException

from serving.auth import ADMIN, USER, KeyStore
from serving.errors import RequestError
from serving.metrics import CONTENT_TYPE_LATEST, Metrics
from serving.protocol import ChatCompletionRequest, CompletionRequest, SwapRequest
from serving.routing import CANARY_SUFFIX, ROUTE, VERSION_HEADER
from serving.service import OpenAIService
from serving.slots import Slots

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
    resolve_version: Callable[[str, str], Path] | None = Field(
        default=None, description="(name, registry version) -> engine dir, for swaps by version")


def error_response(status: int, message: str, *, type: str = "invalid_request_error", param: str | None = None,
                   code: str | None = None, headers: dict[str, str] | None = None) -> JSONResponse:
    """The one helper that builds an error: OpenAI's shape."""
    return JSONResponse({"error": {"message": message, "type": type, "param": param, "code": code}},
                        status_code=status, headers=headers)


MAX_BODY_BYTES = 4 * 1024 * 1024  # a 4096-token context is ~16 KB of text; bodies beyond this are refused


class _BodyLimit:
    """Refuse request bodies larger than ``limit`` by their Content-Length (413, OpenAI's shape)."""

    def __init__(self, app, limit: int = MAX_BODY_BYTES):
        self.app = app
        self.limit = limit

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http":
            for key, value in scope.get("headers", ()):
                if key == b"content-length" and value.isdigit() and int(value) > self.limit:
                    response = error_response(413, f"The request body is {int(value)} bytes; the limit is "
                                              f"{self.limit}.", code="request_too_large")
                    await response(scope, receive, send)
                    return
        await self.app(scope, receive, send)


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
    route = request.scope.get("route")
    return getattr(route, "path", request.url.path)


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
        param = _param(first.get("loc", ()))
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
        found = keys.check(request.headers.get("authorization"), scope)
        request.state.key_name = found.name if found is not None else None

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
    route = {"key": user or getattr(request.state, "key_name", None)}
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


def _model_label(slots: Slots, model: str) -> str:
    """The metrics label of a request's model: the served name (an alias counts as its model)."""
    return slots.resolve(model) if slots.live(model) is not None else "unknown"


def _openai_router() -> APIRouter:
    router = APIRouter()

    @router.post("/v1/chat/completions", dependencies=[require_user])
    async def chat_completions(body: ChatCompletionRequest, request: Request):
        request.state.model = _model_label(request.app.state.slots, body.model)
        service: OpenAIService = request.app.state.service
        route = _route(request, body.user)
        work = service.chat(body, endpoint="/v1/chat/completions")
        return _stream_or_json(await _unless_disconnected(request, work), route)

    @router.post("/chat/completions", dependencies=[require_user])
    async def pplx_chat_completions(body: ChatCompletionRequest, request: Request):
        request.state.model = _model_label(request.app.state.slots, body.model)
        service: OpenAIService = request.app.state.service
        route = _route(request, body.user)
        work = service.chat(body, endpoint="/chat/completions", pplx=True)
        return _stream_or_json(await _unless_disconnected(request, work), route)

    @router.post("/v1/completions", dependencies=[require_user])
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

    @router.get("/v1/models", dependencies=[require_user])
    async def list_models(request: Request):
        slots: Slots = request.app.state.slots
        cards = [_model_card(slots.live(n)) for n in slots.names()]
        cards += [_model_card(slots.live(n), alias=a) for a, n in slots.aliases().items()]
        return {"object": "list", "data": cards}

    @router.get("/v1/models/{name:path}", dependencies=[require_user])
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

    @router.get("/healthz")
    async def healthz():
        return {"status": "ok"}

    @router.get("/readyz")
    async def readyz(request: Request):
        slots: Slots = request.app.state.slots
        status = [s.__dict__ for s in slots.status()]
        # a canary that loads or failed (serving.routing) never takes the replica out of the balancer
        ready = bool(status) and all(s["state"] == "ready" for s in status if not s["name"].endswith(CANARY_SUFFIX))
        return JSONResponse({"status": "ready" if ready else "not ready", "models": status},
                            status_code=200 if ready else 503)

    @router.get("/metrics")
    async def metrics(request: Request):
        return Response(request.app.state.metrics.render(), media_type=CONTENT_TYPE_LATEST)

    return router


def _admin_router() -> APIRouter:
    router = APIRouter(prefix="/admin", dependencies=[require_admin])

    @router.get("/models")
    async def admin_models(request: Request):
        slots: Slots = request.app.state.slots
        return {"models": [s.__dict__ | {"inflight": slots.inflight(s.name)} for s in slots.status()]}

    @router.post("/models/{name}/swap")
    async def swap(name: str, body: SwapRequest, request: Request):
        slots: Slots = request.app.state.slots
        config: ServeConfig = request.app.state.config
        engine_dir = body.engine_dir
        if engine_dir is None:
            if config.resolve_version is None:
                raise RequestError("swapping by version needs a registry: start the server with --registry, "
                                   "or give engine_dir", param="version")
            try:
                engine_dir = str(await asyncio.to_thread(config.resolve_version, name, body.version))
            except RequestError:
                raise
            except Exception as err:  # noqa: BLE001 - registry errors carry their own fix
                raise RequestError(f"cannot fetch {name} version {body.version}: {err}", param="version",
                                   code="version_not_found", status=404) from None
        previous = slots.live(name)
        t0 = time.perf_counter()
        live = await slots.swap(name, engine_dir, version=body.version)
        return {"model": name, "version": live.version, "engine_dir": live.engine_dir,
                "previous_version": previous.version if previous else None,
                "seconds": round(time.perf_counter() - t0, 2)}

    @router.delete("/models/{name}")
    async def remove(name: str, request: Request):
        await request.app.state.slots.remove(name)
        return {"model": name, "removed": True}

    return router


def build_app(config: ServeConfig | Any | None = None, *, slots: Slots | None = None,
              keys: KeyStore | None = None, startup_hooks: Sequence[Hook] = (),
              shutdown_hooks: Sequence[Hook] = (), settings: Any | None = None) -> FastAPI:
    """The server. ``config`` is a :class:`ServeConfig` or onramp ``Settings`` (then nothing is
    preloaded and the keys file comes from the settings). Engines named in ``config.engines``
    load in the background at startup (``/readyz`` says when they are live). ``startup_hooks``
    and ``shutdown_hooks`` are ``async fn(app)`` run after the engines start loading and before
    they close (e.g. a registry alias watcher that calls ``app.state.slots.swap``). ``settings``
    (onramp Settings) is kept on ``app.state.settings`` for routers that need it."""
    if config is None:
        config = ServeConfig()
    elif not isinstance(config, ServeConfig):  # onramp Settings
        settings = settings or config
        config = ServeConfig(keys_file=getattr(config, "keys_file", None))
    metrics = slots.metrics if slots is not None else Metrics()
    slots = slots or Slots(metrics=metrics, max_queue=config.max_queue, engine_options=config.engine_options)
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
    app.state.service = OpenAIService(slots, metrics, log_prompts=config.log_prompts,
                                      default_max_tokens=config.default_max_tokens)
    _install_error_handlers(app)
    app.add_middleware(_BodyLimit)
    app.include_router(_openai_router())
    app.include_router(_ops_router())
    app.include_router(_admin_router())
    try:
        from flows.webhook import router as webhook_router
    except ModuleNotFoundError as exc:
        if exc.name not in ("flows.webhook", "flows"):
            raise
    else:
        app.include_router(webhook_router)
    return app


async def _load(slots: Slots, name: str, path: Path) -> None:
    try:
        await slots.swap(name, path)
    except RequestError as err:
        log.error("model %s not loaded: %s", name, err.message)
