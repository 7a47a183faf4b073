"""The OpenVINO engine itself (real int8 reference model, loaded once per session)."""

from __future__ import annotations

from onramp.reference import PARIS_QUESTION
import asyncio

import pytest

from serving.engine import ChatMessage, Engine, GenerationRequest, SamplingParams
from serving.errors import ContextLengthError

pytestmark = pytest.mark.slow

_n = 0


def req(prompt=None, messages=None, **sampling):
    global _n
    _n += 1
    return GenerationRequest(request_id=f"t{_n}", prompt=prompt, messages=messages,
                             sampling=SamplingParams(**{"temperature": 0.0, **sampling}))


async def collect(engine, request):
    deltas = [d async for d in engine.stream(request)]
    return "".join(d.text for d in deltas), deltas


async def test_describe_and_chat_template(ov_engine):
    assert isinstance(ov_engine, Engine)
    info = ov_engine.describe()
    assert info.backend == "openvino" and info.name == "smollm2"
    assert info.max_context == 4096 and info.max_concurrent == 16 and info.version
    text, deltas = await collect(ov_engine, req(messages=[ChatMessage("user", PARIS_QUESTION)],
                                                max_tokens=20))
    assert "Paris" in text
    assert deltas[-1].finish_reason == "stop" and deltas[-1].completion_tokens >= len(deltas) - 1
    assert all(d.finish_reason is None for d in deltas[:-1])
    assert deltas[-1].prompt_tokens > 10


async def test_continuous_batching_requests_join_and_leave(ov_engine):
    """A short request that arrives while a long one runs joins the batch and finishes first."""
    order: list[str] = []
    long_started = asyncio.Event()

    async def run(name, request):
        async for _ in ov_engine.stream(request):
            long_started.set()
        order.append(name)

    # long enough that it cannot finish while the short one is prefilled and decoded, at any speed
    long = asyncio.create_task(run("long", req(prompt="Once upon a time", max_tokens=200, ignore_eos=True)))
    await asyncio.wait_for(long_started.wait(), timeout=300)  # it is in the batch: it produced a token
    assert ov_engine.running == 1
    await run("short", req(prompt="Hello", max_tokens=3, ignore_eos=True))
    assert order == ["short"]
    await long
    assert order == ["short", "long"]


async def test_abort_frees_the_request(ov_engine):
    stream = ov_engine.stream(req(prompt="Once upon a time", max_tokens=400, ignore_eos=True))
    n = 0
    async for _ in stream:
        n += 1
        if n == 3:
            break
    await stream.aclose()  # what a disconnecting client's stream does
    for _ in range(100):
        if ov_engine.running == 0:
            break
        await asyncio.sleep(0.05)
    assert ov_engine.running == 0
    # the engine keeps serving
    text, _ = await collect(ov_engine, req(prompt="The capital of France is", max_tokens=4))
    assert text


async def test_limits_and_sampling(ov_engine):
    with pytest.raises(ContextLengthError) as exc:
        await collect(ov_engine, req(prompt="hi", max_tokens=5000))
    assert exc.value.param == "max_tokens"
    _, deltas = await collect(ov_engine, req(prompt="Once upon a time", max_tokens=7, ignore_eos=True))
    assert deltas[-1].completion_tokens == 7 and deltas[-1].finish_reason == "length"
    a, _ = await collect(ov_engine, req(prompt="My favourite animal is", max_tokens=10, temperature=1.0, seed=5))
    b, _ = await collect(ov_engine, req(prompt="My favourite animal is", max_tokens=10, temperature=1.0, seed=5))
    assert a == b
    text, deltas = await collect(ov_engine, req(messages=[ChatMessage("user", PARIS_QUESTION)],
                                                stop=[" Paris"], logprobs=True))
    assert text == "The capital of France is" and deltas[-1].finish_reason == "stop"
    lps = [lp.logprob for d in deltas for lp in (d.logprobs or [])]
    assert lps and all(lp <= 0 for lp in lps)
