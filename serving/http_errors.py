"""Every HTTP error in OpenAI's shape ``{"error": {"message", "type", "param", "code"}}``: the one
helper that builds one, and the app's exception handlers (counted in the request metrics)."""

from __future__ import annotations

import logging
from typing import Any
from collections.abc import Sequence

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from serving.errors import RequestError
from serving.metrics import Metrics

log = logging.getLogger("serving.app")

__all__ = ["UNMATCHED", "error_response", "install_error_handlers"]

UNMATCHED = "unmatched"  # the endpoint label of every path no route serves


def error_response(status: int, message: str, *, type: str = "invalid_request_error", param: str | None = None,
                   code: str | None = None, headers: dict[str, str] | None = None) -> JSONResponse:
    """The one helper that builds an error: OpenAI's shape."""
    return JSONResponse({"error": {"message": message, "type": type, "param": param, "code": code}},
                        status_code=status, headers=headers)


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


def install_error_handlers(app: FastAPI) -> None:
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
