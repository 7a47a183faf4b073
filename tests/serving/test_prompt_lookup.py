"""Prompt-lookup decoding (``runtime.decoding``, a tuner knob): drafts from the prompt checked by the
model itself. Greedy replies are the same tokens as without it; every API feature still works with it
on (sampled ``n`` > 1 runs as ``n`` requests, since the pipeline drafts for one sequence per request)."""

from __future__ import annotations

import pytest

from onramp.reference import PARIS_QUESTION
from serving.engine import GenerationRequest, SamplingParams
from serving.errors import RequestError

pytestmark = pytest.mark.slow

LOOKUP = {"num_assistant_tokens": 3, "max_ngram_size": 3}
COPY_ME = ("Repeat this sentence exactly: The quick brown fox jumps over the lazy dog near the river bank, "
           "and the dog keeps sleeping under the old oak tree.")


async def reply(engine, tag: str, content: str, **sampling) -> tuple[dict[int, list[int]], dict[int, str], int]:
    """(ids per choice, text per choice, largest number of tokens one delta carried)."""
    from serving.engine import ChatMessage

    request = GenerationRequest(request_id=tag, messages=[ChatMessage("user", content)],
                                sampling=SamplingParams(**{"max_tokens": 24, "temperature": 0.0, "logprobs": True,
                                                           **sampling}))
    ids: dict[int, list[int]] = {}
    texts: dict[int, str] = {}
    most = 0
    async for d in engine.stream(request):
        ids.setdefault(d.index, []).extend(lp.id for lp in d.logprobs or ())
        texts[d.index] = texts.get(d.index, "") + d.text
        most = max(most, d.new_tokens)
    return ids, texts, most


@pytest.fixture(scope="module")
def engines(ov_int8_engine):
    from serving.engines import load_engine

    off = load_engine(ov_int8_engine, name="off", max_num_seqs=4, decoding={})
    on = load_engine(ov_int8_engine, name="on", max_num_seqs=4, decoding=LOOKUP)
    yield off, on
    off.close()
    on.close()


async def test_greedy_replies_are_the_same_tokens_with_prompt_lookup(engines):
    off, on = engines
    assert off.decoding == {} and on.decoding == LOOKUP
    for i, question in enumerate([PARIS_QUESTION, COPY_ME]):
        plain, texts, _ = await reply(off, f"off-{i}", question)
        drafted, drafted_texts, _ = await reply(on, f"on-{i}", question)
        assert len(plain[0]) > 5
        assert drafted == plain and drafted_texts == texts
    assert "Paris" in (await reply(on, "paris", PARIS_QUESTION))[1][0]


async def test_sampled_choices_structured_output_and_stop_work_with_prompt_lookup(engines):
    from serving.engine import Constraint

    _, on = engines
    ids, texts, _ = await reply(on, "n3", PARIS_QUESTION, temperature=1.0, n=3, seed=11, logprobs=False)
    assert sorted(texts) == [0, 1, 2] and all(texts.values())
    _, again, _ = await reply(on, "n3-again", PARIS_QUESTION, temperature=1.0, n=3, seed=11, logprobs=False)
    assert again == texts  # choice i is seeded with seed + i: the same seed gives the same choices
    _, stopped, _ = await reply(on, "stop", PARIS_QUESTION, stop=["Paris"])
    assert "Paris" not in stopped[0] and stopped[0]
    schema = '{"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}'
    _, doc, _ = await reply(on, "json", PARIS_QUESTION, max_tokens=40,
                            constraint=Constraint(kind="json_schema", value=schema, param="response_format"))
    import json

    assert isinstance(json.loads(doc[0])["city"], str)
    with pytest.raises(RequestError):  # a bad request is still refused by name, not run
        await reply(on, "bad", PARIS_QUESTION, max_tokens=10**9)


def test_lookup_below_is_read_only_with_drafts():
    from types import SimpleNamespace

    from builders.ov_runtime import decoding_settings, split_decoding

    settings = decoding_settings(SimpleNamespace(runtime={"decoding": {"num_assistant_tokens": 3, "lookup_below": 2}}))
    assert settings == {"num_assistant_tokens": 3, "max_ngram_size": 3, "lookup_below": 2}
    assert split_decoding(settings) == ({"num_assistant_tokens": 3, "max_ngram_size": 3}, 2)
    # no drafts: nothing adaptive
    assert decoding_settings(SimpleNamespace(runtime={"decoding": {"lookup_below": 2}})) == {}
    assert split_decoding({}) == ({}, 0)


async def test_adaptive_prompt_lookup_drafts_only_while_few_requests_run(ov_int8_engine, engines):
    """``lookup_below``: a greedy request that starts while fewer than that many run (counting itself)
    is drafted for; when more arrive it moves to the plain pipeline (its tokens so far become its
    prompt) and the newcomers run without drafts. Greedy replies are the model's own either way."""
    import asyncio

    from serving.engines import load_engine

    off, on = engines
    adaptive = load_engine(ov_int8_engine, name="adaptive", max_num_seqs=4, decoding={**LOOKUP, "lookup_below": 2})
    try:
        assert len(adaptive._pipes) == 2 and len(on._pipes) == 1
        plain = {}
        for i, question in enumerate([PARIS_QUESTION, COPY_ME]):  # one at a time: each is drafted for
            plain[question] = await reply(off, f"off-a{i}", question)
            drafted, drafted_texts, _ = await reply(adaptive, f"ad-{i}", question)
            assert (drafted, drafted_texts) == plain[question][:2]
        assert adaptive.routed == {"drafted": 2, "plain": 0, "moved": 0}
        # two at once: neither is drafted for
        both = await asyncio.gather(*[reply(adaptive, f"pair-{i}", PARIS_QUESTION) for i in range(2)])
        assert adaptive.routed == {"drafted": 2, "plain": 2, "moved": 0}
        assert all("Paris" in texts[0] for _, texts, _ in both)
        # one drafted request running; two more arrive after its first tokens: it moves, they run plain
        from serving.engine import ChatMessage

        joined: list[asyncio.Task] = []
        ids: list[int] = []
        request = GenerationRequest(request_id="mover", messages=[ChatMessage("user", COPY_ME)],
                                    sampling=SamplingParams(max_tokens=24, temperature=0.0, logprobs=True))
        async for d in adaptive.stream(request):
            ids.extend(lp.id for lp in d.logprobs or ())
            if not joined:
                joined = [asyncio.create_task(reply(adaptive, f"join-{i}", PARIS_QUESTION)) for i in range(2)]
        assert ids == plain[COPY_ME][0][0]  # the same 24 tokens as without drafts, moved or not
        assert all("Paris" in texts[0] for _, texts, _ in await asyncio.gather(*joined))
        assert adaptive.routed == {"drafted": 3, "plain": 4, "moved": 1}
        # sampled requests are never drafted for in the adaptive engine (they could not move unchanged)
        _, texts, _ = await reply(adaptive, "n2", PARIS_QUESTION, temperature=1.0, n=2, seed=5, logprobs=False)
        assert sorted(texts) == [0, 1] and all(texts.values())
        assert adaptive.routed["drafted"] == 3
        await reply(adaptive, "penalized", PARIS_QUESTION, presence_penalty=0.5)  # its token counts could not move
        assert adaptive.routed["drafted"] == 3
        assert on.routed["plain"] == 0 and off.routed["drafted"] == 0
    finally:
        adaptive.close()
