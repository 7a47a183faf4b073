"""OpenAI-compatible request and response models (pydantic), as vLLM's ``protocol.py``.

Requests accept unknown fields (OpenAI clients send extras) and the server logs their *names*,
never their values. Responses follow OpenAI's shapes exactly; the streaming chunks are built as
plain dicts in :mod:`serving.service` (one per token: a model per chunk costs throughput).
"""

from __future__ import annotations

import logging
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

log = logging.getLogger(__name__)

__all__ = [
    "ChatCompletionRequest", "ChatMessageIn", "CompletionRequest", "ErrorBody", "ErrorResponse",
    "StreamOptions", "SwapRequest", "Usage", "ignored_fields",
]


class _OpenRequest(BaseModel):
    """Unknown fields are kept aside (``model_extra``) and only their names are logged."""

    model_config = ConfigDict(extra="allow")


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


class _SamplingFields(_OpenRequest):
    model: str = Field(min_length=1)
    max_tokens: int | None = Field(default=None, ge=1)
    temperature: float = Field(default=1.0, ge=0.0, le=2.0)
    top_p: float = Field(default=1.0, gt=0.0, le=1.0)
    top_k: int | None = Field(default=None, ge=-1)
    frequency_penalty: float = Field(default=0.0, ge=-2.0, le=2.0)
    presence_penalty: float = Field(default=0.0, ge=-2.0, le=2.0)
    stop: str | list[str] | None = None
    seed: int | None = None
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
        if len(items) > 4:
            raise ValueError("at most 4 stop sequences are allowed")
        if any(not s for s in items):
            raise ValueError("stop sequences must not be empty")
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
    max_completion_tokens: int | None = Field(default=None, ge=1)
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
    prompt: str | list[str] | list[int] | list[list[int]]  # token ids: lm-eval's tokenized requests
    max_tokens: int | None = Field(default=16, ge=1)  # OpenAI's default for /v1/completions
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


class SwapRequest(BaseModel):
    """POST /admin/models/{name}/swap: load ``engine_dir`` (or a registry ``version``) for ``name``."""

    model_config = ConfigDict(extra="forbid")
    engine_dir: str | None = None
    version: str | None = None

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
