"""The request policy every backend shares (serving.prompting) and the one in-stream error chunk
(serving.sse), as pure functions: a backend supplies only its tokenizer's functions."""

from __future__ import annotations

import json

import pytest

from serving.engine import ChatMessage, GenerationRequest, SamplingParams
from serving.errors import ContextLengthError, RequestError
from serving.prompting import completion_budget, prepare_prompt, render_chat
from serving.sse import error_event

TEMPLATE = "{% for m in messages %}<{{ m.role }}>{{ m.content }}{% endfor %}<assistant>"


def _apply(history, template, tools):
    import jinja2

    return jinja2.Environment().from_string(template).render(messages=history, tools=tools)


def _words(text: str) -> list[int]:
    return [len(w) for w in text.split()]


def _prepare(request: GenerationRequest, max_context: int = 16):
    return prepare_prompt(request, encode=_words,
                          render=lambda m, t: render_chat(_apply, TEMPLATE, m, t, model="m"),
                          vocab_size=100, max_context=max_context)


def test_messages_prompts_and_token_ids_share_one_policy():
    chat = GenerationRequest("1", messages=[ChatMessage("user", "a b c")])
    assert _prepare(chat) == ([7, 1, 12], 13)  # "<user>a b c<assistant>": the rest of the context
    capped = GenerationRequest("2", prompt="x y", sampling=SamplingParams(max_tokens_default=5))
    assert _prepare(capped) == ([1, 1], 5)
    assert _prepare(GenerationRequest("3", prompt_ids=[1, 2], sampling=SamplingParams(max_tokens=14))) == ([1, 2], 14)
    with pytest.raises(RequestError, match=r"token ids must be in \[0, 100\)") as err:
        _prepare(GenerationRequest("4", prompt_ids=[100]))
    assert err.value.param == "prompt"
    with pytest.raises(RequestError, match="the prompt is empty"):
        _prepare(GenerationRequest("5", prompt="  "))


def test_context_length_errors_name_the_parameter_and_the_limit():
    with pytest.raises(ContextLengthError, match="the messages alone has 3") as err:
        _prepare(GenerationRequest("1", messages=[ChatMessage("user", "a b c")]), max_context=3)
    assert err.value.param == "messages"
    with pytest.raises(ContextLengthError, match="Lower max_tokens to at most 14"):
        completion_budget(2, SamplingParams(max_tokens=15), 16, "prompt")


def test_chat_template_problems_are_request_errors():
    with pytest.raises(RequestError, match="has no chat template") as err:
        render_chat(_apply, "", [ChatMessage("user", "hi")], None, model="m")
    assert err.value.code == "no_chat_template"
    with pytest.raises(RequestError, match="cannot render these messages: 'nope' is undefined") as err:
        render_chat(_apply, "{{ nope() }}", [ChatMessage("user", "hi")], None, model="m")
    assert err.value.code == "invalid_messages"


def test_one_in_stream_error_chunk():
    refused = json.loads(error_event(RequestError("bad grammar", param="response_format", code="invalid_grammar"))
                         .removeprefix(b"data: "))
    assert refused == {"error": {"message": "bad grammar", "type": "invalid_request_error",
                                 "param": "response_format", "code": "invalid_grammar"}}
    failed = json.loads(error_event(RuntimeError("step failed")).removeprefix(b"data: "))
    assert failed["error"]["type"] == "server_error" and failed["error"]["message"] == "generation failed: step failed"
