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

__all__ = ["JSON_OBJECT_GRAMMAR", "check_schema", "response_format_constraint"]

_PARAM = "response_format"

# json_object: one JSON object on one line, single spaces only (as xgrammar's any_whitespace=False).
# With free whitespace a small model at temperature 1 indents, nests and drifts until max_tokens
# (SmolLM2-135M: 5 of 20 seeded runs cut off at 200 tokens); on one line 20 of 20 ended, but one
# run in a later CI drifted inside a single string until max_tokens: strings hold at most 64 characters.
JSON_OBJECT_GRAMMAR = r'''root ::= object
value ::= object | array | string | number | "true" | "false" | "null"
object ::= "{" ws ( member ( "," ws member )* )? ws "}"
member ::= string ws ":" ws value
array ::= "[" ws ( value ( "," ws value )* )? ws "]"
string ::= "\"" char{0,64} "\""
char ::= [^"\\\x00-\x1f] | "\\" ( ["\\/bfnrt] | "u" hex hex hex hex )
hex ::= [0-9a-fA-F]
number ::= "-"? ( "0" | [1-9] [0-9]* ) ( "." [0-9]+ )? ( [eE] [-+]? [0-9]+ )?
ws ::= [ ]?
'''


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
    raise RequestError(f"response_format.type {kind!r} is not supported: use 'text', 'json_object' or "
                       "'json_schema'", param=f"{_PARAM}.type", code="invalid_value")


def check_schema(constraint: Constraint) -> None:
    """400 (naming the constraint's parameter) when its JSON schema is not a valid JSON Schema.
    Checked before the engine sees it: a grammar that fails to compile mid-batch costs a step."""
    import jsonschema

    schema = json.loads(constraint.value)
    try:
        jsonschema.validators.validator_for(schema).check_schema(schema)
    except jsonschema.SchemaError as err:
        where = "/".join(str(p) for p in err.absolute_path) or "(root)"
        raise RequestError(f"the JSON schema in {constraint.param} is not valid at {where}: {err.message}",
                           param=constraint.param, code="invalid_schema") from None
