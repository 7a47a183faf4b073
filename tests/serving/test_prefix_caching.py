"""Prefix caching (on by default for new builds): a chat turn reuses the KV blocks of the system
prompt and the history; the greedy replies are the same tokens as without it."""

from __future__ import annotations

import pytest

from onramp.reference import PARIS_QUESTION
from serving.engine import ChatMessage, GenerationRequest, SamplingParams

pytestmark = pytest.mark.slow

SYSTEM = "You are a helpful assistant. You answer geography questions briefly and correctly."
# questions the reference answers with wide margins (no near ties for the KV cache's rounding to flip)
TURNS = [PARIS_QUESTION, "What is the capital of Italy? Answer in one sentence.",
         "What is the capital of Germany? Answer in one sentence."]


async def play(engine, tag: str) -> tuple[list[list[int]], list[str]]:
    """The whole conversation, each turn sending the history so far; the reply ids and texts."""
    messages = [ChatMessage("system", SYSTEM)]
    ids, texts = [], []
    for t, question in enumerate(TURNS):
        messages.append(ChatMessage("user", question))
        request = GenerationRequest(request_id=f"{tag}-{t}", messages=list(messages),
                                    sampling=SamplingParams(max_tokens=16, temperature=0.0, logprobs=True))
        reply, text = [], ""
        async for d in engine.stream(request):
            reply.extend(lp.id for lp in d.logprobs or ())
            text += d.text
        ids.append(reply)
        texts.append(text)
        messages.append(ChatMessage("assistant", text))
    return ids, texts


async def test_a_multi_turn_conversation_gets_the_same_greedy_tokens_with_prefix_caching(ov_int8_engine):
    from builders.ov_runtime import scheduler_settings
    from serving.engines import load_engine

    sched = scheduler_settings(ov_int8_engine)
    assert sched["enable_prefix_caching"] is True  # what a new build records
    off = load_engine(ov_int8_engine, name="off", max_num_seqs=2, scheduler={**sched, "enable_prefix_caching": False})
    on = load_engine(ov_int8_engine, name="on", max_num_seqs=2, scheduler=sched)
    try:
        plain, texts = await play(off, "off")
        cached, _ = await play(on, "on")  # turns 2 and 3 start from the cached history
        again, _ = await play(on, "on-again")  # the whole conversation is cached now
    finally:
        off.close()
        on.close()
    assert all(len(reply) > 3 for reply in plain)
    assert "Paris" in texts[0] and "Rome" in texts[1] and "Berlin" in texts[2]
    assert cached == plain
    assert again == plain
