"""HTTP layer in process (httpx's ASGI transport) over the real int8 OpenVINO engine: shapes,
errors, auth, queue bound, swap bookkeeping, metrics.

test_e2e_openvino.py runs the same server as a subprocess with the openai client and the seeds.
"""

from __future__ import annotations

from onramp.reference import PARIS_QUESTION
import json

import httpx
import pytest

from serving.app import ServeConfig, build_app
from serving.auth import KeyStore, create_key
from serving.engines import load_engine
from serving.engine import GenerationRequest, SamplingParams
from serving.errors import RequestError
from serving.slots import Slots

MODEL = "smol"
ENGINE_OPTIONS = {"max_num_seqs": 4, "cache_size_gb": 1}


class Loader:
    """The real loader (``serving.engines.load_engine``), remembering what it loaded."""

    def __init__(self):
        self.engines: dict[str, object] = {}

    def __call__(self, engine_dir, name, **options):
        engine = load_engine(engine_dir, name, **options)
        self.engines[str(engine_dir)] = engine
        return engine


@pytest.fixture
async def server(tmp_path, ov_int8_engine, engine_copy):
    keys_file = tmp_path / "keys.json"
    user = create_key(keys_file, "alice")
    admin = create_key(keys_file, "ops", admin=True)
    loader = Loader()
    slots = Slots(loader=loader, max_queue=2, engine_options=ENGINE_OPTIONS)
    await slots.swap(MODEL, ov_int8_engine, version="v1")
    app = build_app(ServeConfig(keys_file=keys_file, swap_roots=[engine_copy.parent, tmp_path]), slots=slots)
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://test", timeout=120,
                                 headers={"Authorization": f"Bearer {user}"}) as client:
        yield client, slots, loader, admin
    await slots.close()


def chat(**kw):
    body = {"model": MODEL, "messages": [{"role": "user", "content": PARIS_QUESTION}],
            "temperature": 0, "max_tokens": 8}
    body.update(kw)
    return {k: v for k, v in body.items() if v is not None}  # None: leave the field out


def assert_error(resp, status, param=None, code=None):
    assert resp.status_code == status, resp.text
    err = resp.json()["error"]
    assert set(err) == {"message", "type", "param", "code"}
    assert err["message"]
    if param is not None:
        assert err["param"] == param, err
    if code is not None:
        assert err["code"] == code, err
    return err


async def test_chat_shape_and_usage(server):
    client, *_ = server
    resp = await client.post("/v1/chat/completions", json=chat(max_tokens=3, ignore_eos=True))
    body = resp.json()
    assert resp.status_code == 200
    assert set(body) >= {"id", "object", "created", "model", "choices", "usage"}
    assert body["object"] == "chat.completion" and body["id"].startswith("chatcmpl-") and body["model"] == MODEL
    message = body["choices"][0]["message"]
    assert message["role"] == "assistant" and message["content"].strip()
    assert body["choices"][0]["finish_reason"] == "length"
    usage = body["usage"]
    assert usage["completion_tokens"] == 3
    assert usage["prompt_tokens"] > 7 and usage["total_tokens"] == usage["prompt_tokens"] + 3


async def test_openai_stream_chunks(server):
    client, *_ = server
    body = chat(stream=True, stream_options={"include_usage": True}, max_tokens=24)
    full = (await client.post("/v1/chat/completions", json=chat(max_tokens=24))).json()
    async with client.stream("POST", "/v1/chat/completions", json=body) as resp:
        assert resp.headers["content-type"].startswith("text/event-stream")
        lines = [line async for line in resp.aiter_lines() if line]
    assert lines[-1] == "data: [DONE]"
    chunks = [json.loads(line.removeprefix("data: ")) for line in lines[:-1]]
    assert all(c["object"] == "chat.completion.chunk" for c in chunks)
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    text = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks if c["choices"])
    assert "Paris" in text and text == full["choices"][0]["message"]["content"]  # greedy: same text
    assert chunks[-2]["choices"][0]["finish_reason"] == full["choices"][0]["finish_reason"]
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"] == full["usage"]
    assert all(c["usage"] is None for c in chunks[:-1])


async def test_pplx_stream_carries_message_and_usage(server):
    client, *_ = server
    async with client.stream("POST", "/chat/completions", json=chat(stream=True)) as resp:
        lines = [line async for line in resp.aiter_lines() if line]
    assert lines[-1] == "data: [DONE]"
    chunks = [json.loads(line.removeprefix("data: ")) for line in lines[:-1]]
    assert all(c["object"] == "chat.completion" for c in chunks)
    counts = [c["usage"]["completion_tokens"] for c in chunks]
    assert counts == sorted(counts) and counts[0] >= 1 and len(chunks) >= 3  # running usage
    so_far = ""
    for c in chunks[:-1]:  # every chunk carries the cumulative message and its own delta
        choice = c["choices"][0]
        so_far += choice["delta"]["content"]
        assert choice["delta"]["role"] == "assistant" and choice["message"]["content"] == so_far
    assert "Paris" in so_far
    assert chunks[-1]["choices"][0]["finish_reason"] in ("stop", "length")
    assert chunks[-1]["choices"][0]["delta"]["content"] == ""
    assert chunks[-1]["choices"][0]["message"]["content"] == so_far


async def test_content_parts_and_unknown_fields_accepted(server, caplog):
    client, *_ = server
    caplog.set_level("INFO", logger="serving")
    system = {"role": "system", "content": "be brief"}
    body = chat(messages=[system, {"role": "user", "content": [{"type": "text", "text": "secret words"},
                                                               {"type": "text", "text": " and more"}]}],
                frobnicate={"x": "VALUE-NOT-LOGGED"}, user="u1", max_tokens=1)
    resp = await client.post("/v1/chat/completions", json=body)
    assert resp.status_code == 200
    # the text parts reach the chat template as one content string
    plain = await client.post("/v1/chat/completions", json=chat(
        messages=[system, {"role": "user", "content": "secret words and more"}], max_tokens=1))
    shorter = await client.post("/v1/chat/completions", json=chat(
        messages=[system, {"role": "user", "content": "secret words"}], max_tokens=1))
    assert resp.json()["usage"]["prompt_tokens"] == plain.json()["usage"]["prompt_tokens"]
    assert shorter.json()["usage"]["prompt_tokens"] < plain.json()["usage"]["prompt_tokens"]
    assert "frobnicate" in caplog.text
    assert "VALUE-NOT-LOGGED" not in caplog.text and "secret words" not in caplog.text


@pytest.mark.parametrize("body, param", [
    (chat(n=200), "n"),  # beyond any --max-n
    (chat(temperature=3), "temperature"),
    (chat(top_p=0), "top_p"),
    (chat(max_tokens=0), "max_tokens"),
    (chat(max_tokens=None, max_completion_tokens=-1), "max_completion_tokens"),
    (chat(frequency_penalty=5), "frequency_penalty"),
    (chat(presence_penalty=-3), "presence_penalty"),
    (chat(stop=["a", "b", "c", "d", "e"]), "stop"),
    (chat(messages=[]), "messages"),
    (chat(messages=[{"role": "robot", "content": "x"}]), "messages[0].role"),
    (chat(messages=[{"role": "user", "content": [{"type": "image_url", "image_url": "x"}]}]), "messages[0].content"),
    (chat(stream_options={"include_usage": True}), None),
    (chat(top_logprobs=21, logprobs=True), "top_logprobs"),
    (chat(top_logprobs=3), "top_logprobs"),  # needs logprobs=true
    (chat(response_format={"type": "yaml"}), "response_format.type"),
    (chat(tool_choice="required"), "tool_choice"),  # no tools
    ({"messages": [{"role": "user", "content": "x"}]}, "model"),
])
async def test_bad_parameters_are_400_naming_the_parameter(server, body, param):
    client, *_ = server
    err = assert_error(await client.post("/v1/chat/completions", json=body), 400)
    assert err["type"] == "invalid_request_error"
    if param is not None:
        assert err["param"] == param
        assert param.split("[")[0] in err["message"]


async def test_malformed_json_and_missing_body_are_400(server):
    client, *_ = server
    resp = await client.post("/v1/chat/completions", content=b"{not json", headers={"content-type": "application/json"})
    assert_error(resp, 400, code="invalid_json")
    resp = await client.post("/v1/chat/completions")
    assert_error(resp, 400)


async def test_oversized_body_is_413(server):
    client, *_ = server
    huge = chat(messages=[{"role": "user", "content": "x" * (5 * 1024 * 1024)}])
    assert_error(await client.post("/v1/chat/completions", json=huge), 413, code="request_too_large")


async def test_context_length_is_400_naming_max_tokens(server):
    client, *_ = server
    err = assert_error(await client.post("/v1/chat/completions", json=chat(max_tokens=100_000)), 400,
                       param="max_tokens")
    assert err["code"] == "context_length_exceeded" and "maximum context length" in err["message"]


async def test_unknown_model_404_and_unknown_path(server):
    client, *_ = server
    err = assert_error(await client.post("/v1/chat/completions", json=chat(model="nope")), 404, param="model",
                       code="model_not_found")
    assert MODEL in err["message"]  # names what is served
    assert_error(await client.get("/v1/nothing-here"), 404)


async def test_auth_missing_wrong_and_scope(server, engine_copy):
    client, _, _, admin = server
    resp = await client.post("/v1/chat/completions", json=chat(), headers={"Authorization": ""})
    assert_error(resp, 401, code="invalid_api_key")
    resp = await client.post("/v1/chat/completions", json=chat(), headers={"Authorization": "Bearer wrong"})
    assert_error(resp, 401, code="invalid_api_key")
    # a bad body with no key is still a 401, not a 400
    resp = await client.post("/v1/chat/completions", json={}, headers={"Authorization": ""})
    assert resp.status_code == 401
    # the user key cannot swap; the admin key can
    resp = await client.post(f"/admin/models/{MODEL}/swap", json={"engine_dir": str(engine_copy)})
    assert_error(resp, 403, code="insufficient_scope")
    resp = await client.post(f"/admin/models/{MODEL}/swap", json={"engine_dir": str(engine_copy)},
                             headers={"Authorization": f"Bearer {admin}"})
    assert resp.status_code == 200 and resp.json()["previous_version"] == "v1"
    # health and metrics need no key
    assert (await client.get("/healthz", headers={"Authorization": ""})).status_code == 200


async def test_queue_bound_429_with_retry_after(server):
    # httpx's ASGI transport buffers whole responses, so hold two leases the way two running
    # requests do (the real server is loaded concurrently in test_e2e_openvino.py)
    client, slots, _, _ = server
    with slots.acquire(MODEL), slots.acquire(MODEL):
        resp = await client.post("/v1/chat/completions", json=chat())
        err = assert_error(resp, 429, code="queue_full")
        assert resp.headers["Retry-After"] == "1" and err["type"] == "rate_limit_error"
    assert slots.inflight(MODEL) == 0
    assert (await client.post("/v1/chat/completions", json=chat())).status_code == 200


async def test_completions_and_models(server):
    client, *_ = server
    prompt = "The capital of France is"
    resp = await client.post("/v1/completions", json={"model": MODEL, "prompt": prompt, "max_tokens": 2,
                                                       "temperature": 0, "echo": True, "ignore_eos": True})
    body = resp.json()
    assert body["object"] == "text_completion"
    text = body["choices"][0]["text"]
    assert text.startswith(prompt) and len(text) > len(prompt)  # echo: the prompt, then the completion
    usage = body["usage"]
    assert usage["completion_tokens"] == 2 and usage["total_tokens"] == usage["prompt_tokens"] + 2
    assert_error(await client.post("/v1/completions", json={"model": MODEL, "prompt": ["a", "b"]}), 400,
                 param="prompt")
    assert_error(await client.post("/v1/completions", json={"model": MODEL, "prompt": "a", "logprobs": 21}), 400,
                 param="logprobs")
    models = (await client.get("/v1/models")).json()
    assert models["object"] == "list" and [m["id"] for m in models["data"]] == [MODEL]
    assert models["data"][0]["version"] == "v1" and models["data"][0]["backend"] == "openvino"


async def test_swap_failure_keeps_old_engine_and_reports(server, tmp_path):
    client, slots, _, admin = server
    broken = tmp_path / "broken-engine"
    broken.mkdir()
    (broken / "openvino_model.xml").write_text("<net>not a model</net>")
    resp = await client.post(f"/admin/models/{MODEL}/swap", json={"engine_dir": str(broken)},
                             headers={"Authorization": f"Bearer {admin}"})
    err = assert_error(resp, 400, code="engine_load_failed")
    assert "broken-engine" in err["message"] and "previous engine keeps serving" in err["message"]
    assert slots.live(MODEL).version == "v1"
    assert (await client.post("/v1/chat/completions", json=chat())).status_code == 200
    metrics = (await client.get("/metrics")).text
    assert f'onramp_engine_swaps_total{{model="{MODEL}",result="failed"}} 1.0' in metrics


async def test_swap_drains_old_engine_then_closes_it(server, engine_copy):
    client, slots, loader, admin = server
    old_live = slots.live(MODEL)
    old = old_live.engine
    lease = slots.acquire(MODEL)  # a request still running on the old engine
    swap = await client.post(f"/admin/models/{MODEL}/swap", json={"engine_dir": str(engine_copy)},
                             headers={"Authorization": f"Bearer {admin}"})
    assert swap.status_code == 200 and swap.json()["previous_version"] == "v1"
    new_live = slots.live(MODEL)
    assert new_live is not old_live and new_live.engine is loader.engines[str(engine_copy)]
    reply = await client.post("/v1/chat/completions", json=chat())
    assert reply.status_code == 200 and "Paris" in reply.json()["choices"][0]["message"]["content"]
    assert old_live.inflight == 1 and new_live.inflight == 0  # the new request went to the new engine

    probe = GenerationRequest(request_id="probe", prompt="Hello",
                              sampling=SamplingParams(max_tokens=1, temperature=0.0))
    assert [d async for d in old.stream(probe)][-1].finish_reason  # still open while a request is in flight
    lease.release()
    await slots.drained()
    with pytest.raises(RequestError, match="shutting down"):  # closed once drained
        async for _ in old.stream(probe):
            pass
    metrics = (await client.get("/metrics")).text
    version = swap.json()["version"]
    assert f'onramp_engine_info{{backend="openvino",model="{MODEL}",version="{version}"}} 1.0' in metrics
    assert 'version="v1"' not in metrics


async def test_metrics_count_requests_and_tokens(server):
    client, *_ = server
    await client.post("/v1/chat/completions", json=chat(max_tokens=3, ignore_eos=True))
    await client.post("/v1/chat/completions", json=chat(model="nope"))
    text = (await client.get("/metrics")).text
    assert f'onramp_requests_total{{endpoint="/v1/chat/completions",model="{MODEL}",status="200"}} 1.0' in text
    assert 'onramp_requests_total{endpoint="/v1/chat/completions",model="unknown",status="404"} 1.0' in text
    assert f'onramp_completion_tokens_total{{model="{MODEL}"}} 3.0' in text
    assert f'onramp_time_to_first_token_seconds_count{{model="{MODEL}"}} 1.0' in text
    assert f'onramp_inter_token_latency_seconds_count{{model="{MODEL}"}}' in text
    assert "onramp_queue_depth" in text and "onramp_running_sequences" in text


async def test_readyz_reflects_loading(ov_int8_engine):
    slots = Slots(loader=load_engine, engine_options=ENGINE_OPTIONS)
    app = build_app(ServeConfig(auth=False), slots=slots)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as client:
        assert (await client.get("/readyz")).status_code == 503  # nothing served yet
        await slots.swap("m", ov_int8_engine)
        ready = await client.get("/readyz")
        assert ready.status_code == 200 and ready.json()["models"][0]["state"] == "ready"
        # no auth: no key needed
        assert (await client.get("/v1/models")).status_code == 200
    await slots.close()


def test_auth_needs_keys_unless_no_auth(tmp_path):
    from serving.errors import AuthConfigError

    with pytest.raises(AuthConfigError, match="onramp keys create"):
        KeyStore.load(tmp_path / "none.json", env={})
    store = KeyStore.load(tmp_path / "none.json", env={"ONRAMP_API_KEYS": "k1, k2"})
    assert store.check("Bearer k2").name == "env-1"
    assert KeyStore.load(None, enabled=False).check(None) is None
