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

from fastapi import APIRouter, FastAPI, Request
from fastapi.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field

from serving import admin
from serving.auth import ADMIN, KeyStore
from serving.drain import Drain, DrainGate
from serving.errors import RequestError
from serving.gate import MAX_BODY_BYTES, Gate, gated_routes, require_admin, require_user
from serving.http_errors import error_response, install_error_handlers
from serving.metrics import CONTENT_TYPE_LATEST, Metrics
from serving.openapi_doc import ERROR, generation_responses, openapi_document
from serving.protocol import (AdminModels, ChatCompletionRequest, ChatCompletionResponse, CompletionRequest,
                              CompletionResponse, Health, ModelCard, ModelList, Readiness,
                              RemoveResponse, SwapRequest, SwapResponse)
from serving.routing import CANARY_SUFFIX, ROUTE, VERSION_HEADER
from serving.service import OpenAIService
from serving.slots import Slots
from serving.usage import UsageMeter, current_key, usage_file

log = logging.getLogger(__name__)

__all__ = ["MAX_BODY_BYTES", "ServeConfig", "build_app", "error_response"]

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


def _model_label(slots: Slots, model: str) -> str:
    """The metrics label of a request's model: the served name (an alias counts as its model)."""
    return slots.resolve(model) if slots.live(model) is not None else "unknown"


def _openai_router() -> APIRouter:
    router = APIRouter()

    async def generate(request: Request, body, work: Callable[[OpenAIService], Awaitable]) -> Response:
        request.state.model = _model_label(request.app.state.slots, body.model)
        service: OpenAIService = request.app.state.service
        route = _route(request, body.user)
        return _stream_or_json(await _unless_disconnected(request, work(service)), route)

    @router.post("/v1/chat/completions", dependencies=[require_user],
                 responses=generation_responses(ChatCompletionResponse))
    async def chat_completions(body: ChatCompletionRequest, request: Request):
        return await generate(request, body, lambda s: s.chat(body, endpoint="/v1/chat/completions"))

    @router.post("/chat/completions", dependencies=[require_user],
                 responses=generation_responses(ChatCompletionResponse))
    async def pplx_chat_completions(body: ChatCompletionRequest, request: Request):
        return await generate(request, body, lambda s: s.chat(body, endpoint="/chat/completions", pplx=True))

    @router.post("/v1/completions", dependencies=[require_user], responses=generation_responses(CompletionResponse))
    async def completions(body: CompletionRequest, request: Request):
        return await generate(request, body, lambda s: s.completion(body, endpoint="/v1/completions"))

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
                responses={200: {"model": ModelCard}, 404: ERROR})
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
        served = [s for s in status if not s.name.endswith(CANARY_SUFFIX)]
        ready = bool(served) and all(s.state == "ready" for s in served)
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

    @router.post("/models/{name}/swap", responses={200: {"model": SwapResponse}, 404: ERROR})
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

    @router.delete("/models/{name}", responses={200: {"model": RemoveResponse}, 404: ERROR})
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
    install_error_handlers(app)
    routers = [_openai_router(), _ops_router(), _admin_router(), *routers]
    for router in routers:
        app.include_router(router)
    gated = gated_routes(routers)
    app.add_middleware(Gate, routes=gated)
    app.state.drain = Drain()  # SIGTERM drain (serving.drain): outermost, counts requests in flight
    app.add_middleware(DrainGate, drain=app.state.drain, metrics=metrics)
    app.openapi = lambda: openapi_document(app, gated)
    return app


async def _load(slots: Slots, name: str, path: Path) -> None:
    try:
        await slots.swap(name, path)
    except RequestError as err:
        log.error("model %s not loaded: %s", name, err.message)
