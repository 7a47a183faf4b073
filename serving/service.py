"""The work behind the OpenAI/pplx endpoints: request -> engine stream -> response or SSE chunks.

Handlers in :mod:`serving.app` stay thin; this module owns admission (a lease on the slot's
live engine, or 404/429/503), the first-token wait (so errors about the request become proper
HTTP errors, not a broken stream), response shapes, and metrics.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
import uuid
from dataclasses import dataclass
from typing import Any
from collections.abc import AsyncIterator

from serving.engine import ChatMessage, Delta, GenerationRequest, SamplingParams
from serving.errors import RequestError
from serving.metrics import Metrics
from serving.protocol import ChatCompletionRequest, CompletionRequest, ignored_fields
from serving.routing import ROUTE, Router
from serving.slots import Lease, Slots

log = logging.getLogger(__name__)

__all__ = ["OpenAIService"]

_DONE = b"data: [DONE]\n\n"


try:  # orjson serializes a chunk ~5x faster than json; the output is the same compact JSON
    import orjson

    def _sse(obj: dict) -> bytes:
        return b"data: " + orjson.dumps(obj) + b"\n\n"
except ImportError:  # pragma: no cover
    def _sse(obj: dict) -> bytes:
        return b"data: " + json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode() + b"\n\n"


def _usage(d: Delta) -> dict[str, int]:
    return {"prompt_tokens": d.prompt_tokens, "completion_tokens": d.completion_tokens,
            "total_tokens": d.prompt_tokens + d.completion_tokens}


def _chat_logprobs(d: Delta) -> dict | None:
    if d.logprobs is None:
        return None
    return {"content": [{"token": t.token, "logprob": t.logprob, "bytes": list(t.token.encode()),
                         "top_logprobs": []} for t in d.logprobs]}


@dataclass
class _Run:
    """One admitted request whose first delta has arrived."""

    lease: Lease
    stream: AsyncIterator[Delta]
    first: Delta
    model: str
    endpoint: str
    t0: float
    base: str = ""  # the served name (an alias resolved), for the per-version series
    version: str = ""
    shadow: GenerationRequest | None = None  # mirror to the canary once answered (serving.routing)


class OpenAIService:
    router: Router | None = None  # canary routing (serve --registry sets it)

    def __init__(self, slots: Slots, metrics: Metrics, *, log_prompts: bool = False,
                 default_max_tokens: int | None = None):
        self.slots = slots
        self.metrics = metrics
        self.log_prompts = log_prompts
        self.default_max_tokens = default_max_tokens

    # ------------------------------------------------------------------ admission
    def _sampling(self, req, max_tokens: int | None, logprobs: bool) -> SamplingParams:
        top_k = req.top_k if req.top_k and req.top_k > 0 else 0
        return SamplingParams(max_tokens=max_tokens, temperature=req.temperature, top_p=req.top_p, top_k=top_k,
                              frequency_penalty=req.frequency_penalty, presence_penalty=req.presence_penalty,
                              stop=req.stop_list(), seed=req.seed, logprobs=logprobs,
                              max_tokens_default=self.default_max_tokens,
                              ignore_eos=req.ignore_eos)

    def _log_request(self, kind: str, req, request_id: str) -> None:
        extra = ignored_fields(req)
        if extra:
            log.info("%s %s: ignored unknown fields: %s", kind, request_id, ", ".join(extra))

    async def _start(self, model: str, endpoint: str, request: GenerationRequest) -> _Run:
        t0 = time.perf_counter()
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
        run = _Run(lease=lease, stream=stream, first=first, model=model, endpoint=endpoint, t0=t0,
                   base=base, version=version)
        if self.router and self.router.wants_shadow(self.slots, base, slot, request.sampling.temperature):
            run.shadow = request
        return run

    async def _deltas(self, run: _Run) -> AsyncIterator[Delta]:
        """Every delta of a run; releases the lease and records metrics however it ends."""
        m = self.metrics
        itl = m.itl.labels(run.model)
        v_itl = m.version_itl.labels(run.base, run.version)
        last_delta = run.first
        last_t = time.perf_counter()
        answer: list[str] = []
        try:
            yield run.first
            if run.first.finish_reason is None:
                async for delta in run.stream:
                    now = time.perf_counter()
                    if delta.new_tokens:
                        gap = (now - last_t) / delta.new_tokens
                        for _ in range(delta.new_tokens):
                            itl.observe(gap)
                            v_itl.observe(gap)
                    last_t = now
                    last_delta = delta
                    if run.shadow is not None:
                        answer.append(delta.text)
                    yield delta
                    if delta.finish_reason is not None:
                        break
        except (RequestError, GeneratorExit, asyncio.CancelledError):
            raise
        except Exception:
            m.version_errors.labels(run.base, run.version).inc()
            raise
        finally:
            await run.stream.aclose()
            run.lease.release()
            m.running.labels(run.model).dec()
            m.prompt_tokens.labels(run.model).inc(last_delta.prompt_tokens)
            m.completion_tokens.labels(run.model).inc(last_delta.completion_tokens)
            m.version_tokens.labels(run.base, run.version).inc(last_delta.completion_tokens)
        if run.shadow is not None and self.router and last_delta.finish_reason in ("stop", "length"):
            self.router.mirror(self.slots, run.base, run.version, run.shadow, run.first.text + "".join(answer),
                               last_delta.completion_tokens)

    # ------------------------------------------------------------------ chat
    async def chat(self, req: ChatCompletionRequest, *, endpoint: str,
                   pplx: bool = False) -> dict | AsyncIterator[bytes]:
        request_id = f"chatcmpl-{uuid.uuid4().hex}"
        self._log_request("chat", req, request_id)
        if req.top_logprobs:
            raise RequestError("top_logprobs > 0 is not supported: the engine returns the sampled token's "
                               "logprob only (use logprobs=true with top_logprobs 0 or unset)", param="top_logprobs")
        messages = []
        for i, msg in enumerate(req.messages):
            role = "system" if msg.role == "developer" else msg.role
            if msg.content is None:
                raise RequestError(f"messages[{i}].content is required", param=f"messages[{i}].content")
            messages.append(ChatMessage(role=role, content=msg.text()))
        if self.log_prompts:
            log.info("chat %s prompt: %r", request_id, [m.content for m in messages])
        gen = GenerationRequest(request_id=request_id, messages=messages,
                                sampling=self._sampling(req, req.completion_limit(), req.logprobs))
        run = await self._start(req.model, endpoint, gen)
        created = int(time.time())
        if not req.stream:
            return await self._chat_full(run, request_id, created, pplx)
        if pplx:
            return self._pplx_chunks(run, request_id, created)
        include_usage = bool(req.stream_options and req.stream_options.include_usage)
        return self._chat_chunks(run, request_id, created, include_usage)

    async def _chat_full(self, run: _Run, request_id: str, created: int, pplx: bool) -> dict:
        parts: list[str] = []
        lps: list[dict] | None = None
        last = run.first
        async for d in self._deltas(run):
            parts.append(d.text)
            if d.logprobs is not None:
                lps = (lps or []) + _chat_logprobs(d)["content"]
            last = d
        content = "".join(parts)
        choice: dict[str, Any] = {"index": 0, "message": {"role": "assistant", "content": content},
                                  "logprobs": {"content": lps} if lps is not None else None,
                                  "finish_reason": last.finish_reason}
        if pplx:
            choice["delta"] = {"role": "assistant", "content": content}
        return {"id": request_id, "object": "chat.completion", "created": created, "model": run.model,
                "choices": [choice], "usage": _usage(last)}

    async def _chat_chunks(self, run: _Run, request_id: str, created: int, include_usage: bool):
        base = {"id": request_id, "object": "chat.completion.chunk", "created": created, "model": run.model}

        def chunk(delta: dict, finish: str | None = None, logprobs: dict | None = None) -> bytes:
            obj = {**base, "choices": [{"index": 0, "delta": delta, "logprobs": logprobs, "finish_reason": finish}]}
            if include_usage:
                obj["usage"] = None
            return _sse(obj)

        last = run.first
        try:
            yield chunk({"role": "assistant", "content": ""})
            async for d in self._deltas(run):
                last = d
                if d.text or d.logprobs:
                    yield chunk({"content": d.text}, None, _chat_logprobs(d))
                if d.finish_reason is not None:
                    yield chunk({}, d.finish_reason)
            if include_usage:
                yield _sse({**base, "choices": [], "usage": _usage(last)})
        except RequestError as err:
            yield _sse({"error": {"message": err.message, "type": err.type, "param": err.param, "code": err.code}})
        except Exception as err:  # noqa: BLE001 - the stream already started: report in-band
            log.exception("stream %s failed", request_id)
            yield _sse({"error": {"message": f"generation failed: {err}", "type": "server_error",
                                  "param": None, "code": None}})
        yield _DONE

    async def _pplx_chunks(self, run: _Run, request_id: str, created: int):
        """pplx-api's wire format: every chunk carries the cumulative message and running usage."""
        base = {"id": request_id, "model": run.model, "created": created}
        content = ""
        try:
            async for d in self._deltas(run):
                if d.text:
                    content += d.text
                    yield _sse({**base, "usage": _usage(d), "object": "chat.completion", "choices": [
                        {"index": 0, "finish_reason": None, "message": {"role": "assistant", "content": content},
                         "delta": {"role": "assistant", "content": d.text}}]})
                if d.finish_reason is not None:
                    yield _sse({**base, "usage": _usage(d), "object": "chat.completion", "choices": [
                        {"index": 0, "finish_reason": d.finish_reason,
                         "message": {"role": "assistant", "content": content},
                         "delta": {"role": "assistant", "content": ""}}]})
        except Exception as err:  # noqa: BLE001
            log.exception("stream %s failed", request_id)
            yield _sse({"error": {"message": f"generation failed: {err}", "type": "server_error",
                                  "param": None, "code": None}})
        yield _DONE

    # ------------------------------------------------------------------ completions
    async def completion(self, req: CompletionRequest, *, endpoint: str) -> dict | AsyncIterator[bytes]:
        request_id = f"cmpl-{uuid.uuid4().hex}"
        self._log_request("completion", req, request_id)
        if req.logprobs is not None and req.logprobs > 1:
            raise RequestError("logprobs > 1 is not supported: the engine returns the sampled token's logprob "
                               "only (use logprobs 0 or 1)", param="logprobs")
        prompt = req.prompt
        if self.log_prompts:
            log.info("completion %s prompt: %r", request_id, prompt)
        want_lp = req.logprobs is not None
        gen = GenerationRequest(request_id=request_id, prompt=prompt,
                                sampling=self._sampling(req, req.max_tokens, want_lp))
        run = await self._start(req.model, endpoint, gen)
        created = int(time.time())
        echo = prompt if req.echo else ""
        if not req.stream:
            parts = [echo]
            tokens: list[str] = []
            token_lps: list[float] = []
            last = run.first
            async for d in self._deltas(run):
                parts.append(d.text)
                for t in d.logprobs or ():
                    tokens.append(t.token)
                    token_lps.append(t.logprob)
                last = d
            logprobs = None
            if want_lp:
                offsets, pos = [], len(echo)
                for t in tokens:
                    offsets.append(pos)
                    pos += len(t)
                logprobs = {"tokens": tokens, "token_logprobs": token_lps, "top_logprobs": None,
                            "text_offset": offsets}
            return {"id": request_id, "object": "text_completion", "created": created, "model": run.model,
                    "choices": [{"text": "".join(parts), "index": 0, "logprobs": logprobs,
                                 "finish_reason": last.finish_reason}],
                    "usage": _usage(last)}
        include_usage = bool(req.stream_options and req.stream_options.include_usage)
        return self._completion_chunks(run, request_id, created, echo, include_usage, want_lp)

    async def _completion_chunks(self, run: _Run, request_id: str, created: int, echo: str, include_usage: bool,
                                 want_lp: bool):
        base = {"id": request_id, "object": "text_completion", "created": created, "model": run.model}

        def chunk(text: str, finish: str | None, d: Delta | None = None) -> bytes:
            lp = None
            if want_lp and d is not None and d.logprobs is not None:
                lp = {"tokens": [t.token for t in d.logprobs], "token_logprobs": [t.logprob for t in d.logprobs],
                      "top_logprobs": None, "text_offset": []}
            obj = {**base, "choices": [{"text": text, "index": 0, "logprobs": lp, "finish_reason": finish}]}
            if include_usage:
                obj["usage"] = None
            return _sse(obj)

        last = run.first
        try:
            if echo:
                yield chunk(echo, None)
            async for d in self._deltas(run):
                last = d
                if d.text or d.finish_reason is not None:
                    yield chunk(d.text, d.finish_reason, d)
            if include_usage:
                yield _sse({**base, "choices": [], "usage": _usage(last)})
        except Exception as err:  # noqa: BLE001
            log.exception("stream %s failed", request_id)
            yield _sse({"error": {"message": f"generation failed: {err}", "type": "server_error",
                                  "param": None, "code": None}})
        yield _DONE
