"""The one engine protocol the server, the evals and the swap logic talk to.

An engine turns a :class:`GenerationRequest` into an async stream of :class:`Delta` s (new text,
how many tokens so far, and on the last one the finish reason), can abort a request, can be
closed (freeing its memory) and describes itself (:class:`EngineInfo`). Each backend plugin
(``builders.backends``) names its engine class; ``serving.engines.load_engine`` picks it from the
engine manifest. What every engine does before its runtime (chat template, context and
``max_tokens`` policy) is :mod:`serving.prompting`; nothing outside a backend's own module
branches on the backend.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable
from collections.abc import AsyncIterator

__all__ = ["ChatMessage", "Constraint", "Delta", "Engine", "EngineInfo", "GenerationRequest", "SamplingParams",
           "TokenLogprob"]

FINISH_REASONS = ("stop", "length", "abort")


@dataclass(frozen=True)
class EngineInfo:
    """What an engine is: the served name, its backend and build, and its limits."""

    name: str
    backend: str
    version: str  # the build (manifest build_id prefix, or a registry version when swapped in by one)
    max_context: int  # prompt + completion tokens one sequence may hold
    max_concurrent: int  # sequences decoded together (the running batch)
    engine_dir: str = ""
    backend_version: str = ""


@dataclass(frozen=True)
class Constraint:
    """Constrained decoding: what the output must match (each backend maps it to its grammar engine).

    ``kind``: "json_object" (any JSON object), "json_schema" (``value``: the schema as JSON text),
    "regex" or "grammar" (``value``: the pattern / EBNF), or "tool_tags" (free text in which a
    ``<tool_call>`` block, when the model opens one, must hold ``{"name": N, "arguments": A}``
    with A valid for that tool's schema; ``tools``: (name, parameters schema JSON text) pairs).
    """

    kind: str
    value: str = ""
    tools: tuple[tuple[str, str], ...] = ()
    param: str = "response_format"  # the request parameter a grammar that fails to compile is blamed on


@dataclass
class SamplingParams:
    """Sampling knobs shared by every backend (OpenAI's names and meanings)."""

    max_tokens: int | None = None  # None: up to the context limit (or max_tokens_default)
    max_tokens_default: int | None = None  # the server's cap when the client set no max_tokens
    temperature: float = 1.0  # 0: greedy
    top_p: float = 1.0
    top_k: int = 0  # 0: off
    frequency_penalty: float = 0.0
    presence_penalty: float = 0.0
    stop: list[str] = field(default_factory=list)
    seed: int | None = None
    logprobs: bool = False
    ignore_eos: bool = False  # benchmarks: generate exactly max_tokens
    constraint: Constraint | None = None  # structured outputs / forced tool calls
    n: int = 1  # choices per request; each Delta says which (``index``)
    top_logprobs: int = 0  # alternatives per output token (needs ``logprobs``)
    prompt_logprobs: int | None = None  # not None: the prompt tokens' logprobs (and this many alternatives)


@dataclass(frozen=True)
class ChatMessage:
    role: str  # system | user | assistant | tool
    content: str
    tool_calls: tuple[dict, ...] | None = None  # assistant: OpenAI-shaped calls ({id, type, function})
    tool_call_id: str | None = None  # tool: the call this message answers


@dataclass
class GenerationRequest:
    """One request: either chat ``messages`` (rendered with the model's chat template) or a raw
    ``prompt``. ``request_id`` is unique per engine."""

    request_id: str
    sampling: SamplingParams = field(default_factory=SamplingParams)
    messages: list[ChatMessage] | None = None
    prompt: str | None = None
    tools: list[dict] | None = None  # OpenAI tool definitions, shown to the model by its chat template
    prompt_ids: list[int] | None = None  # a prompt given as token ids (lm-eval's tokenized requests)


@dataclass(frozen=True)
class TokenLogprob:
    token: str
    logprob: float | None  # None: the first prompt token (nothing before it)
    top: tuple[tuple[str, float], ...] = ()  # the most likely alternatives, best first (top_logprobs)
    id: int = -1  # the token id, where the backend knows it


@dataclass
class Delta:
    """A piece of one request's output. ``text`` is new text since the last delta;
    ``completion_tokens`` and ``prompt_tokens`` are running totals; ``finish_reason`` is set on
    the last delta only ("stop", "length" or "abort"). With ``n`` > 1, deltas of the choices
    interleave; ``index`` says whose, and the stream ends when every choice has finished."""

    text: str
    prompt_tokens: int
    completion_tokens: int
    new_tokens: int = 0
    finish_reason: str | None = None
    logprobs: list[TokenLogprob] | None = None
    index: int = 0  # which choice (0..n-1); counts are that choice's own
    prompt_logprobs: list[TokenLogprob] | None = None  # first delta of a choice: the prompt's (first: logprob None)


@runtime_checkable
class Engine(Protocol):
    """What every backend implements."""

    def describe(self) -> EngineInfo: ...

    def stream(self, request: GenerationRequest) -> AsyncIterator[Delta]:
        """An async iterator of deltas. Errors about the request itself (context too long,
        an unsupported parameter) raise :class:`serving.errors.RequestError` before the first
        delta; the last delta carries the finish reason. Leaving the iterator early (a client
        that disconnected) aborts the request and frees its KV cache."""
        ...

    def abort(self, request_id: str) -> None: ...

    def close(self) -> None:
        """Stop, abort whatever still runs, free the memory. Idempotent."""
        ...
