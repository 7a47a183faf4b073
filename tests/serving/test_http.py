"""HTTP layer with a tiny fake engine: shapes, errors, auth, queue bound, swap bookkeeping.

The same behaviours run end to end against the real OpenVINO engine in test_e2e_openvino.py.
"""

from __future__ import annotations

import asyncio
import json

import httpx
import pytest

from serving.app import ServeConfig, build_app
from serving.auth import KeyStore, create_key
from serving.slots import Slots
from tests.serving.fake_engine import FakeEngine


class Loader:
    def __init__(self):
        self.engines: dict[str, FakeEngine] = {}
        self.fail: set[str] = set()
        self.delay = 0.0

    def __call__(self, engine_dir, name, **options):
        if engine_dir in self.fail:
            from serving.errors import EngineLoadError

            raise EngineLoadError(f"engine directory {engine_dir} does not exist", "pass a built engine")
        engine = FakeEngine(name=name, version=str(engine_dir).rsplit("/", 1)[-1], delay=self.delay)
        self.engines[str(engine_dir)] = engine
        return engine


@pytest.fixture
async def server(tmp_path):
    keys_file = tmp_path / "keys.json"
    user = create_key(keys_file, "alice")
    admin = create_key(keys_file, "ops", admin=True)
    loader = Loader()
    slots = Slots(loader=loader, max_queue=2)
    await slots.swap("fake", "/engines/v1")
    app = build_app(ServeConfig(keys_file=keys_file), slots=slots)
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://test",
                                 headers={"Authorization": f"Bearer {user}"}) as client:
        yield client, slots, loader, admin
    await slots.close()


def chat(**kw):
    body = {"model": "fake", "messages": [{"role": "user", "content": "hi there"}]}
    body.update(kw)
    return body


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
    resp = await client.post("/v1/chat/completions", json=chat(max_tokens=3))
    body = resp.json()
    assert resp.status_code == 200
    assert body["object"] == "chat.completion" and body["id"].startswith("chatcmpl-")
    assert body["choices"][0]["message"] == {"role": "assistant", "content": "Paris is the"}
    assert body["choices"][0]["finish_reason"] == "length"
    assert body["usage"] == {"prompt_tokens": 2, "completion_tokens": 3, "total_tokens": 5}


async def test_openai_stream_chunks(server):
    client, *_ = server
    body = chat(stream=True, stream_options={"include_usage": True})
    async with client.stream("POST", "/v1/chat/completions", json=body) as resp:
        assert resp.headers["content-type"].startswith("text/event-stream")
        lines = [line async for line in resp.aiter_lines() if line]
    assert lines[-1] == "data: [DONE]"
    chunks = [json.loads(line.removeprefix("data: ")) for line in lines[:-1]]
    assert all(c["object"] == "chat.completion.chunk" for c in chunks)
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    text = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks if c["choices"])
    assert text == "Paris is the capital of France."
    assert chunks[-2]["choices"][0]["finish_reason"] == "stop"
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["completion_tokens"] == 7


async def test_pplx_stream_carries_message_and_usage(server):
    client, *_ = server
    async with client.stream("POST", "/chat/completions", json=chat(stream=True)) as resp:
        lines = [line async for line in resp.aiter_lines() if line]
    assert lines[-1] == "data: [DONE]"
    chunks = [json.loads(line.removeprefix("data: ")) for line in lines[:-1]]
    assert [c["usage"]["completion_tokens"] for c in chunks] == [1, 2, 3, 4, 5, 6, 7, 7]
    assert all(c["object"] == "chat.completion" for c in chunks)
    assert chunks[2]["choices"][0]["message"]["content"] == "Paris is the"
    assert chunks[2]["choices"][0]["delta"] == {"role": "assistant", "content": " the"}
    assert chunks[-1]["choices"][0]["finish_reason"] == "stop"
    assert chunks[-1]["choices"][0]["delta"]["content"] == ""


async def test_content_parts_and_unknown_fields_accepted(server, caplog):
    client, slots, loader, _ = server
    caplog.set_level("INFO", logger="serving")
    body = chat(messages=[{"role": "system", "content": "be brief"},
                          {"role": "user", "content": [{"type": "text", "text": "secret words"}]}],
                frobnicate={"x": "VALUE-NOT-LOGGED"}, user="u1")
    resp = await client.post("/v1/chat/completions", json=body)
    assert resp.status_code == 200
    seen = loader.engines["/engines/v1"].seen[-1]
    assert [m.content for m in seen.messages] == ["be brief", "secret words"]
    assert "frobnicate" in caplog.text
    assert "VALUE-NOT-LOGGED" not in caplog.text and "secret words" not in caplog.text


@pytest.mark.parametrize("body, param", [
    (chat(n=2), "n"),
    (chat(temperature=3), "temperature"),
    (chat(top_p=0), "top_p"),
    (chat(max_tokens=0), "max_tokens"),
    (chat(max_completion_tokens=-1), "max_completion_tokens"),
    (chat(frequency_penalty=5), "frequency_penalty"),
    (chat(presence_penalty=-3), "presence_penalty"),
    (chat(stop=["a", "b", "c", "d", "e"]), "stop"),
    (chat(messages=[]), "messages"),
    (chat(messages=[{"role": "robot", "content": "x"}]), "messages[0].role"),
    (chat(messages=[{"role": "user", "content": [{"type": "image_url", "image_url": "x"}]}]), "messages[0].content"),
    (chat(stream_options={"include_usage": True}), None),
    (chat(top_logprobs=3, logprobs=True), "top_logprobs"),
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
    err = assert_error(await client.post("/v1/chat/completions", json=chat(max_tokens=500)), 400, param="max_tokens")
    assert err["code"] == "context_length_exceeded"


async def test_unknown_model_404_and_unknown_path(server):
    client, *_ = server
    err = assert_error(await client.post("/v1/chat/completions", json=chat(model="nope")), 404, param="model",
                       code="model_not_found")
    assert "fake" in err["message"]
    assert_error(await client.get("/v1/nothing-here"), 404)


async def test_auth_missing_wrong_and_scope(server):
    client, _, _, admin = server
    resp = await client.post("/v1/chat/completions", json=chat(), headers={"Authorization": ""})
    assert_error(resp, 401, code="invalid_api_key")
    resp = await client.post("/v1/chat/completions", json=chat(), headers={"Authorization": "Bearer wrong"})
    assert_error(resp, 401, code="invalid_api_key")
    # a bad body with no key is still a 401, not a 400
    resp = await client.post("/v1/chat/completions", json={}, headers={"Authorization": ""})
    assert resp.status_code == 401
    # the user key cannot swap; the admin key can
    resp = await client.post("/admin/models/fake/swap", json={"engine_dir": "/engines/v2"})
    assert_error(resp, 403, code="insufficient_scope")
    resp = await client.post("/admin/models/fake/swap", json={"engine_dir": "/engines/v2"},
                             headers={"Authorization": f"Bearer {admin}"})
    assert resp.status_code == 200 and resp.json()["version"] == "v2"
    # health and metrics need no key
    assert (await client.get("/healthz", headers={"Authorization": ""})).status_code == 200


async def test_queue_bound_429_with_retry_after(server):
    # httpx's ASGI transport buffers whole responses, so hold two leases the way two running
    # requests do (the real server is loaded concurrently in test_e2e_openvino.py)
    client, slots, _, _ = server
    with slots.acquire("fake"), slots.acquire("fake"):
        resp = await client.post("/v1/chat/completions", json=chat())
        err = assert_error(resp, 429, code="queue_full")
        assert resp.headers["Retry-After"] == "1" and err["type"] == "rate_limit_error"
    assert slots.inflight("fake") == 0
    assert (await client.post("/v1/chat/completions", json=chat())).status_code == 200


async def test_completions_and_models(server):
    client, *_ = server
    resp = await client.post("/v1/completions", json={"model": "fake", "prompt": "say it", "max_tokens": 2,
                                                       "echo": True})
    body = resp.json()
    assert body["object"] == "text_completion"
    assert body["choices"][0]["text"] == "say itParis is"
    assert body["usage"]["total_tokens"] == 4
    assert_error(await client.post("/v1/completions", json={"model": "fake", "prompt": ["a", "b"]}), 400,
                 param="prompt")
    assert_error(await client.post("/v1/completions", json={"model": "fake", "prompt": "a", "logprobs": 3}), 400,
                 param="logprobs")
    models = (await client.get("/v1/models")).json()
    assert models["object"] == "list" and [m["id"] for m in models["data"]] == ["fake"]


async def test_swap_failure_keeps_old_engine_and_reports(server):
    client, slots, loader, admin = server
    loader.fail.add("/engines/broken")
    resp = await client.post("/admin/models/fake/swap", json={"engine_dir": "/engines/broken"},
                             headers={"Authorization": f"Bearer {admin}"})
    err = assert_error(resp, 400, code="engine_load_failed")
    assert "/engines/broken does not exist" in err["message"]
    assert slots.live("fake").version == "v1"
    assert (await client.post("/v1/chat/completions", json=chat())).status_code == 200
    metrics = (await client.get("/metrics")).text
    assert 'onramp_engine_swaps_total{model="fake",result="failed"} 1.0' in metrics


async def test_swap_drains_old_engine_then_closes_it(server):
    client, slots, loader, admin = server
    old = loader.engines["/engines/v1"]
    lease = slots.acquire("fake")  # a request still running on the old engine
    swap = await client.post("/admin/models/fake/swap", json={"engine_dir": "/engines/v2"},
                             headers={"Authorization": f"Bearer {admin}"})
    assert swap.status_code == 200 and swap.json()["previous_version"] == "v1"
    new = (await client.post("/v1/chat/completions", json=chat())).json()
    assert new["choices"][0]["message"]["content"] == "Paris is the capital of France."
    def served(engine):
        return [r for r in engine.seen if not r.request_id.startswith("warmup-")]

    assert served(loader.engines["/engines/v2"]) and not served(old)  # new requests go to the new engine
    assert loader.engines["/engines/v2"].seen[0].request_id.startswith("warmup-")  # warmed up before entry
    await asyncio.sleep(0.05)
    assert not old.closed  # it still has a request in flight
    lease.release()
    await slots.drained()
    assert old.closed and not loader.engines["/engines/v2"].closed
    metrics = (await client.get("/metrics")).text
    assert 'onramp_engine_info{backend="fake",model="fake",version="v2"} 1.0' in metrics
    assert 'version="v1"' not in metrics


async def test_metrics_count_requests_and_tokens(server):
    client, *_ = server
    await client.post("/v1/chat/completions", json=chat(max_tokens=3))
    await client.post("/v1/chat/completions", json=chat(model="nope"))
    text = (await client.get("/metrics")).text
    assert 'onramp_requests_total{endpoint="/v1/chat/completions",model="fake",status="200"} 1.0' in text
    assert 'onramp_requests_total{endpoint="/v1/chat/completions",model="unknown",status="404"} 1.0' in text
    assert 'onramp_completion_tokens_total{model="fake"} 3.0' in text
    assert 'onramp_time_to_first_token_seconds_count{model="fake"} 1.0' in text
    assert "onramp_queue_depth" in text and "onramp_running_sequences" in text


async def test_readyz_reflects_loading(tmp_path):
    gate = asyncio.Event()

    def slow_loader(engine_dir, name, **kw):
        return FakeEngine(name=name)

    slots = Slots(loader=slow_loader)
    app = build_app(ServeConfig(auth=False), slots=slots)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as client:
        assert (await client.get("/readyz")).status_code == 503  # nothing served yet
        await slots.swap("m", "/x")
        ready = await client.get("/readyz")
        assert ready.status_code == 200 and ready.json()["models"][0]["state"] == "ready"
        # no auth: no key needed
        assert (await client.get("/v1/models")).status_code == 200
    gate.set()
    await slots.close()


def test_auth_needs_keys_unless_no_auth(tmp_path):
    from serving.errors import AuthConfigError

    with pytest.raises(AuthConfigError, match="onramp keys create"):
        KeyStore.load(tmp_path / "none.json", env={})
    store = KeyStore.load(tmp_path / "none.json", env={"ONRAMP_API_KEYS": "k1, k2"})
    assert store.check("Bearer k2").name == "env-1"
    assert KeyStore.load(None, enabled=False).check(None) is None
