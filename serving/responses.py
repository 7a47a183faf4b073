"""Response shapes: a run's deltas -> the OpenAI (or pplx-api) JSON response, or its SSE chunks.

Each function takes the async iterator of a run's deltas (``OpenAIService._deltas``) and what
the response names (request id, creation time, model); none of them touches an engine.
"""

from __future__ import annotations

import logging
from typing import Any
from collections.abc import AsyncIterator

from serving.choices import Choice, Tally, chat_logprobs, tool_call_deltas
from serving.engine import Delta
from serving.errors import RequestError
from serving.sse import DONE, error_event, sse

log = logging.getLogger("serving.service")

__all__ = ["chat_chunks", "chat_full", "completion_chunks", "completion_full", "pplx_chunks"]


def _feed(choices: list[Choice], d: Delta) -> tuple[Choice, str, list]:
    """Give a delta to its choice: (the choice, its new content text, its new tool-call deltas)."""
    c = choices[d.index]
    pieces = c.feed(d)
    return c, "".join(p.content for p in pieces if p.content is not None), tool_call_deltas(pieces)


async def chat_full(deltas: AsyncIterator[Delta], request_id: str, created: int, model: str, pplx: bool,
                    choices: list[Choice]) -> dict:
    tally = Tally()
    async for d in deltas:
        tally.add(d)
        choices[d.index].feed(d)
    out = []
    for c in choices:
        choice: dict[str, Any] = {"index": c.index, "message": c.message(),
                                  "logprobs": {"content": chat_logprobs(c.logprobs)}
                                  if c.logprobs is not None else None,
                                  "finish_reason": c.finish_reason}
        if pplx:
            choice["delta"] = dict(choice["message"])
        out.append(choice)
    return {"id": request_id, "object": "chat.completion", "created": created, "model": model,
            "choices": out, "usage": tally.usage()}


async def chat_chunks(deltas: AsyncIterator[Delta], request_id: str, created: int, model: str, include_usage: bool,
                      choices: list[Choice]):
    base = {"id": request_id, "object": "chat.completion.chunk", "created": created, "model": model}

    def chunk(index: int, delta: dict, finish: str | None = None, logprobs: list | None = None) -> bytes:
        obj = {**base, "choices": [{"index": index, "delta": delta,
                                    "logprobs": {"content": logprobs} if logprobs is not None else None,
                                    "finish_reason": finish}]}
        if include_usage:
            obj["usage"] = None
        return sse(obj)

    tally = Tally()
    try:
        for c in choices:
            yield chunk(c.index, {"role": "assistant", "content": ""})
        async for d in deltas:
            tally.add(d)
            c, text, calls = _feed(choices, d)
            lps = chat_logprobs(d.logprobs) if d.logprobs else None
            if text or lps:
                yield chunk(c.index, {"content": text}, None, lps)
            if calls:
                yield chunk(c.index, {"tool_calls": calls})
            if d.finish_reason is not None:
                yield chunk(c.index, {}, c.finish_reason)
        if include_usage:
            yield sse({**base, "choices": [], "usage": tally.usage()})
    except Exception as err:  # noqa: BLE001 - the stream already started: report in-band
        _log_failure(request_id, err)
        yield error_event(err)
    yield DONE


async def pplx_chunks(deltas: AsyncIterator[Delta], request_id: str, created: int, model: str,
                      choices: list[Choice]):
    """pplx-api's wire format: every chunk carries the cumulative message and running usage."""
    base = {"id": request_id, "model": model, "created": created}
    tally = Tally()
    try:
        async for d in deltas:
            tally.add(d)
            c, text, calls = _feed(choices, d)
            if text or calls or d.finish_reason is not None:
                delta: dict[str, Any] = {"role": "assistant", "content": text}
                if calls:
                    delta["tool_calls"] = calls
                yield sse({**base, "usage": tally.usage(), "object": "chat.completion", "choices": [
                    {"index": c.index, "finish_reason": c.finish_reason if d.finish_reason else None,
                     "message": c.message(), "delta": delta}]})
    except Exception as err:  # noqa: BLE001
        _log_failure(request_id, err)
        yield error_event(err)
    yield DONE


async def completion_full(deltas: AsyncIterator[Delta], request_id: str, created: int, model: str, *, echo: str,
                          by_ids: bool, n: int, want_lp: bool, top: bool) -> dict:
    """``by_ids``: the prompt was token ids (an echo then spells the prompt's tokens)."""
    tally = Tally()
    parts: list[list[str]] = [[echo] for _ in range(n)]
    lps: list[list] = [[] for _ in range(n)]
    finish: list[str | None] = [None] * n
    async for d in deltas:
        tally.add(d)
        if d.prompt_logprobs is not None:  # echo: the prompt's tokens come first
            lps[d.index][:0] = d.prompt_logprobs
            if by_ids:
                parts[d.index].insert(0, "".join(t.token for t in d.prompt_logprobs))
        parts[d.index].append(d.text)
        lps[d.index].extend(d.logprobs or ())
        if d.finish_reason is not None:
            finish[d.index] = d.finish_reason
    choices = []
    for i in range(n):
        logprobs = None
        if want_lp:
            offsets, pos = [], 0 if lps[i] and lps[i][0].logprob is None else len(echo)
            tokens, token_lps, tops = [], [], []
            for t in lps[i]:
                offsets.append(pos)
                tokens.append(t.token)
                token_lps.append(t.logprob)
                tops.append(dict(t.top) if t.logprob is not None else None)  # the first prompt token
                pos += len(t.token)
            logprobs = {"tokens": tokens, "token_logprobs": token_lps,
                        "top_logprobs": tops if top else None, "text_offset": offsets}
        choices.append({"text": "".join(parts[i]), "index": i, "logprobs": logprobs, "finish_reason": finish[i]})
    return {"id": request_id, "object": "text_completion", "created": created, "model": model,
            "choices": choices, "usage": tally.usage()}


async def completion_chunks(deltas: AsyncIterator[Delta], request_id: str, created: int, model: str, echo: str,
                            include_usage: bool, want_lp: bool, n: int = 1, top: bool = False):
    base = {"id": request_id, "object": "text_completion", "created": created, "model": model}

    def chunk(index: int, text: str, finish: str | None, d: Delta | None = None) -> bytes:
        lp = None
        if want_lp and d is not None and d.logprobs is not None:
            lp = {"tokens": [t.token for t in d.logprobs], "token_logprobs": [t.logprob for t in d.logprobs],
                  "top_logprobs": [dict(t.top) for t in d.logprobs] if top else None, "text_offset": []}
        obj = {**base, "choices": [{"text": text, "index": index, "logprobs": lp, "finish_reason": finish}]}
        if include_usage:
            obj["usage"] = None
        return sse(obj)

    tally = Tally()
    try:
        if echo:
            for i in range(n):
                yield chunk(i, echo, None)
        async for d in deltas:
            tally.add(d)
            if d.text or d.finish_reason is not None:
                yield chunk(d.index, d.text, d.finish_reason, d)
        if include_usage:
            yield sse({**base, "choices": [], "usage": tally.usage()})
    except Exception as err:  # noqa: BLE001
        _log_failure(request_id, err)
        yield error_event(err)
    yield DONE


def _log_failure(request_id: str, err: Exception) -> None:
    if not isinstance(err, RequestError):  # a refused request is the client's, not a server failure
        log.error("stream %s failed", request_id, exc_info=err)
