"""SIGTERM drain (serving.drain): a real ``onramp serve`` on the real int8 engine is sent SIGTERM while
a long stream is running; the stream finishes, new requests get 503 + Retry-After, /readyz says 503,
and the process exits 0. Plus the gate alone on a tiny ASGI app."""

from __future__ import annotations

import json
import os
import signal
import threading
import time

import httpx
import openai
import pytest

from onramp.reference import PARIS_QUESTION
from serving.drain import Drain, DrainGate
from serving.process import run_onramp_serve

MAX_TOKENS = 256


def _stream(url: str, key: str, first_token: threading.Event, out: dict) -> None:
    body = {"model": "m", "messages": [{"role": "user", "content": PARIS_QUESTION}], "max_tokens": MAX_TOKENS,
            "ignore_eos": True, "temperature": 0, "stream": True, "stream_options": {"include_usage": True}}
    events: list[str] = []
    try:
        with httpx.stream("POST", f"{url}/v1/chat/completions", json=body, timeout=600,
                          headers={"Authorization": f"Bearer {key}"}) as resp:
            out["status"] = resp.status_code
            for line in resp.iter_lines():
                if line.startswith("data: "):
                    events.append(line.removeprefix("data: "))
                    if not first_token.is_set() and '"content"' in line:
                        first_token.set()
    except httpx.HTTPError as exc:
        out["error"] = repr(exc)
    finally:
        out["events"] = events
        first_token.set()


@pytest.mark.slow
def test_sigterm_drains_in_flight_streams_refuses_new_requests_and_exits_0(ov_int8_engine, tmp_path):
    from serving.auth import create_key

    keys = tmp_path / "keys.json"
    key = create_key(keys, "drain-test")
    env = {**os.environ, "ONRAMP_API_KEYS": ""}
    with run_onramp_serve(["--engine", f"m={ov_int8_engine}", "--keys-file", str(keys), "--drain-timeout", "300"],
                          log=tmp_path / "serve.log", env=env) as server:
        first_token, out = threading.Event(), {}
        streamer = threading.Thread(target=_stream, args=(server.url, key, first_token, out), daemon=True)
        streamer.start()
        assert first_token.wait(timeout=300), "no first token"
        assert "error" not in out and out.get("status") == 200, out

        os.kill(server.proc.pid, signal.SIGTERM)
        deadline = time.monotonic() + 60
        while True:  # the signal is handled between two of the server's event-loop steps
            ready = httpx.get(f"{server.url}/readyz", timeout=10)
            if ready.status_code == 503 or time.monotonic() > deadline:
                break
            time.sleep(0.05)
        assert ready.status_code == 503 and ready.json()["status"] == "draining"
        assert ready.json()["inflight"] >= 1  # the stream is still running: the refusal below is a drain's
        assert httpx.get(f"{server.url}/healthz", timeout=10).status_code == 200  # alive: no restart

        client = openai.OpenAI(api_key=key, base_url=f"{server.url}/v1", max_retries=0, timeout=60)
        with pytest.raises(openai.InternalServerError) as refused:
            client.chat.completions.create(model="m", messages=[{"role": "user", "content": "Hi"}], max_tokens=4)
        assert refused.value.status_code == 503
        assert int(refused.value.response.headers["retry-after"]) >= 1
        error = refused.value.response.json()["error"]
        assert error["code"] == "server_shutting_down" and error["type"] == "server_error" and error["message"]
        scrape = httpx.get(f"{server.url}/metrics", timeout=10).text  # still scraped while draining
        refusals = [line for line in scrape.splitlines() if line.startswith("onramp_requests_total{")
                    and 'status="503"' in line and 'endpoint="/v1/chat/completions"' in line]
        assert len(refusals) == 1 and float(refusals[0].rsplit(" ", 1)[1]) == 1.0, refusals

        streamer.join(timeout=600)
        assert not streamer.is_alive()
        events = out["events"]
        assert "error" not in out, out["error"]
        assert events[-1] == "[DONE]"
        chunks = [json.loads(e) for e in events[:-1]]
        finish = [c["choices"][0]["finish_reason"] for c in chunks if c.get("choices")]
        assert finish[-1] == "length"
        assert chunks[-1]["usage"]["completion_tokens"] == MAX_TOKENS

        assert server.proc.wait(timeout=120) == 0
        log = server.log_text()
        assert "SIGTERM: draining" in log and "drained in" in log


async def _asgi(app, method: str, path: str) -> tuple[int, dict, bytes]:
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
        resp = await client.request(method, path)
        return resp.status_code, dict(resp.headers), resp.content


async def test_the_gate_counts_requests_and_refuses_new_ones_while_draining():
    import asyncio

    release = asyncio.Event()
    seen: list[int] = []

    async def app(scope, receive, send):
        seen.append(drain.inflight)
        if scope["path"] == "/slow":
            await release.wait()
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})

    drain = Drain(retry_after_s=3)
    gate = DrainGate(app, drain)
    slow = asyncio.create_task(_asgi(gate, "POST", "/slow"))
    while drain.inflight == 0:
        await asyncio.sleep(0.01)
    drain.start()
    status, headers, body = await _asgi(gate, "POST", "/v1/chat/completions")
    assert status == 503 and headers["retry-after"] == "3"
    assert json.loads(body)["error"]["code"] == "server_shutting_down"
    status, _, body = await _asgi(gate, "GET", "/readyz")
    assert status == 503 and json.loads(body) == {"status": "draining", "inflight": 1}
    assert (await _asgi(gate, "GET", "/healthz"))[0] == 200  # the probes still reach the app
    release.set()
    assert (await slow)[0] == 200
    assert drain.inflight == 0 and seen[0] == 1
