"""The ``openvino_genai.GenerationConfig`` fields and the structured-output config for one request
(pure functions of the request; unit-tested without an engine)."""

from __future__ import annotations

import json
import random
from typing import Any

from serving.engine import Constraint, SamplingParams
from serving.errors import RequestError

__all__ = ["generation_config_kwargs", "structured_output_config"]


def generation_config_kwargs(sampling: SamplingParams, max_new_tokens: int, eos_token_id: int | None) -> dict[str, Any]:
    """The ``openvino_genai.GenerationConfig`` fields for one request (pure; unit-tested)."""
    kw: dict[str, Any] = {"max_new_tokens": max_new_tokens}
    if sampling.temperature > 0:
        kw.update(do_sample=True, temperature=sampling.temperature, top_p=sampling.top_p)
        if sampling.top_k > 0:
            kw["top_k"] = sampling.top_k
        if sampling.seed is not None:
            kw["rng_seed"] = sampling.seed
    else:
        kw["do_sample"] = False
    if sampling.frequency_penalty:
        kw["frequency_penalty"] = sampling.frequency_penalty
    if sampling.presence_penalty:
        kw["presence_penalty"] = sampling.presence_penalty
    if sampling.logprobs:
        kw["logprobs"] = 1
    if sampling.ignore_eos:
        kw["ignore_eos"] = True
    if sampling.n > 1 and sampling.temperature > 0:
        kw["num_return_sequences"] = sampling.n  # greedy choices are all the same: one is decoded
        kw.setdefault("rng_seed", random.randrange(1 << 31))  # else every request samples alike
    if eos_token_id is not None and eos_token_id >= 0:
        kw["eos_token_id"] = eos_token_id
    return kw


def structured_output_config(ov_genai: Any, constraint: Constraint) -> Any:
    """The ``openvino_genai.StructuredOutputConfig`` (xgrammar underneath) for a constraint."""
    S = ov_genai.StructuredOutputConfig
    if constraint.kind == "json_object":
        from serving.structured import JSON_OBJECT_GRAMMAR

        return S(grammar=JSON_OBJECT_GRAMMAR)
    if constraint.kind == "json_schema":
        return S(json_schema=constraint.value)
    if constraint.kind == "regex":
        return S(regex=constraint.value)
    if constraint.kind == "grammar":
        return S(grammar=constraint.value)
    if constraint.kind == "tool_tags":
        from serving.tools import END, START

        tags = [S.Tag(f'{START}\n{{"name": {json.dumps(name)}, "arguments": ', S.JSONSchema(schema), f"}}\n{END}")
                for name, schema in constraint.tools]
        return S(structural_tags_config=S.TriggeredTags(triggers=[START], tags=tags,
                                                        stop_after_first=constraint.value == "single"))
    raise RequestError(f"constraint kind {constraint.kind!r} is not supported by the OpenVINO backend",
                       param=constraint.param)
