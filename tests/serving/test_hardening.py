"""Bad input never gets a 5xx, never grows memory, never reaches the log unescaped (issue 16), on
the real int8 OpenVINO engine behind the app in process (httpx's ASGI transport streams a
generator body chunk by chunk, without a Content-Length, as a chunked HTTP request)."""

from __future__ import annotations

import json
import logging

import httpx
import pytest
import pytest_asyncio

from serving.app import MAX_BODY_BYTES, ServeConfig, build_app
from serving.auth import create_key
from serving.engines import load_engine
from serving.slots import Slots

pytestmark = pytest.mark.asyncio(loop_scope="module")

MODEL = "smol"


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def app_and_key(ov_int8_engine, tmp_path_factory):
    keys_file = tmp_path_factory.mktemp("keys") / "keys.json"
    key = create_key(keys_file, "alice")
    slots = Slots(loader=load_engine, max_queue=4, engine_options={"max_num_seqs": 4, "cache_size_gb": 1})
    await slots.swap(MODEL, ov_int8_engine, version="v1")
    app = build_app(ServeConfig(keys_file=keys_file), slots=slots)
    yield app, key
    await slots.close()


@pytest_asyncio.fixture(loop_scope="module")
async def client(app_and_key):
    app, key = app_and_key
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test", timeout=120,
                                 headers={"Authorization": f"Bearer {key}"}) as c:
        yield c


def chat(**kw) -> dict:
    return {"model": MODEL, "messages": [{"role": "user", "content": "Say hi"}], "max_tokens": 2, **kw}


def assert_400(resp, param: str) -> dict:
    assert resp.status_code == 400, resp.text
    err = resp.json()["error"]
    assert err["type"] == "invalid_request_error" and err["param"] == param, err
    assert param.split("[")[0].split(".")[0] in err["message"]
    return err


def raw(body: str) -> bytes:
    """A JSON text as the client sent it: ``\\ud800`` escapes stay escapes (lone surrogates)."""
    return body.encode()


@pytest.mark.parametrize("path, field, value", [
    ("/v1/chat/completions", "seed", 18446744073709551616),
    ("/v1/chat/completions", "seed", 2**63),
    ("/v1/chat/completions", "top_k", 100000000000000000000000),
    ("/v1/chat/completions", "max_tokens", 2**64),
    ("/v1/chat/completions", "max_completion_tokens", 2**64),
    ("/v1/chat/completions", "n", 2**64),
    ("/v1/chat/completions", "top_logprobs", 2**64),
    ("/chat/completions", "seed", -(2**63) - 1),
    ("/v1/completions", "seed", 18446744073709551616),
    ("/v1/completions", "top_k", 2**40),
    ("/v1/completions", "max_tokens", 2**64),
    ("/v1/completions", "logprobs", 2**64),
])
async def test_out_of_range_integers_are_400_naming_the_parameter(client, path, field, value):
    body = chat(**{field: value}) if "chat" in path else {"model": MODEL, "prompt": "Hi", field: value}
    if field == "top_logprobs":
        body["logprobs"] = True
    assert_400(await client.post(path, json=body), field)


async def test_largest_accepted_seed_and_top_k_generate(client):
    resp = await client.post("/v1/chat/completions", json=chat(seed=2**63 - 1, top_k=2**31 - 1, temperature=1.0))
    assert resp.status_code == 200, resp.text
    assert resp.json()["usage"]["completion_tokens"] >= 1


@pytest.mark.parametrize("path, body, param", [
    ("/v1/chat/completions", '{"model": "smol", "messages": [{"role": "user", "content": "SECRET \\ud800"}]}',
     "messages[0].content"),
    ("/chat/completions", '{"model": "smol", "messages": [{"role": "user", "content": [{"type": "text", '
     '"text": "a"}, {"type": "text", "text": "\\udfff b"}]}]}', "messages[0].content[1].text"),
    ("/v1/chat/completions", '{"model": "smol", "messages": [{"role": "user", "content": "hi", "name": "\\ud800"}]}',
     "messages[0].name"),
    ("/v1/chat/completions", '{"model": "smol", "messages": [{"role": "user", "content": "hi"}], '
     '"stop": ["ok", "x\\ud800"]}', "stop[1]"),
    ("/v1/chat/completions", '{"model": "smol", "messages": [{"role": "user", "content": "hi"}], "user": "\\udc00"}',
     "user"),
    ("/v1/chat/completions", '{"model": "smol\\ud800", "messages": [{"role": "user", "content": "hi"}]}', "model"),
    ("/v1/chat/completions", '{"model": "smol", "messages": [{"role": "user", "content": "hi"}], '
     '"tools_extra": {"a": ["\\ud800"]}}', "tools_extra.a[0]"),
    ("/v1/completions", '{"model": "smol", "prompt": "SECRET \\ud800"}', "prompt"),
    ("/v1/completions", '{"model": "smol", "prompt": ["SECRET \\ud800"]}', "prompt[0]"),
    ("/v1/completions", '{"model": "smol", "prompt": "hi", "stop": "\\ud800"}', "stop"),
])
async def test_lone_surrogates_are_400_naming_the_parameter(client, caplog, path, body, param):
    caplog.set_level(logging.INFO)
    resp = await client.post(path, content=raw(body), headers={"content-type": "application/json"})
    err = assert_400(resp, param)
    assert "surrogate" in err["message"]
    assert "Traceback" not in caplog.text and "SECRET" not in caplog.text


async def test_metrics_label_unknown_paths_as_one(client):
    await client.get("/nx-warmup")
    before = len((await client.get("/metrics")).content)
    for i in range(300):
        assert (await client.get(f"/nx{i:04d}-{i * 7919}")).status_code == 404
    text = (await client.get("/metrics")).text
    assert len(text.encode()) - before < 200  # only the counter's value grew
    assert 'onramp_requests_total{endpoint="unmatched",model="",status="404"} 301.0' in text
    assert "/nx0" not in text
    # known routes keep their template, path parameters included
    await client.get("/v1/models/no-such-model")
    assert 'endpoint="/v1/models/{name:path}"' in (await client.get("/metrics")).text


class Body:
    """A request body sent chunk by chunk (no Content-Length: chunked), remembering how much was read."""

    def __init__(self, chunks: list[bytes]):
        self.chunks = chunks
        self.sent = 0

    async def __aiter__(self):
        for chunk in self.chunks:
            self.sent += 1
            yield chunk


async def test_chunked_body_over_the_limit_is_413(client):
    head = json.dumps(chat())[:-1].encode() + b', "pad": "'
    chunks = [head] + [b"x" * (256 * 1024)] * (MAX_BODY_BYTES // (256 * 1024) + 4) + [b'"}']
    body = Body(chunks)
    resp = await client.post("/v1/chat/completions", content=body, headers={"content-type": "application/json"})
    assert resp.status_code == 413, resp.text
    assert resp.json()["error"]["code"] == "request_too_large"
    assert body.sent < len(chunks)  # refused while reading: the rest was never read
    # under the limit, chunked still works
    ok = Body([json.dumps(chat())[:20].encode(), json.dumps(chat())[20:].encode()])
    resp = await client.post("/v1/chat/completions", content=ok, headers={"content-type": "application/json"})
    assert resp.status_code == 200, resp.text


@pytest.mark.parametrize("authorization", [None, "Bearer wrong-key"])
async def test_key_is_checked_before_the_body_is_read(client, authorization):
    body = Body([b"{not json at all", b" and never parsed"])
    headers = {"content-type": "application/json"}
    if authorization:
        headers["Authorization"] = authorization
    request = client.build_request("POST", "/v1/chat/completions", content=body, headers=headers)
    if authorization is None:
        del request.headers["Authorization"]
    resp = await client.send(request)
    assert resp.status_code == 401, resp.text
    assert resp.json()["error"]["code"] == "invalid_api_key"
    assert body.sent == 0


async def test_stop_sequences_are_bounded(client):
    assert_400(await client.post("/v1/chat/completions", json=chat(stop="x" * (3 * 1024 * 1024 // 4))), "stop")
    assert_400(await client.post("/v1/chat/completions", json=chat(stop=["a", "y" * 257])), "stop")
    assert_400(await client.post("/v1/completions", json={"model": MODEL, "prompt": "Hi", "stop": "z" * 300}), "stop")
    ok = await client.post("/v1/chat/completions", json=chat(stop=["a" * 256, "b", "c", "d"]))
    assert ok.status_code == 200, ok.text


@pytest.mark.parametrize("field, value", [
    ("logit_bias", {"1234": 100}),
    ("best_of", 3),
    ("functions", [{"name": "f", "parameters": {}}]),
    ("function_call", "auto"),
    ("prediction", {"type": "content", "content": "x"}),
    ("audio", {"voice": "alloy", "format": "wav"}),
])
async def test_parameters_the_engine_ignores_are_refused(client, field, value):
    err = assert_400(await client.post("/v1/chat/completions", json=chat(**{field: value})), field)
    assert "not supported" in err["message"]
    err = assert_400(await client.post("/v1/completions", json={"model": MODEL, "prompt": "Hi", field: value}), field)


async def test_no_op_values_of_unsupported_parameters_are_accepted(client):
    resp = await client.post("/v1/chat/completions", json=chat(logit_bias={}, best_of=1, tool_choice="none"))
    assert resp.status_code == 200, resp.text


async def test_unknown_field_names_are_logged_bounded_and_escaped(client, caplog):
    caplog.set_level(logging.INFO, logger="serving")
    extras = {f"evil\nINJECTED line {i} " + "n" * 200: i for i in range(40)}
    resp = await client.post("/v1/chat/completions", json=chat(**extras))
    assert resp.status_code == 200, resp.text
    lines = [r.getMessage() for r in caplog.records if "ignored unknown fields" in r.getMessage()]
    assert len(lines) == 1
    line = lines[0]
    assert "\n" not in line and "\\n" in line  # escaped
    assert line.count("evil") == 16 and "(and 24 more)" in line
    assert "n" * 65 not in line  # each name cut to 64 characters
    assert len(line) < 16 * 80 + 200
