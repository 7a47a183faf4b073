"""TensorRT-LLM backend: the engine protocol over ``tensorrt_llm``'s LLM API.

``LLM(model=engine_dir, tokenizer=engine_dir, tensor_parallel_size=<manifest layout.tp>)`` and
``generate_async(prompt_ids, SamplingParams(...), streaming=True)``; each streamed
``RequestOutput`` gives ``outputs[0].text_diff`` / ``token_ids_diff`` / ``finish_reason``, and
``abort()`` drops a request. ``tensorrt_llm`` is imported only when such an engine is loaded;
where it is missing (no NVIDIA GPU, not installable) loading says so and what to do.
The request -> ``SamplingParams`` and manifest -> ``LLM(...)`` mappings are pure functions,
unit-tested without TensorRT-LLM.
"""

from __future__ import annotations

import asyncio
import json
import logging
from pathlib import Path
from typing import Any
from collections.abc import AsyncIterator

from serving.engine import Constraint, Delta, EngineInfo, GenerationRequest, SamplingParams, TokenLogprob
from serving.errors import BackendUnavailable, RequestError
from serving.prompting import prepare_prompt, render_chat

log = logging.getLogger(__name__)

__all__ = ["TRTLLMEngine", "guided_decoding_kwargs", "llm_kwargs", "sampling_kwargs"]


def guided_decoding_kwargs(constraint: Constraint) -> dict[str, Any]:
    """``tensorrt_llm.llmapi.GuidedDecodingParams`` keyword arguments (xgrammar) for a constraint."""
    if constraint.kind == "json_object":
        from serving.structured import JSON_OBJECT_GRAMMAR

        return {"grammar": JSON_OBJECT_GRAMMAR}  # one-line JSON, as on the OpenVINO backend
    if constraint.kind == "json_schema":
        return {"json": constraint.value}
    if constraint.kind == "regex":
        return {"regex": constraint.value}
    if constraint.kind == "grammar":
        return {"grammar": constraint.value}
    if constraint.kind == "tool_tags":
        from serving.tools import END, START

        tag = {"type": "structural_tag", "triggers": [START], "structures": [
            {"begin": f'{START}\n{{"name": {json.dumps(name)}, "arguments": ', "schema": json.loads(schema),
             "end": f"}}\n{END}"} for name, schema in constraint.tools]}
        return {"structural_tag": json.dumps(tag)}
    raise RequestError(f"constraint kind {constraint.kind!r} is not supported by the TensorRT-LLM backend",
                       param=constraint.param)


def sampling_kwargs(sampling: SamplingParams, max_new_tokens: int, end_id: int | None) -> dict[str, Any]:
    """``tensorrt_llm.SamplingParams`` keyword arguments for one request."""
    kw: dict[str, Any] = {"max_tokens": max_new_tokens, "detokenize": True}
    if end_id is not None:
        kw["end_id"] = end_id
    if sampling.temperature > 0:
        kw["temperature"] = sampling.temperature
        kw["top_p"] = sampling.top_p
        if sampling.top_k > 0:
            kw["top_k"] = sampling.top_k
        if sampling.seed is not None:
            kw["seed"] = sampling.seed
    else:
        kw["top_k"] = 1  # greedy
    if sampling.frequency_penalty:
        kw["frequency_penalty"] = sampling.frequency_penalty
    if sampling.presence_penalty:
        kw["presence_penalty"] = sampling.presence_penalty
    if sampling.stop:
        kw["stop"] = list(sampling.stop)
        kw["include_stop_str_in_output"] = False
    if sampling.logprobs:
        kw["logprobs"] = max(1, sampling.top_logprobs)  # top-K per token (the sampled one among them)
    if sampling.prompt_logprobs is not None:
        kw["prompt_logprobs"] = max(1, sampling.prompt_logprobs)
    if sampling.n > 1:
        kw["n"] = sampling.n
    if sampling.ignore_eos:
        kw["ignore_eos"] = True
    if sampling.constraint is not None:
        kw["guided_decoding"] = guided_decoding_kwargs(sampling.constraint)  # -> GuidedDecodingParams(**...)
    return kw


def _lp_value(v: Any) -> float:
    return float(getattr(v, "logprob", v))


def token_logprobs(ids: list[int], raw: list, decode, k: int) -> list[TokenLogprob]:
    """TensorRT-LLM's per-token logprobs (a float each, or {token_id: Logprob(logprob, rank)} with
    the top-K) as :class:`TokenLogprob` s, top alternatives best first."""
    out = []
    for tok, entry in zip(ids, raw, strict=False):
        if isinstance(entry, dict):
            ranked = sorted(((int(t), _lp_value(v)) for t, v in entry.items()), key=lambda x: -x[1])
            own = next((v for t, v in ranked if t == tok), ranked[0][1] if ranked else 0.0)
            top = tuple((decode(t), v) for t, v in ranked[:k]) if k else ()
            out.append(TokenLogprob(decode(tok), own, top=top, id=tok))
        else:
            out.append(TokenLogprob(decode(tok), _lp_value(entry), id=tok))
    return out


def llm_kwargs(engine_dir: Path, manifest: Any) -> dict[str, Any]:
    """``tensorrt_llm.LLM`` keyword arguments for a built engine directory."""
    layout = getattr(manifest, "layout", None)
    return {
        "model": str(engine_dir),
        "tokenizer": str(engine_dir),
        "tensor_parallel_size": int(getattr(layout, "tp", 1) or 1),
        "pipeline_parallel_size": int(getattr(layout, "pp", 1) or 1),
        "trust_remote_code": False,
        "guided_decoding_backend": "xgrammar",  # structured outputs and forced tool calls
    }


def _import_trtllm():
    try:
        import tensorrt_llm  # noqa: F401
        from tensorrt_llm import LLM
        from tensorrt_llm import SamplingParams as TRTSamplingParams
        from tensorrt_llm.llmapi import GuidedDecodingParams
    except Exception as exc:  # ImportError, or a CUDA library that fails to load
        raise BackendUnavailable(
            f"the TensorRT-LLM backend is unavailable here: tensorrt_llm cannot be imported ({exc})",
            "serve this engine on an NVIDIA GPU host with `pip install onramp[trtllm]`, "
            "or build and serve the OpenVINO engine instead (onramp build --backend openvino)") from None
    return LLM, TRTSamplingParams, GuidedDecodingParams


class TRTLLMEngine:
    backend = "tensorrt_llm"

    def __init__(self, engine_dir: Path, manifest: Any, *, name: str, **options: Any):
        LLM, self._SamplingParams, self._GuidedDecodingParams = _import_trtllm()
        self.engine_dir = Path(engine_dir)
        kwargs = llm_kwargs(self.engine_dir, manifest) | {k: v for k, v in options.items() if k == "kv_cache_config"}
        self._llm = LLM(**kwargs)
        self._tokenizer = self._llm.tokenizer
        template_file = self.engine_dir / "chat_template.jinja"
        inner = getattr(self._tokenizer, "tokenizer", None)  # TensorRT-LLM wraps the transformers tokenizer
        self._chat_template = template_file.read_text() if template_file.is_file() else str(
            getattr(self._tokenizer, "chat_template", None) or getattr(inner, "chat_template", None) or "")
        layout = getattr(manifest, "layout", None)
        self._info = EngineInfo(
            name=name, backend=self.backend, version=str(getattr(manifest, "build_id", ""))[:12],
            max_context=int(getattr(layout, "max_seq_len", 4096)), max_concurrent=int(getattr(layout, "max_batch", 8)),
            engine_dir=str(self.engine_dir), backend_version=str(getattr(manifest, "backend_version", "")))
        self._running: dict[str, Any] = {}

    @classmethod
    def from_manifest(cls, engine_dir: Path, manifest: Any, *, name: str, **options: Any) -> TRTLLMEngine:
        return cls(engine_dir, manifest, name=name, **options)

    def describe(self) -> EngineInfo:
        return self._info

    def _encode(self, text: str) -> list[int]:
        return list(self._tokenizer.encode(text, add_special_tokens=False))

    def _apply_template(self, history: list[dict], template: str, tools: list[dict] | None) -> str:
        extra = {"tools": tools} if tools else {}
        return self._tokenizer.apply_chat_template(history, tokenize=False, add_generation_prompt=True,
                                                   chat_template=template, **extra)

    def render_chat(self, messages, tools: list[dict] | None = None) -> str:
        return render_chat(self._apply_template, self._chat_template, messages, tools, model=self._info.name)

    def _prepare(self, request: GenerationRequest) -> tuple[list[int], int]:
        vocab = len(self._tokenizer) if hasattr(self._tokenizer, "__len__") else 1 << 31
        return prepare_prompt(request, encode=self._encode, render=self.render_chat, vocab_size=vocab,
                              max_context=self._info.max_context)

    async def stream(self, request: GenerationRequest) -> AsyncIterator[Delta]:
        ids, max_new = await asyncio.to_thread(self._prepare, request)
        try:
            kw = sampling_kwargs(request.sampling, max_new, getattr(self._tokenizer, "eos_token_id", None))
            if "guided_decoding" in kw:
                kw["guided_decoding"] = self._GuidedDecodingParams(**kw["guided_decoding"])
            params = self._SamplingParams(**kw)
        except (TypeError, ValueError) as exc:
            raise RequestError(f"invalid sampling parameters: {exc}") from None
        result = self._llm.generate_async(ids, params, streaming=True)
        self._running[request.request_id] = result
        n = max(1, request.sampling.n)
        done: dict[int, int] = {}
        ended: set[int] = set()
        prompt_given: set[int] = set()
        decode = self._decode_one
        k = request.sampling.top_logprobs
        prompt_k = request.sampling.prompt_logprobs
        finished = False
        try:
            async for out in result:
                for pos, o in enumerate(out.outputs):
                    index = int(getattr(o, "index", pos))
                    if index in ended:
                        continue
                    new = list(getattr(o, "token_ids_diff", []) or [])
                    done[index] = done.get(index, 0) + len(new)
                    lps = None
                    if request.sampling.logprobs and getattr(o, "logprobs_diff", None):
                        lps = token_logprobs(new, o.logprobs_diff, decode, k)
                    prompt_lps = None
                    if prompt_k is not None and index not in prompt_given:
                        raw = getattr(o, "prompt_logprobs", None) or getattr(out, "prompt_logprobs", None)
                        if raw:
                            prompt_lps = [TokenLogprob(decode(ids[0]), None, id=ids[0])] + token_logprobs(
                                ids[1:], list(raw)[-(len(ids) - 1):], decode, prompt_k)
                            prompt_given.add(index)
                    reason = o.finish_reason if o.finish_reason in ("stop", "length") else None
                    if reason is None and getattr(out, "finished", False):
                        reason = "stop"
                    if reason is not None:
                        ended.add(index)
                    yield Delta(text=o.text_diff, prompt_tokens=len(ids), completion_tokens=done[index],
                                new_tokens=len(new), finish_reason=reason, logprobs=lps, index=index,
                                prompt_logprobs=prompt_lps)
                if len(ended) >= n:
                    finished = True
                    break
        finally:
            self._running.pop(request.request_id, None)
            if not finished:
                result.abort()

    def _decode_one(self, token_id: int) -> str:
        return self._tokenizer.decode([token_id])

    def abort(self, request_id: str) -> None:
        result = self._running.get(request_id)
        if result is not None:
            result.abort()

    def close(self) -> None:
        llm, self._llm = getattr(self, "_llm", None), None
        if llm is not None:
            llm.shutdown()

