"""End to end: the real int8 OpenVINO engine behind `onramp serve`, called by the official
`openai` client and by httpx: both seeds verbatim, every bad input, hot-swap under load."""

from __future__ import annotations

from onramp.reference import PARIS_QUESTION
import asyncio
import json
import time

import httpx
import pytest
from openai import AsyncOpenAI, AuthenticationError, BadRequestError, NotFoundError, OpenAI

from tests.serving.conftest import LAUNCH_MODEL, MAX_QUEUE, WIRE_MODEL

pytestmark = pytest.mark.slow

QUESTION = [{"role": "user", "content": PARIS_QUESTION}]


def sse_events(text: str) -> list[str]:
    return [line.removeprefix("data: ") for line in text.splitlines() if line.startswith("data: ")]


def metric(text: str, name: str, **labels) -> float:
    for line in text.splitlines():
        if line.startswith(name + "{") or line.startswith(name + " "):
            if all(f'{k}="{v}"' in line for k, v in labels.items()):
                return float(line.rsplit(" ", 1)[1])
    return 0.0


# ---------------------------------------------------------------- the official openai client
def test_openai_client_chat_nonstreaming_and_streaming(server):
    client = OpenAI(api_key=server.key, base_url=f"{server.url}/v1")
    resp = client.chat.completions.create(model=LAUNCH_MODEL, messages=QUESTION, temperature=0, max_tokens=20)
    answer = resp.choices[0].message.content
    assert "Paris" in answer
    assert resp.object == "chat.completion" and resp.model == LAUNCH_MODEL
    assert resp.choices[0].finish_reason == "stop"
    assert resp.usage.prompt_tokens > 10 and resp.usage.completion_tokens > 3
    assert resp.usage.total_tokens == resp.usage.prompt_tokens + resp.usage.completion_tokens

    stream = client.chat.completions.create(model=LAUNCH_MODEL, messages=QUESTION, temperature=0, max_tokens=20,
                                            stream=True, stream_options={"include_usage": True})
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == answer  # greedy: the same text, streamed
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"
    assert chunks[-1].usage.completion_tokens == resp.usage.completion_tokens


def test_openai_client_completions_models_and_logprobs(server):
    client = OpenAI(api_key=server.key, base_url=f"{server.url}/v1")
    comp = client.completions.create(model=WIRE_MODEL, prompt="The capital of France is", max_tokens=6,
                                     temperature=0, logprobs=1)
    assert comp.object == "text_completion" and comp.choices[0].text.strip()
    assert comp.usage.completion_tokens == 6 and comp.choices[0].finish_reason == "length"
    assert len(comp.choices[0].logprobs.token_logprobs) == 6
    assert all(lp <= 0 for lp in comp.choices[0].logprobs.token_logprobs)
    streamed = "".join(c.choices[0].text for c in client.completions.create(
        model=WIRE_MODEL, prompt="The capital of France is", max_tokens=6, temperature=0, stream=True))
    assert streamed == comp.choices[0].text
    models = client.models.list()
    assert sorted(m.id for m in models.data) == sorted([LAUNCH_MODEL, WIRE_MODEL])
    chat = client.chat.completions.create(model=LAUNCH_MODEL, messages=QUESTION, temperature=0, max_tokens=4,
                                          logprobs=True)
    assert len(chat.choices[0].logprobs.content) == 4


def test_sampling_parameters_take_effect(server):
    client = OpenAI(api_key=server.key, base_url=f"{server.url}/v1")
    kw = {"model": LAUNCH_MODEL, "messages": [{"role": "user", "content": "Write a word."}], "max_tokens": 12}
    a = client.chat.completions.create(**kw, temperature=1.0, seed=1234, top_p=0.9, extra_body={"top_k": 50})
    b = client.chat.completions.create(**kw, temperature=1.0, seed=1234, top_p=0.9, extra_body={"top_k": 50})
    assert a.choices[0].message.content == b.choices[0].message.content  # seeded sampling repeats
    stopped = client.chat.completions.create(model=LAUNCH_MODEL, messages=QUESTION, temperature=0, stop=["Paris"])
    assert "Paris" not in stopped.choices[0].message.content
    assert stopped.choices[0].message.content.startswith("The capital of France is")
    assert stopped.choices[0].finish_reason == "stop"
    # no max_tokens: the server's --default-max-tokens (96) caps it
    long = client.completions.create(model=LAUNCH_MODEL, prompt="Once upon a time", temperature=0,
                                     max_tokens=None, extra_body={"ignore_eos": True})
    assert long.usage.completion_tokens == 96


# ---------------------------------------------------------------- the seeds, verbatim
def test_seed_launch_post_curl_on_pplx_path(server):
    """The launch post's curl request, body and headers as published (base URL and key swapped)."""
    body = """{
	"model": "mistral-7b-instruct",
  "stream": false,
  "max_tokens": 1024,
  "frequency_penalty": 1,
  "temperature": 0.0,
  "messages": [
		{
			"role": "system",
			"content": "Be precise and concise in your responses."
		},
		{
			"role": "user",
			"content": "How many stars are there in our galaxy?"
		}
	]
}"""
    resp = httpx.post(f"{server.url}/chat/completions", content=body, timeout=300, headers={
        "accept": "application/json", "content-type": "application/json",
        "Authorization": f"Bearer {server.key}"})
    assert resp.status_code == 200, resp.text
    out = resp.json()
    assert set(out) == {"id", "model", "object", "created", "choices", "usage"}
    assert out["object"] == "chat.completion" and out["model"] == "mistral-7b-instruct"
    choice = out["choices"][0]
    assert set(choice) >= {"index", "finish_reason", "message", "delta"}
    assert choice["message"]["role"] == "assistant" and choice["message"]["content"].strip()
    assert choice["finish_reason"] in ("stop", "length")
    usage = out["usage"]
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"] > 0


def test_seed_wire_format_streaming_curl(server):
    """The wire-format document's streaming curl body: pplx chunks with cumulative message and usage."""
    body = """{
"model": "llama-3.1-sonar-small-128k-online",
"stream": true,
"messages": [
{
"role": "system",
"content": "Be precise and concise."
},
{
"role": "user",
"content": "How many stars are there in our galaxy?"
}
]
}"""
    resp = httpx.post(f"{server.url}/chat/completions", content=body, timeout=300, headers={
        "accept": "application/json", "content-type": "application/json",
        "Authorization": f"Bearer {server.key}"})
    assert resp.status_code == 200 and resp.headers["content-type"].startswith("text/event-stream")
    events = sse_events(resp.text)
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    assert len(chunks) >= 3
    content = ""
    for chunk in chunks:
        assert chunk["object"] == "chat.completion" and chunk["model"] == WIRE_MODEL
        assert set(chunk) == {"id", "model", "created", "usage", "object", "choices"}
        choice = chunk["choices"][0]
        content += choice["delta"]["content"]
        assert choice["message"] == {"role": "assistant", "content": content}  # cumulative
        assert chunk["usage"]["total_tokens"] == chunk["usage"]["prompt_tokens"] + chunk["usage"]["completion_tokens"]
    usages = [c["usage"]["completion_tokens"] for c in chunks]
    assert usages == sorted(usages)  # running usage
    assert chunks[-1]["choices"][0]["finish_reason"] in ("stop", "length")
    assert chunks[-1]["choices"][0]["delta"]["content"] == ""
    assert all(c["choices"][0]["finish_reason"] is None for c in chunks[:-1])


def test_seed_python_example(server):
    """The launch post's Python example, with base_url and key pointing at onramp."""
    YOUR_API_KEY = server.key
    messages = [
        {
            "role": "system",
            "content": (
                "You are an artificial intelligence assistant and you need to "
                "engage in a helpful, detailed, polite conversation with a user."
            ),
        },
        {
            "role": "user",
            "content": (
                "Count to 100, with a comma between each number and no newlines. "
                "E.g., 1, 2, 3, ..."
            ),
        },
    ]

    client = OpenAI(api_key=YOUR_API_KEY, base_url=server.url)

    # demo chat completion without streaming
    response = client.chat.completions.create(
        model="mistral-7b-instruct",
        messages=messages,
    )
    print(response)
    assert response.choices[0].message.content and response.usage.completion_tokens > 0

    # demo chat completion with streaming
    response_stream = client.chat.completions.create(
        model="mistral-7b-instruct",
        messages=messages,
        stream=True,
    )
    n = 0
    for response in response_stream:
        print(response)
        n += 1
    assert n >= 2 and response.choices[0].finish_reason in ("stop", "length")


# ---------------------------------------------------------------- bad input, on the real server
@pytest.mark.parametrize("body, status, param, code", [
    ({"model": LAUNCH_MODEL, "messages": QUESTION, "n": 9}, 400, "n", None),  # over --max-n (8)
    ({"model": LAUNCH_MODEL, "messages": QUESTION, "temperature": 9}, 400, "temperature", None),
    ({"model": LAUNCH_MODEL, "messages": QUESTION, "max_tokens": "many"}, 400, "max_tokens", None),
    ({"model": LAUNCH_MODEL, "messages": "hello"}, 400, "messages", None),
    ({"model": LAUNCH_MODEL}, 400, "messages", "missing_required_parameter"),
    ({"model": LAUNCH_MODEL, "messages": [{"role": "user"}]}, 400, "messages[0].content", None),
    ({"model": LAUNCH_MODEL, "messages": QUESTION, "max_tokens": 5000}, 400, "max_tokens", "context_length_exceeded"),
    ({"model": LAUNCH_MODEL, "messages": [{"role": "user", "content": "word " * 5000}]}, 400, "messages",
     "context_length_exceeded"),
    ({"model": "gpt-17", "messages": QUESTION}, 404, "model", "model_not_found"),
    ({"model": LAUNCH_MODEL, "messages": QUESTION, "stop": [""]}, 400, "stop", None),
])
def test_bad_input_status_and_error_shape(server, body, status, param, code):
    resp = httpx.post(f"{server.url}/v1/chat/completions", json=body, timeout=60,
                      headers={"Authorization": f"Bearer {server.key}"})
    assert resp.status_code == status, resp.text
    err = resp.json()["error"]
    assert set(err) == {"message", "type", "param", "code"} and err["message"]
    assert err["param"] == param
    if code:
        assert err["code"] == code


def test_bad_input_never_500(server):
    h = {"Authorization": f"Bearer {server.key}", "content-type": "application/json"}
    for raw in [b"", b"{", b"[]", b"null", b'{"model": 1, "messages": 2}', "{\"model\": \"\u00ff\"}".encode(),
                b'{"model": "mistral-7b-instruct", "messages": [{"role": "user", "content": [{"type": "text"}]}]}',
                b'{"model": "mistral-7b-instruct", "messages": [{"role": "user", "content": "x"}], "top_k": 1e99}']:
        resp = httpx.post(f"{server.url}/v1/chat/completions", content=raw, headers=h, timeout=30)
        assert 400 <= resp.status_code < 500, (raw, resp.status_code, resp.text)
        assert set(resp.json()["error"]) == {"message", "type", "param", "code"}


def test_auth_errors_with_the_openai_client(server):
    with pytest.raises(AuthenticationError) as exc:
        OpenAI(api_key="wrong", base_url=f"{server.url}/v1").models.list()
    assert exc.value.status_code == 401
    resp = httpx.get(f"{server.url}/v1/models")
    assert resp.status_code == 401 and resp.json()["error"]["code"] == "invalid_api_key"
    with pytest.raises(NotFoundError):
        OpenAI(api_key=server.key, base_url=f"{server.url}/v1").chat.completions.create(model="nope", messages=QUESTION)
    with pytest.raises(BadRequestError) as exc:
        OpenAI(api_key=server.key, base_url=f"{server.url}/v1").chat.completions.create(
            model=LAUNCH_MODEL, messages=QUESTION, n=9)
    assert exc.value.body["param"] == "n"
    # the user key cannot swap
    resp = httpx.post(f"{server.url}/admin/models/{LAUNCH_MODEL}/swap", json={"engine_dir": "/x"},
                      headers={"Authorization": f"Bearer {server.key}"})
    assert resp.status_code == 403
    assert server.key not in server.log_text() and server.admin_key not in server.log_text()


def test_logs_name_unknown_fields_but_hold_no_text(server):
    client = OpenAI(api_key=server.key, base_url=f"{server.url}/v1")
    resp = client.chat.completions.create(
        model=LAUNCH_MODEL, messages=[{"role": "user", "content": "My secret is zebra-42. Repeat it."}],
        max_tokens=8, temperature=0, extra_body={"web_search": {"query": "zebra-43"}})
    assert resp.choices[0].message.content
    deadline = time.monotonic() + 60  # the server's log reaches the file when its handler flushes
    while "ignored unknown fields" not in (log := server.log_text()) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert "ignored unknown fields: 'web_search'" in log  # names escaped (repr)
    content = resp.choices[0].message.content
    assert "zebra-4" not in log and (len(content) < 12 or content not in log)


async def test_queue_full_is_429_with_retry_after(server):
    body = {"model": WIRE_MODEL, "prompt": "Once upon a time", "max_tokens": 300, "stream": True,
            "temperature": 0, "ignore_eos": True}
    async with server.client() as client:
        streams = []
        try:
            for _ in range(MAX_QUEUE):
                cm = client.stream("POST", "/v1/completions", json=body)
                resp = await cm.__aenter__()
                assert resp.status_code == 200
                streams.append(cm)
            over = await client.post("/v1/completions", json={**body, "stream": False})
            assert over.status_code == 429, over.text
            assert over.headers["Retry-After"] == "1"
            assert over.json()["error"]["code"] == "queue_full"
        finally:
            for cm in streams:
                await cm.__aexit__(None, None, None)  # client disconnects: each aborts its request
        # the aborted requests leave the running batch and free their slots
        deadline = time.monotonic() + 30
        while True:
            m = (await client.get("/metrics")).text
            if metric(m, "onramp_running_sequences", model=WIRE_MODEL) == 0:
                break
            assert time.monotonic() < deadline, "aborted streams still running"
            await asyncio.sleep(0.2)
        ok = await client.post("/v1/completions", json={**body, "stream": False, "max_tokens": 2})
        assert ok.status_code == 200


async def test_disconnected_nonstreaming_client_aborts_its_request(server):
    body = {"model": WIRE_MODEL, "prompt": "Once upon a time", "max_tokens": 1500, "temperature": 0,
            "ignore_eos": True}
    async with server.client() as client:
        with pytest.raises(httpx.ReadTimeout):
            await client.post("/v1/completions", json=body, timeout=2)
        t0 = time.monotonic()
        while metric((await client.get("/metrics")).text, "onramp_running_sequences", model=WIRE_MODEL) > 0:
            assert time.monotonic() - t0 < 120, "the abandoned request kept running"
            await asyncio.sleep(0.2)


# ---------------------------------------------------------------- hot-swap under load
async def test_swap_under_concurrent_streaming_load(server, engine_copy):
    results: list[tuple[int, bool, str | None]] = []
    stop = asyncio.Event()

    async def worker(i: int, client: httpx.AsyncClient):
        while not stop.is_set():
            body = {"model": LAUNCH_MODEL, "messages": [{"role": "user", "content": f"Tell me fact {i}."}],
                    "max_tokens": 24, "stream": True, "temperature": 0.7, "seed": i}
            async with client.stream("POST", "/v1/chat/completions", json=body) as resp:
                text = (await resp.aread()).decode()
            events = sse_events(text)
            finish = None
            for e in events[:-1]:
                c = json.loads(e)
                if c.get("choices") and c["choices"][0]["finish_reason"]:
                    finish = c["choices"][0]["finish_reason"]
            results.append((resp.status_code, bool(events) and events[-1] == "[DONE]", finish))

    async with server.client() as client, server.client(server.admin_key) as admin:
        before = {m["id"]: m["version"] for m in (await client.get("/v1/models")).json()["data"]}
        workers = [asyncio.create_task(worker(i, client)) for i in range(6)]

        async def until_results(n: int, timeout: float = 300) -> None:
            deadline = time.monotonic() + timeout
            while len(results) < n:
                assert time.monotonic() < deadline, f"only {len(results)} requests completed, waited for {n}"
                await asyncio.sleep(0.1)

        await until_results(1)  # load is flowing
        started = len(results)
        swap = await admin.post(f"/admin/models/{LAUNCH_MODEL}/swap",
                                json={"engine_dir": str(engine_copy), "version": "v2"})
        assert swap.status_code == 200, swap.text
        assert swap.json()["previous_version"] == before[LAUNCH_MODEL]
        await until_results(len(results) + 6)  # and keeps flowing on the new engine
        stop.set()
        await asyncio.gather(*workers)
        assert len(results) > started  # requests kept completing through the swap
        assert all(status == 200 for status, _, _ in results), results
        assert all(done for _, done, _ in results), "a stream did not end with [DONE]"
        assert all(finish in ("stop", "length") for _, _, finish in results), results
        after = {m["id"]: m["version"] for m in (await client.get("/v1/models")).json()["data"]}
        assert after == {**before, LAUNCH_MODEL: "v2"}
        # the old engine drains and is closed
        deadline = time.monotonic() + 60
        while True:
            status = {m["name"]: m for m in (await admin.get("/admin/models")).json()["models"]}
            if status[LAUNCH_MODEL]["draining"] == 0:
                break
            assert time.monotonic() < deadline, status
            await asyncio.sleep(0.2)
        metrics = (await client.get("/metrics")).text
        assert metric(metrics, "onramp_engine_info", model=LAUNCH_MODEL, version="v2") == 1.0
        assert metric(metrics, "onramp_requests_total", endpoint="/v1/chat/completions", model=LAUNCH_MODEL,
                      status="200") > started
        assert metric(metrics, "onramp_time_to_first_token_seconds_count", model=LAUNCH_MODEL) > 0
        assert metric(metrics, "onramp_inter_token_latency_seconds_count", model=LAUNCH_MODEL) > 0
        assert metric(metrics, "onramp_completion_tokens_total", model=LAUNCH_MODEL) > 0
        # a failed swap leaves the live engine serving, and says why
        missing = str(engine_copy.parent / "nonexistent")  # inside the engines dir, so swaps may try it
        bad = await admin.post(f"/admin/models/{LAUNCH_MODEL}/swap", json={"engine_dir": missing})
        assert bad.status_code == 400 and "does not exist" in bad.json()["error"]["message"]
        ok = await client.post("/v1/chat/completions", json={"model": LAUNCH_MODEL, "messages": QUESTION,
                                                              "max_tokens": 3})
        assert ok.status_code == 200


async def test_openai_async_client_concurrent_streams(server):
    client = AsyncOpenAI(api_key=server.key, base_url=f"{server.url}/v1")

    async def one(i):
        stream = await client.chat.completions.create(
            model=WIRE_MODEL, messages=[{"role": "user", "content": f"Say {i}"}], max_tokens=16, stream=True)
        text, finish = "", None
        async for chunk in stream:
            if chunk.choices:
                text += chunk.choices[0].delta.content or ""
                finish = chunk.choices[0].finish_reason or finish
        return text, finish

    results = await asyncio.gather(*[one(i) for i in range(6)])
    assert all(finish in ("stop", "length") for _, finish in results)
    await client.close()
