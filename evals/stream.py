"""The load generator's client: one streamed chat completion at a time, timed token by token.

Shared by the latency sweep (:mod:`evals.latency`) and the A/B (:mod:`evals.latency_ab`). One
asyncio process streams chat completions over HTTP (server-sent events) with an httpx client of
:class:`onramp.endpoint.EndpointClient`; it stays light so it does not steal the CPU the server
needs. Prompts are made from the corpus, each different (no shared prefix).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field

from evals.errors import BenchError

_TOKENS_PER_WORD = 1.3  # English prose under byte-level BPE, used when no tokenizer is given


@dataclass
class RequestRecord:
    """What one streamed request measured (seconds relative to the sweep's start)."""

    sent: float
    first_token: float | None = None
    done: float | None = None
    token_times: list[float] = field(default_factory=list)
    output_tokens: int = 0
    prompt_tokens: int | None = None
    error: str | None = None

    @property
    def ttft(self) -> float | None:
        return None if self.first_token is None else self.first_token - self.sent

    @property
    def itls(self) -> list[float]:
        return [b - a for a, b in zip(self.token_times, self.token_times[1:], strict=False)]

    @property
    def decode_tok_s(self) -> float | None:
        if self.output_tokens < 2 or len(self.token_times) < 2:
            return None
        span = self.token_times[-1] - self.token_times[0]
        return (self.output_tokens - 1) / span if span > 0 else None


_FILLER: list[str] | None = None


def _filler_words() -> list[str]:
    global _FILLER
    if _FILLER is None:
        from evals.config import corpus_paragraphs

        _FILLER = " ".join(corpus_paragraphs()).split()
    return _FILLER


def make_prompt(index: int, input_tokens: int, tokenizer=None) -> str:
    """A prompt of about ``input_tokens`` tokens; each request's text differs (no shared prefix)."""
    words = _filler_words()
    n_words = max(1, int(input_tokens / _TOKENS_PER_WORD))
    start = (index * 37) % len(words)
    body = [words[(start + i) % len(words)] for i in range(n_words)]
    text = f"Request {index}. Continue this text:\n" + " ".join(body)
    if tokenizer is not None:
        ids = tokenizer.encode(text, add_special_tokens=False)[:input_tokens]
        text = tokenizer.decode(ids)
    return text


def chat_payload(model: str, prompt: str, output_tokens: int) -> dict:
    """A streamed, greedy request for exactly ``output_tokens`` tokens (``ignore_eos``), with usage."""
    return {"model": model, "messages": [{"role": "user", "content": prompt}], "max_tokens": output_tokens,
            "temperature": 0.0, "stream": True, "stream_options": {"include_usage": True}, "ignore_eos": True}


async def stream_chat(client, payload: dict, rec: RequestRecord, t0: float,
                      path: str = "/v1/chat/completions") -> None:
    """Stream one chat completion with ``client`` (an httpx.AsyncClient), recording its clocks in ``rec``
    (seconds since ``t0`` on ``time.perf_counter``); errors go into ``rec.error``, never raised."""
    try:
        async with client.stream("POST", path, json=payload) as resp:
            if resp.status_code != 200:
                body = (await resp.aread()).decode(errors="replace")[:200]
                rec.error = f"HTTP {resp.status_code}: {body}"
                return
            usage_tokens = None
            async for line in resp.aiter_lines():
                if not line.startswith("data:"):
                    continue
                data = line[5:].strip()
                if data == "[DONE]":
                    break
                try:
                    chunk = json.loads(data)
                except json.JSONDecodeError:
                    rec.error = f"bad SSE chunk: {data[:80]}"
                    return
                if chunk.get("usage"):
                    usage_tokens = chunk["usage"].get("completion_tokens", usage_tokens)
                    rec.prompt_tokens = chunk["usage"].get("prompt_tokens", rec.prompt_tokens)
                for choice in chunk.get("choices") or []:
                    content = (choice.get("delta") or {}).get("content")
                    if content:
                        now = time.perf_counter() - t0
                        if rec.first_token is None:
                            rec.first_token = now
                        rec.token_times.append(now)
            rec.done = time.perf_counter() - t0
            rec.output_tokens = usage_tokens if usage_tokens else len(rec.token_times)
            if rec.first_token is None:
                rec.error = "stream ended without a token"
    except Exception as exc:  # httpx errors, cancelled connections
        rec.error = f"{type(exc).__name__}: {exc}"[:200]


def async_client(url: str, api_key: str | None, timeout: float):
    """An httpx.AsyncClient on the endpoint at ``url``, for many concurrent streams."""
    from onramp.endpoint import EndpointClient

    return EndpointClient(url, api_key).async_client(timeout=timeout)


def check_reachable(url: str, api_key: str | None) -> None:
    """:class:`BenchError` if ``url`` does not answer HTTP at all (any status will do)."""
    from onramp.endpoint import EndpointClient, EndpointUnreachable

    try:
        EndpointClient(url, api_key).request("GET", "/v1/models", timeout=10.0)
    except EndpointUnreachable as exc:
        raise BenchError(f"cannot reach {url}: {exc.cause}", "start the server (onramp serve ...) or fix the URL") \
            from None
