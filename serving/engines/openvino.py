"""OpenVINO backend: ``openvino_genai.ContinuousBatchingPipeline`` driven by one stepping thread.

Requests join the running batch between steps and leave it when they finish or are aborted
(continuous batching; the thread is :class:`serving.engines.ov_loop.StepLoop`, the per-request
``GenerationConfig`` comes from :mod:`serving.engines.ov_config`).
Chat templates are rendered with the engine's own template (``chat_template.jinja``) through
``openvino_genai.Tokenizer``; token ids are encoded/decoded with the engine's ``tokenizer.json``
(the Rust ``tokenizers`` library is ~200x faster per call than the tokenizer IR here), falling
back to the tokenizer IR where no ``tokenizer.json`` exists.
"""

from __future__ import annotations

import asyncio
import gc
import itertools
import logging
import threading
from pathlib import Path
from typing import Any
from collections.abc import AsyncIterator

from serving.detok import IncrementalDetokenizer
from serving.engine import Delta, EngineInfo, GenerationRequest, TokenLogprob
from serving.engines.ov_config import generation_config_kwargs, structured_output_config
from serving.engines.ov_loop import StepLoop, _Choice, _merge, _Req
from serving.engines.ov_scoring import Scorer, Tracker
from serving.errors import BackendUnavailable, EngineLoadError, RequestError
from serving.prompting import prepare_prompt, render_chat

log = logging.getLogger(__name__)

__all__ = ["OpenVINOEngine", "generation_config_kwargs", "structured_output_config"]

# prompts up to this many characters are templated and tokenized on the event loop (about 1 ms);
# longer ones in a worker thread. A worker needs the GIL, which step() holds, so the hop costs up
# to a whole step of TTFT.
_INLINE_PREPARE_CHARS = 4000


def _prompt_chars(request: GenerationRequest) -> int:
    if request.prompt_ids is not None:
        return 0
    if request.messages is None:
        return len(request.prompt or "")
    return sum(len(m.content) for m in request.messages)


class OpenVINOEngine(StepLoop):
    """The engine protocol over an OpenVINO engine directory (IR + tokenizer IR + chat template)."""

    backend = "openvino"

    def __init__(self, engine_dir: Path | str, *, name: str, version: str = "", max_context: int = 2048,
                 max_num_seqs: int = 32, cache_size_gb: int | None = None, device: str = "CPU",
                 max_num_batched_tokens: int | None = None, backend_version: str = "",
                 properties: dict[str, Any] | None = None, scheduler: dict[str, Any] | None = None,
                 decoding: dict[str, int] | None = None):
        try:
            import openvino_genai as ov_genai
        except ImportError as exc:  # pragma: no cover - installed with onramp
            raise BackendUnavailable(f"openvino_genai cannot be imported: {exc}",
                                     "reinstall onramp (`make install`): openvino-genai is a core dependency") from None
        self._ov = ov_genai
        self.engine_dir = Path(engine_dir)
        try:
            self._ov_tokenizer = ov_genai.Tokenizer(str(self.engine_dir))
            from builders.ov_runtime import decoding_settings, load_properties, scheduler_settings, split_decoding
            from serving.engines.ov_pipelines import load_pipelines

            # the manifest's runtime, never the device's defaults (bf16 on some CPUs changes answers)
            self.properties = dict(properties) if properties is not None else load_properties(self.engine_dir, device)
            sched_fields = dict(scheduler) if scheduler is not None else scheduler_settings(self.engine_dir)
            # prompt-lookup decoding: every request of the pipeline then carries its draft settings
            self.decoding = dict(decoding) if decoding is not None else decoding_settings(self.engine_dir)
            if cache_size_gb is not None:
                sched_fields["cache_size"] = cache_size_gb
            if max_num_batched_tokens:
                sched_fields["max_num_batched_tokens"] = max_num_batched_tokens
            sched_fields["max_num_seqs"] = int(max_num_seqs)
            # the GenerationConfig fields of a drafted request; lookup_below > 0: only while fewer run
            self._draft, self._lookup_below = split_decoding(self.decoding)
            # with lookup_below, the drafting pipeline beside the plain one (load-adaptive prompt lookup)
            self._pipe, self._lookup_pipe = load_pipelines(ov_genai, str(self.engine_dir), self._ov_tokenizer,
                                                           sched_fields, device, self.properties, self._draft,
                                                           self._lookup_below)
            self._pipes = [p for p in (self._pipe, self._lookup_pipe) if p is not None]
            # requests admitted with prompt lookup and without; drafted ones moved to the plain pipeline
            self.routed = {"drafted": 0, "plain": 0, "moved": 0}
        except Exception as exc:
            raise EngineLoadError(f"OpenVINO could not load the engine in {self.engine_dir}: {exc}",
                                  "check that `onramp build --backend openvino` made it and it is complete") from None
        self.scheduler = {k: v for k, v in sched_fields.items() if v is not None}  # as loaded (the tuner checks)
        log.info("engine %s loaded with %s; scheduler %s%s", name,
                 ", ".join(f"{k}={v}" for k, v in self.properties.items()),
                 ", ".join(f"{k}={v}" for k, v in self.scheduler.items()),
                 "; prompt lookup " + ", ".join(f"{k}={v}" for k, v in self.decoding.items()) if self.decoding else "")
        self._eos = self._ov_tokenizer.get_eos_token_id()
        template_file = self.engine_dir / "chat_template.jinja"
        self._chat_template = template_file.read_text() if template_file.is_file() else ""
        if not self._chat_template:
            try:
                self._chat_template = self._ov_tokenizer.chat_template or ""
            except Exception:  # noqa: BLE001 - older tokenizers have no template attribute
                self._chat_template = ""
        self._hf_tokenizer = None
        if (self.engine_dir / "tokenizer.json").is_file():
            from tokenizers import Tokenizer

            self._hf_tokenizer = Tokenizer.from_file(str(self.engine_dir / "tokenizer.json"))
        # once: get_vocab_size(with_added_tokens=True) builds the whole vocabulary (~10 ms a call here),
        # which on every request was most of the time to prepare a prompt
        self._vocab_size = self._hf_tokenizer.get_vocab_size(with_added_tokens=True) if self._hf_tokenizer else 1 << 31
        self._scorer = Scorer(self.engine_dir, self.properties, device)  # compiled on first use
        self._info = EngineInfo(name=name, backend=self.backend, version=version, max_context=int(max_context),
                                max_concurrent=int(max_num_seqs), engine_dir=str(self.engine_dir),
                                backend_version=backend_version or getattr(ov_genai, "__version__", ""))
        self._ids = itertools.count(1)
        self._cond = threading.Condition()
        self._incoming: list[_Req] = []
        self._aborts: set[int] = set()
        self._by_request_id: dict[str, _Req] = {}
        self._fanned: dict[str, int] = {}  # request id -> choices run as requests of their own
        self._active: dict[int, _Req] = {}
        self._closed = False
        self._dirty = False  # a request was cancelled: one step() frees its KV blocks
        self._thread = threading.Thread(target=self._run, name=f"ov-step-{name}", daemon=True)
        self._thread.start()

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_manifest(cls, engine_dir: Path, manifest: Any, *, name: str, **options: Any) -> OpenVINOEngine:
        layout = getattr(manifest, "layout", None)
        max_context = int(getattr(layout, "max_seq_len", 0) or 0) or 2048
        try:
            import json

            cfg = json.loads((Path(engine_dir) / "config.json").read_text())
            if cfg.get("max_position_embeddings"):
                max_context = min(max_context, int(cfg["max_position_embeddings"]))
        except (OSError, ValueError):
            pass
        options.setdefault("max_num_seqs", int(getattr(layout, "max_batch", 0) or 0) or 32)
        options.setdefault("max_context", max_context)
        build_id = str(getattr(manifest, "build_id", "") or "")
        options.setdefault("version", build_id[:12])
        options.setdefault("backend_version", str(getattr(manifest, "backend_version", "") or ""))
        from builders.ov_runtime import decoding_settings, load_properties, scheduler_settings

        options.setdefault("properties", load_properties(manifest, options.get("device", "CPU")))
        options.setdefault("scheduler", scheduler_settings(manifest))
        options.setdefault("decoding", decoding_settings(manifest))
        return cls(engine_dir, name=name, **options)

    def describe(self) -> EngineInfo:
        return self._info

    # ------------------------------------------------------------------ tokenization
    def _encode(self, text: str) -> list[int]:
        if self._hf_tokenizer is not None:
            return self._hf_tokenizer.encode(text, add_special_tokens=False).ids
        return [int(i) for i in self._ov_tokenizer.encode(text, add_special_tokens=False).input_ids.data[0]]

    def _decode(self, ids) -> str:
        if self._hf_tokenizer is not None:
            return self._hf_tokenizer.decode(list(ids), skip_special_tokens=True)
        return self._ov_tokenizer.decode(list(ids), skip_special_tokens=True)

    def render_chat(self, messages, tools: list[dict] | None = None) -> str:
        return render_chat(self._apply_template, self._chat_template, messages, tools, model=self._info.name)

    def _apply_template(self, history: list[dict], template: str, tools: list[dict] | None) -> str:
        if tools:
            return self._ov_tokenizer.apply_chat_template(history, add_generation_prompt=True,
                                                          chat_template=template, tools=tools)
        return self._ov_tokenizer.apply_chat_template(history, add_generation_prompt=True, chat_template=template)

    async def _prompt_logprobs(self, ids: list[int], k: int) -> list[TokenLogprob]:
        scored = await asyncio.to_thread(self._scorer.prompt_logprobs, ids, max(k, 1))
        out = [TokenLogprob(token=self._decode([ids[0]]), logprob=None, id=ids[0])]
        for tok, item in zip(ids[1:], scored[1:], strict=True):
            lp, top = item
            out.append(TokenLogprob(token=self._decode([tok]), logprob=lp, id=tok,
                                    top=tuple((self._decode([i]), v) for i, v in top[:k])))
        return out

    def _prepare(self, request: GenerationRequest) -> tuple[list[int], int]:
        return prepare_prompt(request, encode=self._encode, render=self.render_chat, vocab_size=self._vocab_size,
                              max_context=self._info.max_context)

    # ------------------------------------------------------------------ the protocol
    async def stream(self, request: GenerationRequest) -> AsyncIterator[Delta]:
        if self._closed:
            raise RequestError(f"model '{self._info.name}' is shutting down; retry", status=503,
                               headers={"Retry-After": "1"}, code="engine_closed")
        if self.decoding and request.sampling.n > 1 and request.sampling.temperature > 0:
            # prompt lookup drafts for one sequence per request: n sampled choices are n requests
            async for delta in self._fan_out(request):
                yield delta
            return
        if _prompt_chars(request) <= _INLINE_PREPARE_CHARS:
            ids, max_new = self._prepare(request)  # ~1 ms; a thread hop would wait out a step
        else:
            ids, max_new = await asyncio.to_thread(self._prepare, request)
        # adaptive prompt lookup: the stepping thread adds the draft fields if it routes the request there
        draft = {} if self._lookup_pipe is not None else self._draft
        kwargs = {**generation_config_kwargs(request.sampling, max_new, self._eos), **draft}
        config = self._ov.GenerationConfig()
        eos = kwargs.pop("eos_token_id", None)
        config.update_generation_config(**kwargs)
        if eos is not None:
            config.set_eos_token_id(eos)
        constraint = request.sampling.constraint
        if constraint is not None:
            config.structured_output_config = structured_output_config(self._ov, constraint)
        try:
            config.validate()
        except Exception as exc:  # OpenVINO's own parameter checks
            raise RequestError(f"invalid sampling parameters: {str(exc).strip().splitlines()[-1]}") from None
        prompt_lps = None
        if request.sampling.prompt_logprobs is not None:
            prompt_lps = await self._prompt_logprobs(ids, request.sampling.prompt_logprobs)
        k = request.sampling.top_logprobs if request.sampling.logprobs else 0
        trackers: dict[int, Tracker] = {}
        prompt_given: set[int] = set()
        loop = asyncio.get_running_loop()
        n = max(1, request.sampling.n)
        sequences = n if request.sampling.temperature > 0 else 1
        req = _Req(rid=next(self._ids), request_id=request.request_id, input_ids=ids, config=config, loop=loop,
                   queue=asyncio.Queue(),
                   choices=[_Choice(IncrementalDetokenizer(self._decode, request.sampling.stop))
                            for _ in range(sequences)],
                   logprobs=request.sampling.logprobs, copies=n // sequences, constraint=constraint)
        with self._cond:
            self._incoming.append(req)
            self._by_request_id[request.request_id] = req
            self._cond.notify()
        queue = req.queue
        pending = n  # choices not finished yet
        held: Delta | BaseException | None = None
        try:
            while True:
                item, held = (held, None) if held is not None else (await queue.get(), None)
                if isinstance(item, BaseException):
                    raise item
                # a consumer that fell behind gets the queued deltas of a choice as one (same text)
                while not queue.empty() and item.finish_reason is None:
                    nxt = queue.get_nowait()
                    if isinstance(nxt, BaseException) or nxt.index != item.index:
                        held = nxt
                        break
                    item = _merge(item, nxt)
                if k and item.logprobs:
                    if item.index not in trackers:
                        trackers[item.index] = Tracker(self._scorer, ids, k, self._decode)
                    scored = await asyncio.to_thread(trackers[item.index].add, [t.id for t in item.logprobs])
                    item.logprobs = [TokenLogprob(token=t.token, logprob=lp, top=top, id=t.id)
                                     for t, (lp, top) in zip(item.logprobs, scored, strict=True)]
                if prompt_lps is not None and item.index not in prompt_given:
                    item.prompt_logprobs = prompt_lps
                    prompt_given.add(item.index)
                yield item
                if item.finish_reason is not None:
                    pending -= 1
                    if pending <= 0:
                        return
        finally:
            if not req.done:
                self._abort_req(req)
            self._by_request_id.pop(request.request_id, None)

    async def _fan_out(self, request: GenerationRequest) -> AsyncIterator[Delta]:
        """The ``n`` choices of a sampled request as ``n`` one-choice requests (seeds ``seed + i``), their
        deltas interleaved with ``index`` = the choice."""
        import dataclasses
        import random

        n = request.sampling.n
        seed = request.sampling.seed if request.sampling.seed is not None else random.randrange(1 << 30)
        queue: asyncio.Queue = asyncio.Queue()

        async def one(i: int) -> None:
            sub = dataclasses.replace(request, request_id=f"{request.request_id}#{i}",
                                      sampling=dataclasses.replace(request.sampling, n=1, seed=seed + i))
            try:
                async for delta in self.stream(sub):
                    await queue.put(dataclasses.replace(delta, index=i))
            except Exception as exc:  # noqa: BLE001 - handed to the consumer (a cancellation just ends it)
                await queue.put(exc)

        self._fanned[request.request_id] = n
        tasks = [asyncio.create_task(one(i)) for i in range(n)]
        pending = n
        try:
            while pending:
                item = await queue.get()
                if isinstance(item, BaseException):
                    raise item
                yield item
                if item.finish_reason is not None:
                    pending -= 1
        finally:
            self._fanned.pop(request.request_id, None)
            for task in tasks:
                task.cancel()

    def abort(self, request_id: str) -> None:
        for rid in [request_id, *(f"{request_id}#{i}" for i in range(self._fanned.get(request_id, 0)))]:
            req = self._by_request_id.get(rid)
            if req is not None:
                self._abort_req(req)

    def _abort_req(self, req: _Req) -> None:
        with self._cond:
            self._aborts.add(req.rid)
            self._cond.notify()

    def close(self) -> None:
        with self._cond:
            if self._closed:
                return
            self._closed = True
            self._cond.notify()
        self._thread.join(timeout=60)
        self._pipe = self._lookup_pipe = None
        self._pipes = []
        self._ov_tokenizer = None
        gc.collect()
        log.info("engine %s (%s) closed", self._info.name, self._info.version)

    @property
    def running(self) -> int:
        return len(self._active)
