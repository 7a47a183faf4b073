"""A tiny streaming chat-completions endpoint with a known cadence, to check the load client's clocks.

It generates nothing: it emits ``max_tokens`` chunks, the first after ``ttft`` seconds and the
rest every ``itl`` seconds, so the benchmark's TTFT / ITL / tok/s must come out near those numbers.
The end-to-end latency test runs the same client against the real server with the real engine.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time

import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, StreamingResponse

from tests.conftest import free_port


def make_app(ttft: float, itl: float, key: str | None) -> FastAPI:
    app = FastAPI()
    app.state.seen = []

    def authorized(request: Request) -> bool:
        return key is None or request.headers.get("authorization") == f"Bearer {key}"

    @app.get("/v1/models")
    async def models(request: Request):
        return {"object": "list", "data": [{"id": "cadence", "object": "model"}]}

    @app.post("/v1/chat/completions")
    async def chat(request: Request):
        if not authorized(request):
            return JSONResponse({"error": {"message": "bad key"}}, status_code=401)
        body = await request.json()
        app.state.seen.append(body)
        n = int(body.get("max_tokens") or 16)
        prompt_tokens = len(body["messages"][-1]["content"].split())

        async def events():
            await asyncio.sleep(ttft)
            for i in range(n):
                if i:
                    await asyncio.sleep(itl)
                chunk = {"id": "x", "object": "chat.completion.chunk", "model": body["model"],
                         "choices": [{"index": 0, "delta": {"content": f" t{i}"}, "finish_reason": None}]}
                yield f"data: {json.dumps(chunk)}\n\n"
            usage = {"prompt_tokens": prompt_tokens, "completion_tokens": n, "total_tokens": prompt_tokens + n}
            yield f"data: {json.dumps({'id': 'x', 'choices': [], 'usage': usage})}\n\n"
            yield "data: [DONE]\n\n"

        return StreamingResponse(events(), media_type="text/event-stream")

    return app


class CadenceServer:
    def __init__(self, ttft: float = 0.15, itl: float = 0.02, key: str | None = None):
        self.app = make_app(ttft, itl, key)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.server = uvicorn.Server(uvicorn.Config(self.app, host="127.0.0.1", port=self.port, log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> CadenceServer:
        self.thread.start()
        deadline = time.time() + 20
        while not self.server.started:
            if time.time() > deadline:
                raise RuntimeError("cadence server did not start")
            time.sleep(0.05)
        return self

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)
