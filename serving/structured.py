"""Structured outputs: OpenAI's ``response_format`` -> an engine :class:`~serving.engine.Constraint`.

``{"type": "text"}`` (or none) is free decoding; ``{"type": "json_object"}`` constrains the output
to one JSON object; ``{"type": "json_schema", "json_schema": {"name", "schema", "strict"}}`` to a
document valid for ``schema`` (always enforced, ``strict`` or not: the grammar is the schema).
Each backend compiles the constraint with its own grammar engine (OpenVINO GenAI's
``StructuredOutputConfig``, TensorRT-LLM's guided decoding); a schema it cannot compile is a
400 naming ``response_format``.
"""

from __future__ import annotations

import json
from typing import Any

from serving.engine import Constraint
from serving.errors import RequestError

__all__ = ["response_format_constraint"]

_PARAM = "response_format"


def response_format_constraint(response_format: Any) -> Constraint | None:
    """The constraint for a request's ``response_format`` (None: free text); 400 on a bad shape."""
    if response_format is None:
        return None
    if not isinstance(response_format, dict) or not isinstance(response_format.get("type"), str):
        raise RequestError("response_format must be an object with a 'type': 'text', 'json_object' or "
                           "'json_schema'", param=_PARAM, code="invalid_value")
    kind = response_format["type"]
    if kind == "text":
        return None
    if kind == "json_object":
        return Constraint(kind="json_object")
    if kind == "json_schema":
        spec = response_format.get("json_schema")
        if not isinstance(spec, dict) or not isinstance(spec.get("name"), str) or not spec["name"]:
            raise RequestError("response_format.json_schema must be an object with a 'name' and a 'schema'",
                               param=f"{_PARAM}.json_schema", code="invalid_value")
        schema = spec.get("schema", {})
        if not isinstance(schema, dict):
            raise RequestError("response_format.json_schema.schema must be a JSON Schema object",
                               param=f"{_PARAM}.json_schema.schema", code="invalid_value")
        if not schema:  # OpenAI: an empty schema allows any JSON
            return Constraint(kind="json_object")
        return Constraint(kind="json_schema", value=json.dumps(schema, separators=(",", ":")))
    raise RequestError(f"response_format type {kind!r} is not supported: use 'text', 'json_object' or "
                       "'json_schema'", param=f"{_PARAM}.type", code="invalid_value")
