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
