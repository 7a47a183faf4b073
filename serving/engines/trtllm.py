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
import logging
from pathlib import Path
from typing import Any
from collections.abc import AsyncIterator

from serving.engine import Delta, EngineInfo, GenerationRequest, SamplingParams, TokenLogprob
from serving.errors import BackendUnavailable, ContextLengthError, RequestError

log = logging.getLogger(__name__)

__all__ = ["TRTLLMEngine", "llm_kwargs", "sampling_kwargs"]


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
        kw["logprobs"] = 1
    if sampling.ignore_eos:
        kw["ignore_eos"] = True
    return kw


def llm_kwargs(engine_dir: Path, manifest: Any) -> dict[str, Any]:
    """``tensorrt_llm.LLM`` keyword arguments for a built engine directory."""
    layout = getattr(manifest, "layout", None)
    return {
        "model": str(engine_dir),
        "tokenizer": str(engine_dir),
        "tensor_parallel_size": int(getattr(layout, "tp", 1) or 1),
        "pipeline_parallel_size": int(getattr(layout, "pp", 1) or 1),
        "trust_remote_code": False,
    }


def _import_trtllm():
    try:
        import tensorrt_llm  # noqa: F401
        from tensorrt_llm import LLM
        from tensorrt_llm import SamplingParams as TRTSamplingParams
    except Exception as exc:  # ImportError, or a CUDA library that fails to load
        raise BackendUnavailable(
            f"the TensorRT-LLM backend is unavailable here: tensorrt_llm cannot be imported ({exc})",
            "serve this engine on an NVIDIA GPU host with `pip install onramp[trtllm]`, "
            "or build and serve the OpenVINO engine instead (onramp build --backend openvino)") from None
    return LLM, TRTSamplingParams


class TRTLLMEngine:
    backend = "tensorrt_llm"

    def __init__(self, engine_dir: Path, manifest: Any, *, name: str, **options: Any):
        LLM, self._SamplingParams = _import_trtllm()
        self.engine_dir = Path(engine_dir)
        kwargs = llm_kwargs(self.engine_dir, manifest) | {k: v for k, v in options.items() if k == "kv_cache_config"}
        self._llm = LLM(**kwargs)
        self._tokenizer = self._llm.tokenizer
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

    def _prompt_ids(self, request: GenerationRequest) -> list[int]:
        if request.messages is not None:
            history = [{"role": m.role, "content": m.content} for m in request.messages]
            text = self._tokenizer.apply_chat_template(history, tokenize=False, add_generation_prompt=True)
        else:
            text = request.prompt or ""
        return list(self._tokenizer.encode(text, add_special_tokens=False))

    async def stream(self, request: GenerationRequest) -> AsyncIterator[Delta]:
        ids = await asyncio.to_thread(self._prompt_ids, request)
        limit = self._info.max_context
        if len(ids) >= limit:
            raise ContextLengthError(f"the prompt has {len(ids)} tokens; the context is {limit}", param="messages")
        max_new = request.sampling.max_tokens or min(limit - len(ids),
                                                     request.sampling.max_tokens_default or limit)
        if len(ids) + max_new > limit:
            raise ContextLengthError(f"This model's maximum context length is {limit} tokens; the prompt has "
                                     f"{len(ids)} and max_tokens is {max_new}. Lower max_tokens.")
        try:
            params = self._SamplingParams(**sampling_kwargs(request.sampling, max_new,
                                                            getattr(self._tokenizer, "eos_token_id", None)))
        except (TypeError, ValueError) as exc:
            raise RequestError(f"invalid sampling parameters: {exc}") from None
        result = self._llm.generate_async(ids, params, streaming=True)
        self._running[request.request_id] = result
        done = 0
        finished = False
        try:
            async for out in result:
                o = out.outputs[0]
                new = list(getattr(o, "token_ids_diff", []) or [])
                done += len(new)
                lps = None
                if request.sampling.logprobs and getattr(o, "logprobs_diff", None):
                    lps = [TokenLogprob(self._tokenizer.decode([t]), float(lp if isinstance(lp, float) else 0.0))
                           for t, lp in zip(new, o.logprobs_diff, strict=False)]
                reason = o.finish_reason if o.finish_reason in ("stop", "length") else None
                finished = reason is not None or bool(getattr(out, "finished", False))
                yield Delta(text=o.text_diff, prompt_tokens=len(ids), completion_tokens=done, new_tokens=len(new),
                            finish_reason=reason or ("stop" if finished else None), logprobs=lps)
                if finished:
                    break
        finally:
            self._running.pop(request.request_id, None)
            if not finished:
                result.abort()

    def abort(self, request_id: str) -> None:
        result = self._running.get(request_id)
        if result is not None:
            result.abort()

    def close(self) -> None:
        llm, self._llm = getattr(self, "_llm", None), None
        if llm is not None:
            llm.shutdown()

