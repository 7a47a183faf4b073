"""Units of issue 11 (no engine): response_format and tools -> constraints, the tool-call parser
(streamed = whole), history rendering for templates without tools, and the parameters the
OpenVINO and TensorRT-LLM backends would be given."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest

from serving.choices import Choice, Tally, tool_call_deltas
from serving.engine import ChatMessage, Constraint, Delta, SamplingParams
from serving.engines.openvino import generation_config_kwargs, structured_output_config
from serving.engines.trtllm import guided_decoding_kwargs, llm_kwargs, sampling_kwargs, token_logprobs
from serving.errors import RequestError
from serving.structured import JSON_OBJECT_GRAMMAR, check_schema, response_format_constraint
from serving.tools import ToolCallParser, chat_history, parse_tools, tool_constraint

TOOL = {"type": "function", "function": {"name": "get_weather", "parameters": {
    "type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}


# ---------------------------------------------------------------- response_format
def test_response_format_constraints():
    assert response_format_constraint(None) is None
    assert response_format_constraint({"type": "text"}) is None
    assert response_format_constraint({"type": "json_object"}) == Constraint(kind="json_object")
    c = response_format_constraint({"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "object"}}})
    assert c.kind == "json_schema" and json.loads(c.value) == {"type": "object"} and c.param == "response_format"


@pytest.mark.parametrize("bad, param", [
    ("json", "response_format"),
    ({"type": "yaml"}, "response_format.type"),
    ({"type": "json_schema"}, "response_format.json_schema"),
    ({"type": "json_schema", "json_schema": {"name": "x", "schema": []}}, "response_format.json_schema.schema"),
])
def test_bad_response_format_names_the_field(bad, param):
    with pytest.raises(RequestError) as err:
        response_format_constraint(bad)
    assert err.value.param == param and err.value.status == 400


def test_invalid_json_schema_is_refused_before_the_engine():
    with pytest.raises(RequestError) as err:
        check_schema(Constraint(kind="json_schema", value='{"type": "objectx"}'))
    assert err.value.param == "response_format" and "not valid" in err.value.message
    check_schema(Constraint(kind="json_schema", value='{"type": "object", "properties": {"a": {"type": "integer"}}}'))


# ---------------------------------------------------------------- tools
def test_parse_tools_modes_and_errors():
    assert parse_tools(None, None) == ([], None)
    assert parse_tools([TOOL], None)[1] == "auto"
    assert parse_tools([TOOL], "none")[1] is None
    assert parse_tools([TOOL], "required")[1] == "required"
    assert parse_tools([TOOL], {"type": "function", "function": {"name": "get_weather"}})[1] == "get_weather"
    for tools, choice, param in [([TOOL], {"type": "function", "function": {"name": "x"}}, "tool_choice"),
                                 (None, "required", "tool_choice"),
                                 ([{"type": "function", "function": {"name": "bad name!"}}], None,
                                  "tools[0].function.name"),
                                 ([TOOL, TOOL], None, "tools[1].function.name"),
                                 ([{"type": "retrieval"}], None, "tools[0]")]:
        with pytest.raises(RequestError) as err:
            parse_tools(tools, choice)
        assert err.value.param == param


def test_tool_constraints():
    forced = tool_constraint([TOOL], "get_weather")
    schema = json.loads(forced.value)
    assert forced.kind == "json_schema" and forced.param == "tools"
    assert schema["properties"]["name"] == {"const": "get_weather"}
    assert schema["properties"]["arguments"] == TOOL["function"]["parameters"]
    other = {"type": "function", "function": {"name": "b"}}
    assert "anyOf" in json.loads(tool_constraint([TOOL, other], "required").value)
    auto = tool_constraint([TOOL], "auto", parallel=False)
    assert auto.kind == "tool_tags" and auto.value == "single" and auto.tools[0][0] == "get_weather"
    assert tool_constraint([TOOL], None) is None


def _pieces_to_calls(pieces):
    calls: dict[int, dict] = {}
    content = ""
    for p in pieces:
        if p.content is not None:
            content += p.content
            continue
        call = calls.setdefault(p.index, {"id": None, "name": None, "arguments": ""})
        if p.id:
            call.update(id=p.id, name=p.name)
        call["arguments"] += p.arguments or ""
    return content, calls


@pytest.mark.parametrize("forced, text", [
    (True, '{"name": "get_weather", "arguments": {"city": "Paris"}}'),
    (True, '{\n  "name": "get_weather",\n  "arguments": {\n    "city": "Paris"\n  }\n}'),
    (False, 'Let me check. <tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>'),
])
def test_parser_streamed_in_any_split_equals_whole(forced, text):
    whole = ToolCallParser(forced=forced)
    pieces = whole.feed(text) + whole.finish()
    content, calls = _pieces_to_calls(pieces)
    assert json.loads(calls[0]["arguments"]) == {"city": "Paris"} and calls[0]["name"] == "get_weather"
    assert calls[0]["id"].startswith("call_")
    for size in (1, 2, 3, 7):
        streamed = ToolCallParser(forced=forced)
        got = []
        for i in range(0, len(text), size):
            got += streamed.feed(text[i:i + size])
        got += streamed.finish()
        s_content, s_calls = _pieces_to_calls(got)
        assert s_content == content and s_calls[0]["arguments"] == calls[0]["arguments"], size
        assert streamed.calls[0]["function"]["arguments"] == calls[0]["arguments"]
    assert (content.strip() == "Let me check.") is (not forced)


def test_parser_two_calls_and_plain_text():
    p = ToolCallParser()
    text = ('<tool_call>{"name": "a", "arguments": {"x": 1}}</tool_call>\n'
            '<tool_call>{"name": "b", "arguments": {}}</tool_call>')
    p.feed(text)
    p.finish()
    assert [c["function"]["name"] for c in p.calls] == ["a", "b"]
    assert [json.loads(c["function"]["arguments"]) for c in p.calls] == [{"x": 1}, {}]
    plain = ToolCallParser()
    out = plain.feed("Hello <tool") + plain.feed("box> world") + plain.finish()
    assert "".join(x.content for x in out) == "Hello <toolbox> world" and not plain.calls


def test_choice_reports_tool_calls_and_sdk_shaped_deltas():
    c = Choice(index=0, parser=ToolCallParser(forced=True))
    pieces = c.feed(Delta(text='{"name": "get_weather", "arguments": {"city": "Rome"}}', prompt_tokens=5,
                          completion_tokens=9, finish_reason="stop"))
    deltas = tool_call_deltas(pieces)
    assert deltas[0]["id"].startswith("call_") and deltas[0]["function"] == {"name": "get_weather", "arguments": ""}
    assert json.loads("".join(d["function"]["arguments"] for d in deltas)) == {"city": "Rome"}
    msg = c.message()
    assert c.finish_reason == "tool_calls" and msg["content"] is None and len(msg["tool_calls"]) == 1
    t = Tally()
    for i, n in ((0, 3), (1, 4), (0, 5)):
        t.add(Delta(text="", prompt_tokens=10, completion_tokens=n, index=i))
    assert t.usage() == {"prompt_tokens": 10, "completion_tokens": 9, "total_tokens": 19}


def test_history_for_a_template_without_tools():
    template = "{% for message in messages %}{{ message['role'] + message['content'] }}{% endfor %}"
    call = {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}}
    msgs = [ChatMessage("user", "Weather?"), ChatMessage("assistant", "", tool_calls=(call,)),
            ChatMessage("tool", '{"t": 21}', tool_call_id="call_1")]
    history, tools = chat_history(msgs, [TOOL], template)
    assert tools is None
    assert history[0]["role"] == "system" and "<tools>" in history[0]["content"]
    assert "get_weather" in history[0]["content"]
    block = '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>'
    assert history[2] == {"role": "assistant", "content": block}
    assert history[3] == {"role": "user", "content": '<tool_response>\n{"t": 21}\n</tool_response>'}
    # a template that knows tools gets them (and calls with their arguments as objects)
    aware = "{{ tools }}{% for m in messages %}{{ m.tool_calls }}{{ m.role == 'tool' }}{% endfor %}"
    history, tools = chat_history(msgs, [TOOL], aware)
    assert tools == [TOOL] and history[1]["tool_calls"][0]["function"]["arguments"] == {"city": "Paris"}
    assert history[2]["role"] == "tool" and history[2]["tool_call_id"] == "call_1"


# ---------------------------------------------------------------- backend parameters
def test_openvino_parameters():
    import openvino_genai as ov_genai

    kw = generation_config_kwargs(SamplingParams(temperature=0.7, n=3, logprobs=True), 16, 2)
    assert kw["num_return_sequences"] == 3 and "rng_seed" in kw and kw["logprobs"] == 1
    assert "num_return_sequences" not in generation_config_kwargs(SamplingParams(temperature=0, n=3), 16, 2)
    soc = structured_output_config(ov_genai, Constraint(kind="json_object"))
    assert soc.grammar == JSON_OBJECT_GRAMMAR
    assert structured_output_config(ov_genai, Constraint(kind="json_schema", value='{"type":"object"}')).json_schema
    tags = structured_output_config(ov_genai, tool_constraint([TOOL], "auto"))
    assert tags.structural_tags_config is not None


def test_trtllm_parameters():
    params = TOOL["function"]["parameters"]
    kw = sampling_kwargs(SamplingParams(temperature=1.0, n=2, logprobs=True, top_logprobs=5, prompt_logprobs=1,
                                        constraint=Constraint(kind="json_schema", value='{"type":"object"}')), 32, 2)
    assert kw["n"] == 2 and kw["logprobs"] == 5 and kw["prompt_logprobs"] == 1
    assert kw["guided_decoding"] == {"json": '{"type":"object"}'}
    assert guided_decoding_kwargs(Constraint(kind="json_object")) == {"grammar": JSON_OBJECT_GRAMMAR}
    assert guided_decoding_kwargs(Constraint(kind="regex", value="a+")) == {"regex": "a+"}
    tag = json.loads(guided_decoding_kwargs(tool_constraint([TOOL], "auto"))["structural_tag"])
    assert tag["triggers"] == ["<tool_call>"] and tag["structures"][0]["schema"] == params
    assert tag["structures"][0]["begin"].startswith('<tool_call>\n{"name": "get_weather"')
    assert "n" not in sampling_kwargs(SamplingParams(), 8, None)
    manifest = SimpleNamespace(layout=SimpleNamespace(tp=1, pp=1))
    assert llm_kwargs("/e", manifest)["guided_decoding_backend"] == "xgrammar"
    lps = token_logprobs([7, 9], [{7: SimpleNamespace(logprob=-0.5, rank=1), 3: SimpleNamespace(logprob=-1.5, rank=2)},
                                  {4: -0.1, 9: -2.0}], str, 2)
    assert lps[0].logprob == -0.5 and lps[0].top == (("7", -0.5), ("3", -1.5))
    assert lps[1].logprob == -2.0 and lps[1].top[0] == ("4", -0.1)


def test_scoring_helpers():
    import numpy as np

    from serving.engines.ov_scoring import log_softmax, top_k

    lp = log_softmax(np.array([[1.0, 3.0, 2.0, 0.5]]))[0]
    assert np.exp(lp).sum() == pytest.approx(1.0)
    assert [i for i, _ in top_k(lp, 3)] == [1, 2, 0] and top_k(lp, 0) == []
