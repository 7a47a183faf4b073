"""A tiny fake engine for HTTP-layer unit tests only (every behaviour is also covered end to end
with the real OpenVINO engine in test_e2e_openvino.py)."""

from __future__ import annotations

import asyncio

from serving.engine import Delta, EngineInfo, GenerationRequest
from serving.errors import ContextLengthError

WORDS = ["Paris", " is", " the", " capital", " of", " France", "."]


class FakeEngine:
    backend = "fake"

    def __init__(self, name: str = "fake", version: str = "v1", max_context: int = 64, delay: float = 0.0):
        self.info = EngineInfo(name=name, backend="fake", version=version, max_context=max_context, max_concurrent=4)
        self.delay = delay
        self.aborted: list[str] = []
        self.closed = False
        self.seen: list[GenerationRequest] = []

    def describe(self) -> EngineInfo:
        return self.info

    async def stream(self, request: GenerationRequest):
        self.seen.append(request)
        text = request.prompt if request.messages is None else " ".join(m.content for m in request.messages)
        prompt_tokens = len(text.split())
        limit = self.info.max_context
        max_tokens = request.sampling.max_tokens or (limit - prompt_tokens)
        if prompt_tokens + max_tokens > limit:
            raise ContextLengthError(f"context is {limit} tokens, asked {prompt_tokens + max_tokens}")
        n = min(max_tokens, len(WORDS))
        finished = False
        try:
            for i in range(n):
                if self.delay:
                    await asyncio.sleep(self.delay)
                last = i == n - 1
                reason = None if not last else ("stop" if n == len(WORDS) else "length")
                finished = last
                yield Delta(text=WORDS[i], prompt_tokens=prompt_tokens, completion_tokens=i + 1, new_tokens=1,
                            finish_reason=reason)
        finally:
            if not finished:
                self.aborted.append(request.request_id)

    def abort(self, request_id: str) -> None:
        self.aborted.append(request_id)

    def close(self) -> None:
        self.closed = True
