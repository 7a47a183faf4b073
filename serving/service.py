"""The work behind the OpenAI/pplx endpoints: request -> engine stream -> response or SSE chunks.

Handlers in :mod:`serving.app` stay thin; this module owns admission (a lease on the slot's
live engine, or 404/429/503), the first-token wait (so errors about the request become proper
HTTP errors, not a broken stream) and metrics; :mod:`serving.responses` shapes the deltas into
responses and SSE chunks.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from dataclasses import dataclass
from collections.abc import AsyncIterator

from serving.choices import Choice, Tally
from serving.engine import ChatMessage, Delta, GenerationRequest, SamplingParams
from serving.errors import RequestError
from serving.metrics import Metrics
from serving.protocol import ChatCompletionRequest, CompletionRequest, format_names, ignored_fields
from serving.responses import chat_chunks, chat_full, completion_chunks, completion_full, pplx_chunks
from serving.routing import ROUTE, Router
from serving.slots import Lease, Slots
from serving.structured import response_format_constraint
from serving.tools import ToolCallParser, parse_tools, tool_constraint
from serving.usage import UsageMeter, current_key

log = logging.getLogger(__name__)

__all__ = ["OpenAIService"]

@dataclass
class _Run:
    """One admitted request whose first delta has arrived."""

    lease: Lease
    stream: AsyncIterator[Delta]
    first: Delta
    model: str
    endpoint: str
    t0: float
    key: str | None = None  # the API key name the usage is billed to
    base: str = ""  # the served name (an alias resolved), for the per-version series
    version: str = ""
    shadow: GenerationRequest | None = None  # mirror to the canary once answered (serving.routing)


DEFAULT_MAX_N = 8


class OpenAIService:
    router: Router | None = None  # canary routing (serve --registry sets it)

    def __init__(self, slots: Slots, metrics: Metrics, *, log_prompts: bool = False,
                 default_max_tokens: int | None = None, max_n: int = DEFAULT_MAX_N,
                 usage: UsageMeter | None = None):
        self.slots = slots
        self.metrics = metrics
        self.log_prompts = log_prompts
        self.default_max_tokens = default_max_tokens
        self.max_n = max_n
        self.usage = usage

    # ------------------------------------------------------------------ admission
    def _sampling(self, req, max_tokens: int | None, logprobs: bool) -> SamplingParams:
        top_k = req.top_k if req.top_k and req.top_k > 0 else 0
        if req.n > self.max_n:
            raise RequestError(f"n is {req.n}; this server returns at most {self.max_n} choices per request "
                               "(onramp serve --max-n)", param="n", code="invalid_value")
        return SamplingParams(max_tokens=max_tokens, temperature=req.temperature, top_p=req.top_p, top_k=top_k,
                              frequency_penalty=req.frequency_penalty, presence_penalty=req.presence_penalty,
                              stop=req.stop_list(), seed=req.seed, logprobs=logprobs,
                              max_tokens_default=self.default_max_tokens,
                              ignore_eos=req.ignore_eos, n=req.n)

    def _log_request(self, kind: str, req, request_id: str) -> None:
        extra = ignored_fields(req)
        if extra:
            log.info("%s %s: ignored unknown fields: %s", kind, request_id, format_names(extra))

    async def _start(self, model: str, endpoint: str, request: GenerationRequest) -> _Run:
        t0 = time.perf_counter()
        key = self.usage.admit(current_key.get()) if self.usage is not None else None  # 429 over its limits
        route = ROUTE.get()
        slot = self.router.pick(self.slots, model, (route or {}).get("key")) if self.router else model
        lease = self.slots.acquire(slot)
        base, version = self.slots.resolve(model), lease.live.version
        if route is not None:
            route["version"] = version
        m = self.metrics
        m.version_requests.labels(base, version).inc()
        m.queue_depth.labels(model).inc()
        stream = lease.engine.stream(request)
        try:
            first = await stream.__anext__()
        except BaseException as exc:
            if not isinstance(exc, (RequestError, asyncio.CancelledError)):
                m.version_errors.labels(base, version).inc()
            m.queue_depth.labels(model).dec()
            await stream.aclose()
            lease.release()
            raise
        m.queue_depth.labels(model).dec()
        m.running.labels(model).inc()
        ttft = time.perf_counter() - t0
        m.ttft.labels(model).observe(ttft)
        m.version_ttft.labels(base, version).observe(ttft)
        m.requests.labels(model, endpoint, "200").inc()
        run = _Run(lease=lease, stream=stream, first=first, model=model, endpoint=endpoint, t0=t0, key=key,
                   base=base, version=version)
        if (self.router and request.sampling.n == 1
                and self.router.wants_shadow(self.slots, base, slot, request.sampling.temperature)):
            run.shadow = request
        return run

    async def _deltas(self, run: _Run) -> AsyncIterator[Delta]:
        """Every delta of a run; releases the lease and records metrics however it ends."""
        m = self.metrics
        itl = m.itl.labels(run.model)
        v_itl = m.version_itl.labels(run.base, run.version)
        tally = Tally()
        tally.add(run.first)
        last_t = time.perf_counter()
        answer: list[str] = []
        finish = run.first.finish_reason
        try:
            yield run.first
            async for delta in run.stream:  # the engine ends it when every choice has finished
                now = time.perf_counter()
                if delta.new_tokens:
                    gap = (now - last_t) / delta.new_tokens
                    for _ in range(delta.new_tokens):
                        itl.observe(gap)
                        v_itl.observe(gap)
                last_t = now
                tally.add(delta)
                if run.shadow is not None:
                    answer.append(delta.text)
                    finish = delta.finish_reason or finish
                yield delta
        except (RequestError, GeneratorExit, asyncio.CancelledError):
            raise
        except Exception:
            m.version_errors.labels(run.base, run.version).inc()
            raise
        finally:
            await run.stream.aclose()
            run.lease.release()
            m.running.labels(run.model).dec()
            m.prompt_tokens.labels(run.model).inc(tally.prompt_tokens)
            m.completion_tokens.labels(run.model).inc(tally.completion_tokens)
            m.version_tokens.labels(run.base, run.version).inc(tally.completion_tokens)
            if self.usage is not None and run.key is not None:
                self.usage.record(run.key, tally.prompt_tokens, tally.completion_tokens)
        if run.shadow is not None and self.router and finish in ("stop", "length"):
            self.router.mirror(self.slots, run.base, run.version, run.shadow, run.first.text + "".join(answer),
                               tally.completion_tokens)

    # ------------------------------------------------------------------ chat
    @staticmethod
    def _messages(req: ChatCompletionRequest) -> list[ChatMessage]:
        messages = []
        for i, msg in enumerate(req.messages):
            role = "system" if msg.role == "developer" else msg.role
            calls = None
            if msg.role == "assistant" and msg.tool_calls:
                for j, c in enumerate(msg.tool_calls):
                    fn = c.get("function") if isinstance(c, dict) else None
                    if not isinstance(fn, dict) or not isinstance(fn.get("name"), str):
                        raise RequestError(f"messages[{i}].tool_calls[{j}] must be {{id, type: 'function', "
                                           "function: {name, arguments}}", param=f"messages[{i}].tool_calls[{j}]")
                calls = tuple(msg.tool_calls)
            elif msg.content is None:
                raise RequestError(f"messages[{i}].content is required", param=f"messages[{i}].content")
            if msg.role == "tool" and not msg.tool_call_id:
                raise RequestError(f"messages[{i}] (role 'tool') needs the tool_call_id it answers",
                                   param=f"messages[{i}].tool_call_id")
            messages.append(ChatMessage(role=role, content=msg.text(), tool_calls=calls,
                                        tool_call_id=msg.tool_call_id))
        return messages

    async def chat(self, req: ChatCompletionRequest, *, endpoint: str,
                   pplx: bool = False) -> dict | AsyncIterator[bytes]:
        request_id = f"chatcmpl-{uuid.uuid4().hex}"
        self._log_request("chat", req, request_id)
        if req.top_logprobs and not req.logprobs:
            raise RequestError("top_logprobs needs logprobs=true", param="top_logprobs")
        tools, mode = parse_tools(req.tools, req.tool_choice)
        constraint = tool_constraint(tools, mode, parallel=req.parallel_tool_calls is not False)
        if constraint is None or constraint.kind == "tool_tags":
            structured = response_format_constraint(req.response_format)
            if structured is not None:
                constraint = structured  # text that must be JSON leaves no room for tool-call tags
        if constraint is not None and constraint.kind == "json_schema":
            from serving.structured import check_schema

            check_schema(constraint)
        messages = self._messages(req)
        if self.log_prompts:
            log.info("chat %s prompt: %r", request_id, [m.content for m in messages])
        sampling = self._sampling(req, req.completion_limit(), req.logprobs)
        sampling.constraint = constraint
        sampling.top_logprobs = req.top_logprobs or 0
        gen = GenerationRequest(request_id=request_id, messages=messages, sampling=sampling,
                                tools=tools if mode is not None else None)
        run = await self._start(req.model, endpoint, gen)
        created = int(time.time())
        parse = mode is not None and (constraint is None or constraint.param == "tools")

        def new_choice(i: int) -> Choice:
            return Choice(index=i, parser=ToolCallParser(forced=mode not in ("auto", None)) if parse else None)

        choices = [new_choice(i) for i in range(req.n)]
        if not req.stream:
            return await chat_full(self._deltas(run), request_id, created, run.model, pplx, choices)
        if pplx:
            return pplx_chunks(self._deltas(run), request_id, created, run.model, choices)
        include_usage = bool(req.stream_options and req.stream_options.include_usage)
        return chat_chunks(self._deltas(run), request_id, created, run.model, include_usage, choices)

    # ------------------------------------------------------------------ completions
    async def completion(self, req: CompletionRequest, *, endpoint: str) -> dict | AsyncIterator[bytes]:
        request_id = f"cmpl-{uuid.uuid4().hex}"
        self._log_request("completion", req, request_id)
        prompt = req.prompt
        ids = prompt if isinstance(prompt, list) else None
        if self.log_prompts:
            log.info("completion %s prompt: %r", request_id, prompt)
        want_lp = req.logprobs is not None
        sampling = self._sampling(req, req.max_tokens, want_lp)
        sampling.top_logprobs = req.logprobs or 0
        if req.echo and want_lp and not req.stream:
            sampling.prompt_logprobs = req.logprobs
        gen = GenerationRequest(request_id=request_id, prompt=None if ids else prompt, prompt_ids=ids,
                                sampling=sampling)
        run = await self._start(req.model, endpoint, gen)
        created = int(time.time())
        echo = "" if not req.echo else prompt if ids is None else ""
        if not req.stream:
            return await completion_full(self._deltas(run), request_id, created, run.model, echo=echo,
                                         by_ids=ids is not None, n=req.n, want_lp=want_lp, top=bool(req.logprobs))
        include_usage = bool(req.stream_options and req.stream_options.include_usage)
        return completion_chunks(self._deltas(run), request_id, created, run.model, echo, include_usage, want_lp,
                                 req.n, bool(req.logprobs))
