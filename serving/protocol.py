"""OpenAI-compatible request and response models (pydantic), as vLLM's ``protocol.py``.

Requests accept unknown fields (OpenAI clients send extras) and the server logs their *names*,
never their values. Responses follow OpenAI's shapes exactly; the streaming chunks are built as
plain dicts in :mod:`serving.service` (one per token: a model per chunk costs throughput).
"""

from __future__ import annotations

import logging
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from pydantic_core import PydanticCustomError

log = logging.getLogger(__name__)

__all__ = [
    "ChatCompletionRequest", "ChatMessageIn", "CompletionRequest", "ErrorBody", "ErrorResponse",
    "StreamOptions", "SwapRequest", "Usage", "format_names", "ignored_fields",
]


# integer bounds: what the engines accept (openvino_genai casts to a C++ long; TensorRT-LLM's sizes are int32)
INT32_MAX = 2**31 - 1
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1
MAX_STOP_SEQUENCES = 4
MAX_STOP_CHARS = 256  # per stop sequence: the detokenizer holds back and searches this much text per token

# OpenAI parameters these engines do not apply: refused while they are unknown fields (a parameter
# that becomes a real field is implemented, so it is no longer refused), unless set to a no-op value
UNSUPPORTED: dict[str, tuple[str, tuple[Any, ...]]] = {
    "logit_bias": ("token biases are not applied by these engines", ({},)),
    "best_of": ("best_of is not supported: send separate requests", (1,)),
    "response_format": ("structured output is not supported by this server yet", ({"type": "text"},)),
    "tools": ("tool calling is not supported by this server yet", ([],)),
    "tool_choice": ("tool calling is not supported by this server yet", ("none",)),
    "functions": ("function calling is not supported by this server", ([],)),
    "function_call": ("function calling is not supported by this server", ("none",)),
    "prediction": ("predicted outputs are not supported by these engines", ()),
    "audio": ("audio output is not supported by these engines", ()),
}


def _find_surrogate(obj: Any, path: str, depth: int = 0) -> str | None:
    """The path of the first string (key or value) in ``obj`` holding a lone UTF-16 surrogate
    (``"\\ud800"`` in JSON), or None. Such a string is not Unicode text: tokenizers and UTF-8 fail on it."""
    if isinstance(obj, str):
        try:
            obj.encode("utf-8")
        except UnicodeEncodeError:
            return path or "body"
        return None
    if depth > 64:
        return None
    if isinstance(obj, dict):
        for key, value in obj.items():
            key_path = f"{path}.{key}" if path else str(key)
            if _find_surrogate(key, path, depth + 1) is not None:
                return path or "body"
            found = _find_surrogate(value, key_path, depth + 1)
            if found is not None:
                return found
    elif isinstance(obj, list):
        for i, item in enumerate(obj):
            found = _find_surrogate(item, f"{path}[{i}]", depth + 1)
            if found is not None:
                return found
    return None


def refuse(param: str, message: str) -> PydanticCustomError:
    """A validation error that names ``param`` (the app's handler reads it from ``ctx``)."""
    return PydanticCustomError("invalid_parameter", "{message}", {"param": param, "message": message})


class _OpenRequest(BaseModel):
    """Unknown fields are kept aside (``model_extra``) and only their names are logged."""

    model_config = ConfigDict(extra="allow")


class _TopRequest(_OpenRequest):
    """A whole request body: text with a lone surrogate anywhere is refused, naming where."""

    @model_validator(mode="before")
    @classmethod
    def _unicode_text(cls, data: Any) -> Any:
        where = _find_surrogate(data, "")
        if where is not None:
            raise refuse(where, "the text holds a lone UTF-16 surrogate (U+D800..U+DFFF), which is not "
                                "valid Unicode; send well-formed text")
        return data

    @model_validator(mode="after")
    def _unsupported(self):
        for name, value in (self.model_extra or {}).items():
            if name in UNSUPPORTED and value is not None and value not in UNSUPPORTED[name][1]:
                raise refuse(name, f"'{name}' is not supported: {UNSUPPORTED[name][0]}")
        return self


class TextPart(BaseModel):
    model_config = ConfigDict(extra="allow")
    type: Literal["text"]
    text: str


class ChatMessageIn(_OpenRequest):
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[TextPart] | None = None
    name: str | None = None
    tool_calls: list[dict] | None = None  # assistant: the calls it made (serving.tools)
    tool_call_id: str | None = None  # tool: the call this result answers

    def text(self) -> str:
        if self.content is None:
            return ""
        if isinstance(self.content, str):
            return self.content
        return "".join(part.text for part in self.content)


class StreamOptions(_OpenRequest):
    include_usage: bool = False


_STOP_ITEM = {"type": "string", "minLength": 1, "maxLength": MAX_STOP_CHARS}
_STOP_SCHEMA = {"anyOf": [_STOP_ITEM, {"type": "array", "items": _STOP_ITEM, "maxItems": MAX_STOP_SEQUENCES},
                          {"type": "null"}],
                "description": f"up to {MAX_STOP_SEQUENCES} stop sequences of 1 to {MAX_STOP_CHARS} characters"}


class _SamplingFields(_TopRequest):
    model: str = Field(min_length=1)
    max_tokens: int | None = Field(default=None, ge=1, le=INT32_MAX)
    temperature: float = Field(default=1.0, ge=0.0, le=2.0)
    top_p: float = Field(default=1.0, gt=0.0, le=1.0)
    top_k: int | None = Field(default=None, ge=-1, le=INT32_MAX)
    frequency_penalty: float = Field(default=0.0, ge=-2.0, le=2.0)
    presence_penalty: float = Field(default=0.0, ge=-2.0, le=2.0)
    stop: str | list[str] | None = Field(default=None, json_schema_extra=_STOP_SCHEMA)
    seed: int | None = Field(default=None, ge=INT64_MIN, le=INT64_MAX)
    n: int = Field(default=1, ge=1, le=128)  # the server's own limit (--max-n) is checked in serving.service
    stream: bool = False
    stream_options: StreamOptions | None = None
    user: str | None = None
    ignore_eos: bool = False  # extension (as vLLM's): generate max_tokens tokens; benchmarks use it

    @field_validator("stop")
    @classmethod
    def _stop_list(cls, v):
        if v is None:
            return v
        items = [v] if isinstance(v, str) else v
        if len(items) > MAX_STOP_SEQUENCES:
            raise ValueError(f"at most {MAX_STOP_SEQUENCES} stop sequences are allowed")
        if any(not s for s in items):
            raise ValueError("stop sequences must not be empty")
        if any(len(s) > MAX_STOP_CHARS for s in items):
            raise ValueError(f"a stop sequence may have at most {MAX_STOP_CHARS} characters")
        return v

    @model_validator(mode="after")
    def _stream_options_need_stream(self):
        if self.stream_options is not None and not self.stream:
            raise ValueError("stream_options is only allowed when stream is true")
        return self

    def stop_list(self) -> list[str]:
        if self.stop is None:
            return []
        return [self.stop] if isinstance(self.stop, str) else list(self.stop)


class ChatCompletionRequest(_SamplingFields):
    messages: list[ChatMessageIn] = Field(min_length=1)
    max_completion_tokens: int | None = Field(default=None, ge=1, le=INT32_MAX)
    logprobs: bool = False
    top_logprobs: int | None = Field(default=None, ge=0, le=20)
    # structured outputs and tool calls: shapes checked in serving.structured / serving.tools
    response_format: dict | None = None
    tools: list[dict] | None = None
    tool_choice: str | dict | None = None
    parallel_tool_calls: bool | None = None

    def completion_limit(self) -> int | None:
        return self.max_completion_tokens if self.max_completion_tokens is not None else self.max_tokens


class CompletionRequest(_SamplingFields):
    # token ids: lm-eval's tokenized requests
    prompt: str | list[str] | list[int] | list[list[int]] = Field(json_schema_extra={"anyOf": [
        {"type": "string", "minLength": 1},
        {"type": "array", "items": {"type": "string", "minLength": 1}, "minItems": 1, "maxItems": 1},
        {"type": "array", "items": {"type": "integer", "minimum": 0, "maximum": INT32_MAX}, "minItems": 1}]})
    max_tokens: int | None = Field(default=16, ge=1, le=INT32_MAX)  # OpenAI's default for /v1/completions
    echo: bool = False
    logprobs: int | None = Field(default=None, ge=0, le=20)
    suffix: str | None = None

    @field_validator("prompt")
    @classmethod
    def _one_prompt(cls, v):
        if isinstance(v, list) and v and all(isinstance(t, int) for t in v):
            return v  # one prompt as token ids
        if isinstance(v, list):
            if len(v) != 1:
                raise ValueError("send one prompt per request (a list of exactly one string is accepted)")
            v = v[0]
        if not v:
            raise ValueError("prompt must not be empty")
        return v

    @field_validator("suffix")
    @classmethod
    def _no_suffix(cls, v):
        if v:
            raise ValueError("suffix (insertion) is not supported by these engines")
        return v


class SwapRequest(_TopRequest):
    """POST /admin/models/{name}/swap: load ``engine_dir`` (or a registry ``version``) for ``name``."""

    model_config = ConfigDict(extra="forbid", json_schema_extra={"anyOf": [
        {"required": ["engine_dir"], "properties": {"engine_dir": {"type": "string", "minLength": 1}}},
        {"required": ["version"], "properties": {"version": {"type": "string", "minLength": 1}}}]})
    engine_dir: str | None = None
    version: str | None = None
    force: bool = Field(default=False, description="swap to a registry version whose gate did not pass")

    @model_validator(mode="after")
    def _something(self):
        if not self.engine_dir and not self.version:
            raise ValueError("give engine_dir (a built engine directory) or version (a registry version)")
        return self


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class ErrorBody(BaseModel):
    message: str
    type: str
    param: str | None = None
    code: str | None = None


class ErrorResponse(BaseModel):
    error: ErrorBody


def ignored_fields(request: BaseModel) -> list[str]:
    """Names of the unknown fields of a request and of its nested parts (values never)."""
    names: list[str] = []

    def walk(obj: Any, prefix: str) -> None:
        if isinstance(obj, BaseModel):
            for key in (obj.model_extra or {}):
                names.append(prefix + key)
            for key in type(obj).model_fields:
                walk(getattr(obj, key), f"{prefix}{key}.")
        elif isinstance(obj, list):
            for i, item in enumerate(obj):
                walk(item, f"{prefix[:-1]}[{i}].")

    walk(request, "")
    return names


def format_names(names: list[str], *, limit: int = 16, width: int = 64) -> str:
    """At most ``limit`` names, each cut to ``width`` characters and escaped (``repr``: no newlines or
    control characters reach the log), and how many more there were."""
    shown = ", ".join(repr(n[:width] + ("..." if len(n) > width else "")) for n in names[:limit])
    return shown + (f" (and {len(names) - limit} more)" if len(names) > limit else "")


# ---------------------------------------------------------------------------- responses (for /openapi.json)
# The handlers build these bodies as plain dicts (fast); the models document them. Extra fields are allowed.


class ChatMessageOut(BaseModel):
    role: Literal["assistant"]
    content: str | None = None


class ChatChoice(BaseModel):
    index: int
    message: ChatMessageOut
    logprobs: dict[str, Any] | None = None
    finish_reason: str | None = Field(description="stop, length or abort")
    delta: ChatMessageOut | None = Field(default=None, description="/chat/completions (pplx-api) only")


class ChatCompletionResponse(BaseModel):
    """A whole chat completion; with ``stream: true`` the body is ``text/event-stream`` chunks instead."""

    id: str
    object: Literal["chat.completion"]
    created: int
    model: str
    choices: list[ChatChoice]
    usage: Usage


class CompletionChoice(BaseModel):
    text: str
    index: int
    logprobs: dict[str, Any] | None = None
    finish_reason: str | None = None


class CompletionResponse(BaseModel):
    """A whole text completion; with ``stream: true`` the body is ``text/event-stream`` chunks instead."""

    id: str
    object: Literal["text_completion"]
    created: int
    model: str
    choices: list[CompletionChoice]
    usage: Usage


class ModelCard(BaseModel):
    id: str
    object: Literal["model"]
    created: int
    owned_by: str
    root: str | None = Field(default=None, description="the served model an alias points to")
    version: str
    backend: str
    max_context: int


class ModelList(BaseModel):
    object: Literal["list"]
    data: list[ModelCard]


class Health(BaseModel):
    status: Literal["ok"]


class Readiness(BaseModel):
    status: Literal["ready", "not ready"]
    models: list[dict[str, Any]] = Field(description="one entry per served model: name, state, version, ...")


class AdminModels(BaseModel):
    models: list[dict[str, Any]]


class SwapResponse(BaseModel):
    model: str
    version: str
    engine_dir: str
    previous_version: str | None = None
    seconds: float


class RemoveResponse(BaseModel):
    model: str
    removed: bool
