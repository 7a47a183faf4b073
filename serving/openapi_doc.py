"""The OpenAPI document, told what the gate and the error handlers really do."""

from __future__ import annotations

import re

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi

from serving.auth import ADMIN
from serving.gate import GatedRoute
from serving.protocol import ErrorResponse

__all__ = ["ERROR", "generation_responses", "openapi_document"]

ERROR = {"model": ErrorResponse, "description": "An error in OpenAI's shape"}


_SSE_EVENT = {"type": "object", "required": ["data"], "description": "one server-sent event",
              "properties": {"data": {"type": "string", "description": "a JSON chunk; the last one is [DONE]"}}}


def generation_responses(body: type) -> dict:
    """The responses of a generation endpoint: the whole completion, or SSE chunks when streaming."""
    return {200: {"model": body, "description": "The completion (JSON), or with stream=true its chunks (SSE)",
                  "content": {"text/event-stream": {"schema": _SSE_EVENT}}},
            404: ERROR, 429: ERROR, 503: ERROR}


def openapi_document(app: FastAPI, routes: list[GatedRoute]) -> dict:
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
