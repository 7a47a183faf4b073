"""OpenVINO backend: ``openvino_genai.ContinuousBatchingPipeline`` driven by one stepping thread.

Requests join the running batch between steps and leave it when they finish or are aborted
(continuous batching). The stepping thread sleeps on a condition while there is nothing to do;
after each ``step()`` it reads every handle, detokenizes the new ids incrementally and hands the
deltas to each request's asyncio queue with one ``call_soon_threadsafe`` per event loop.
Chat templates are rendered with the engine's own template (``chat_template.jinja``) through
``openvino_genai.Tokenizer``; token ids are encoded/decoded with the engine's ``tokenizer.json``
(the Rust ``tokenizers`` library is ~200x faster per call than the tokenizer IR here), falling
back to the tokenizer IR where no ``tokenizer.json`` exists.
"""

from __future__ import annotations

import asyncio
import gc
import itertools
import json
import logging
import random
import threading
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from collections.abc import AsyncIterator

from serving.detok import IncrementalDetokenizer
from serving.engine import Constraint, Delta, EngineInfo, GenerationRequest, SamplingParams, TokenLogprob
from serving.errors import BackendUnavailable, ContextLengthError, EngineLoadError, RequestError
from serving.scoring import Scorer, Tracker

log = logging.getLogger(__name__)

__all__ = ["OpenVINOEngine", "generation_config_kwargs", "structured_output_config"]

# longest the stepping thread waits for an event loop to take its deltas before the next step
_HANDOFF_S = 0.02
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


@dataclass
class _Choice:
    detok: IncrementalDetokenizer
    completion_tokens: int = 0
    done: bool = False


@dataclass
class _Req:
    rid: int
    request_id: str
    input_ids: list[int]
    config: Any  # openvino_genai.GenerationConfig
    loop: asyncio.AbstractEventLoop
    queue: asyncio.Queue
    choices: list[_Choice]  # one per decoded sequence
    logprobs: bool
    handle: Any = None
    done: bool = False
    copies: int = 1  # greedy n > 1: each delta of the one sequence is given out as n choices
    constraint: Constraint | None = None
    confirmed: bool = False  # produced output (so its grammar compiled)
    keys: dict = field(default_factory=dict)  # the pipeline's sequence keys -> choice index

    def choice_of(self, key: int) -> int:
        if key not in self.keys:
            self.keys[key] = min(len(self.keys), len(self.choices) - 1)
        return self.keys[key]

    @property
    def completion_tokens(self) -> int:
        return sum(c.completion_tokens for c in self.choices) * self.copies


class OpenVINOEngine:
    """The engine protocol over an OpenVINO engine directory (IR + tokenizer IR + chat template)."""

    backend = "openvino"

    def __init__(self, engine_dir: Path | str, *, name: str, version: str = "", max_context: int = 2048,
                 max_num_seqs: int = 32, cache_size_gb: int | None = None, device: str = "CPU",
                 max_num_batched_tokens: int | None = None, backend_version: str = "",
                 properties: dict[str, Any] | None = None, scheduler: dict[str, Any] | None = None):
        try:
            import openvino_genai as ov_genai
        except ImportError as exc:  # pragma: no cover - installed with onramp
            raise BackendUnavailable(f"openvino_genai cannot be imported: {exc}",
                                     "reinstall onramp (`make install`): openvino-genai is a core dependency") from None
        self._ov = ov_genai
        self.engine_dir = Path(engine_dir)
        try:
            self._ov_tokenizer = ov_genai.Tokenizer(str(self.engine_dir))
            from builders.ov_runtime import load_properties, scheduler_settings

            # the manifest's runtime, never the device's defaults (bf16 on some CPUs changes answers)
            self.properties = dict(properties) if properties is not None else load_properties(self.engine_dir, device)
            sched_fields = dict(scheduler) if scheduler is not None else scheduler_settings(self.engine_dir)
            if cache_size_gb is not None:
                sched_fields["cache_size"] = cache_size_gb
            if max_num_batched_tokens:
                sched_fields["max_num_batched_tokens"] = max_num_batched_tokens
            sched_fields["max_num_seqs"] = int(max_num_seqs)
            sched = ov_genai.SchedulerConfig()
            for key, value in sched_fields.items():
                if value is not None:
                    setattr(sched, key, value)
            self._pipe = ov_genai.ContinuousBatchingPipeline(str(self.engine_dir), self._ov_tokenizer, sched, device,
                                                             **self.properties)
        except Exception as exc:
            raise EngineLoadError(f"OpenVINO could not load the engine in {self.engine_dir}: {exc}",
                                  "check that `onramp build --backend openvino` made it and it is complete") from None
        log.info("engine %s loaded with %s", name, ", ".join(f"{k}={v}" for k, v in self.properties.items()))
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
        self._scorer = Scorer(self.engine_dir, self.properties, device)  # compiled on first use
        self._info = EngineInfo(name=name, backend=self.backend, version=version, max_context=int(max_context),
                                max_concurrent=int(max_num_seqs), engine_dir=str(self.engine_dir),
                                backend_version=backend_version or getattr(ov_genai, "__version__", ""))
        self._ids = itertools.count(1)
        self._cond = threading.Condition()
        self._incoming: list[_Req] = []
        self._aborts: set[int] = set()
        self._by_request_id: dict[str, _Req] = {}
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
        from builders.ov_runtime import load_properties, scheduler_settings

        options.setdefault("properties", load_properties(manifest, options.get("device", "CPU")))
        options.setdefault("scheduler", scheduler_settings(manifest))
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
        if not self._chat_template:
            raise RequestError(f"model '{self._info.name}' has no chat template, so it cannot take messages",
                               param="messages", code="no_chat_template")
        from serving.tools import chat_history

        history, template_tools = chat_history(list(messages), tools, self._chat_template)
        try:
            if template_tools:
                return self._ov_tokenizer.apply_chat_template(history, add_generation_prompt=True,
                                                              chat_template=self._chat_template, tools=template_tools)
            return self._ov_tokenizer.apply_chat_template(history, add_generation_prompt=True,
                                                          chat_template=self._chat_template)
        except Exception as exc:  # noqa: BLE001 - the template itself refused the conversation
            raise RequestError(f"the model's chat template cannot render these messages: "
                               f"{str(exc).strip().splitlines()[-1] if str(exc).strip() else exc}",
                               param="messages", code="invalid_messages") from None

    def _vocab_size(self) -> int:
        if self._hf_tokenizer is not None:
            return self._hf_tokenizer.get_vocab_size(with_added_tokens=True)
        return 1 << 31

    async def _prompt_logprobs(self, ids: list[int], k: int) -> list[TokenLogprob]:
        scored = await asyncio.to_thread(self._scorer.prompt_logprobs, ids, max(k, 1))
        out = [TokenLogprob(token=self._decode([ids[0]]), logprob=None, id=ids[0])]
        for tok, item in zip(ids[1:], scored[1:], strict=True):
            lp, top = item
            out.append(TokenLogprob(token=self._decode([tok]), logprob=lp, id=tok,
                                    top=tuple((self._decode([i]), v) for i, v in top[:k])))
        return out

    def count_tokens(self, text: str) -> int:
        return len(self._encode(text))

    def _prepare(self, request: GenerationRequest) -> tuple[list[int], int]:
        if request.prompt_ids is not None:
            ids, param = list(request.prompt_ids), "prompt"
            vocab = self._vocab_size()
            if any(not 0 <= i < vocab for i in ids):
                raise RequestError(f"the prompt's token ids must be in [0, {vocab})", param="prompt")
        elif request.messages is not None:
            ids, param = self._encode(self.render_chat(request.messages, request.tools)), "messages"
        else:
            ids, param = self._encode(request.prompt or ""), "prompt"
        if not ids:
            raise RequestError(f"the {param} is empty", param=param)
        limit = self._info.max_context
        max_tokens = request.sampling.max_tokens
        if len(ids) >= limit:
            raise ContextLengthError(
                f"This model's maximum context length is {limit} tokens; the {param} alone has {len(ids)}. "
                f"Shorten the {param}.", param=param)
        if max_tokens is None:
            max_tokens = limit - len(ids)
            if request.sampling.max_tokens_default:
                max_tokens = min(max_tokens, request.sampling.max_tokens_default)
        elif len(ids) + max_tokens > limit:
            raise ContextLengthError(
                f"This model's maximum context length is {limit} tokens. However, you requested "
                f"{len(ids) + max_tokens} tokens ({len(ids)} in the {param}, {max_tokens} for the completion). "
                f"Lower max_tokens to at most {limit - len(ids)} or shorten the {param}.")
        return ids, max_tokens

    # ------------------------------------------------------------------ the protocol
    async def stream(self, request: GenerationRequest) -> AsyncIterator[Delta]:
        if self._closed:
            raise RequestError(f"model '{self._info.name}' is shutting down; retry", status=503,
                               headers={"Retry-After": "1"}, code="engine_closed")
        if _prompt_chars(request) <= _INLINE_PREPARE_CHARS:
            ids, max_new = self._prepare(request)  # ~1 ms; a thread hop would wait out a step
        else:
            ids, max_new = await asyncio.to_thread(self._prepare, request)
        kwargs = generation_config_kwargs(request.sampling, max_new, self._eos)
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

    def abort(self, request_id: str) -> None:
        req = self._by_request_id.get(request_id)
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
        self._pipe = None
        self._ov_tokenizer = None
        gc.collect()
        log.info("engine %s (%s) closed", self._info.name, self._info.version)

    @property
    def running(self) -> int:
        return len(self._active)

    # ------------------------------------------------------------------ the stepping thread
    def _run(self) -> None:
        while True:
            with self._cond:
                while not (self._closed or self._incoming or self._aborts or self._active or self._dirty):
                    self._cond.wait()
                if self._closed:
                    break
                incoming, self._incoming = self._incoming, []
                aborts, self._aborts = self._aborts, set()
            out: dict[asyncio.AbstractEventLoop, list] = defaultdict(list)
            for req in incoming:
                if req.rid in aborts:
                    aborts.discard(req.rid)
                    self._finish(req, out, "abort")
                    continue
                try:
                    tensor = self._ov_tensor(req.input_ids)
                    req.handle = self._pipe.add_request(req.rid, tensor, req.config)
                    self._active[req.rid] = req
                except Exception as exc:  # noqa: BLE001 - reported to that request only
                    req.done = True
                    out[req.loop].append((req.queue, RequestError(f"the engine refused the request: {exc}")))
            for rid in aborts:
                req = self._active.pop(rid, None)
                if req is not None:
                    self._drop(req)
                    self._finish(req, out, "abort")
            if self._active or self._dirty:
                try:
                    if self._pipe.has_non_finished_requests() or self._dirty:
                        self._dirty = False
                        self._pipe.step()
                    self._collect(out)
                except Exception as exc:  # noqa: BLE001 - a failed step fails the running batch
                    suspects = [r for r in self._active.values() if r.constraint is not None and not r.confirmed]
                    if suspects:  # a grammar that does not compile fails the step: blame only those
                        reason = (str(exc).strip().splitlines() or ["?"])[-1].split("]")[-1].strip()
                        log.info("engine %s: a constrained request failed to compile: %s", self._info.name, reason)
                        for req in suspects:
                            self._active.pop(req.rid, None)
                            self._drop(req)
                            req.done = True
                            out[req.loop].append((req.queue, RequestError(
                                f"the {req.constraint.param} grammar cannot be compiled: {reason}",
                                param=req.constraint.param, code="invalid_grammar")))
                    else:
                        log.exception("engine %s: step failed", self._info.name)
                        for req in list(self._active.values()):
                            self._drop(req)
                            req.done = True
                            out[req.loop].append((req.queue, RuntimeError(f"engine step failed: {exc}")))
                        self._active.clear()
            self._deliver(out)
        # closed: end whatever is still running or waiting
        out = defaultdict(list)
        with self._cond:
            pending, self._incoming = self._incoming, []
        for req in [*pending, *self._active.values()]:
            self._drop(req)
            self._finish(req, out, "abort")
        self._active.clear()
        self._deliver(out)
        if self._dirty:
            try:
                self._pipe.step()
            except Exception:  # noqa: BLE001
                log.debug("final cleanup step failed", exc_info=True)

    def _ov_tensor(self, ids: list[int]):
        import numpy as np
        import openvino as ov

        return ov.Tensor(np.asarray([ids], dtype=np.int64))

    def _drop(self, req: _Req) -> None:
        handle, req.handle = req.handle, None
        if handle is not None:
            self._dirty = True
            try:
                handle.cancel()  # removes the request from the batch and frees its KV blocks
            except Exception:  # noqa: BLE001
                log.debug("cancel failed", exc_info=True)

    def _emit(self, req: _Req, out, index: int, text: str, new_tokens: int, finish: str | None, logprobs) -> None:
        choice = req.choices[index]
        for copy in range(req.copies):
            out[req.loop].append((req.queue, Delta(
                text=text, prompt_tokens=len(req.input_ids), completion_tokens=choice.completion_tokens,
                new_tokens=new_tokens, finish_reason=finish, logprobs=logprobs, index=index * req.copies + copy)))

    def _finish(self, req: _Req, out, reason: str) -> None:
        """End every choice of ``req`` not finished yet."""
        req.done = True
        for i, choice in enumerate(req.choices):
            if not choice.done:
                choice.done = True
                self._emit(req, out, i, "", 0, reason, None)

    def _collect(self, out) -> None:
        ov = self._ov
        status_running = ov.GenerationStatus.RUNNING
        finished: list[int] = []
        for rid, req in self._active.items():
            handle = req.handle
            news: dict[int, tuple[list[int], list[float]]] = {}
            reasons: dict[int, str] = {}
            if handle.can_read():
                for key, o in handle.read().items():
                    i = req.choice_of(key)
                    ids, lps = news.setdefault(i, ([], []))
                    ids.extend(o.generated_ids)
                    if req.logprobs:
                        lps.extend(o.generated_log_probs)
                    if o.finish_reason != ov.GenerationFinishReason.NONE:
                        reasons[i] = "length" if o.finish_reason == ov.GenerationFinishReason.LENGTH else "stop"
            status = handle.get_status()
            if status != status_running and not handle.can_read():
                for i, choice in enumerate(req.choices):
                    if not choice.done and i not in reasons:
                        reasons[i] = "stop" if status == ov.GenerationStatus.FINISHED else "abort"
            for i in sorted(set(news) | set(reasons)):
                choice = req.choices[i]
                if choice.done:
                    continue  # a choice cut by a stop string while its sequence ran on
                new_ids, lps = news.get(i, ([], []))
                finish = reasons.get(i)
                if not new_ids and finish is None:
                    continue
                req.confirmed = True
                choice.completion_tokens += len(new_ids)
                text = choice.detok.add(new_ids)
                if choice.detok.stopped:
                    finish = "stop"
                elif finish is not None:
                    text += choice.detok.flush()
                logprobs = None
                if req.logprobs:
                    logprobs = [TokenLogprob(token=self._decode([t]), logprob=float(lp), id=t)
                                for t, lp in zip(new_ids, lps, strict=False)]
                if finish is not None:
                    choice.done = True
                self._emit(req, out, i, text, len(new_ids), finish, logprobs)
            if all(c.done for c in req.choices):
                req.done = True
                if handle.get_status() == status_running:
                    self._drop(req)  # stopped by stop strings: free its KV blocks
                finished.append(rid)
        for rid in finished:
            req = self._active.pop(rid)
            req.handle = None

    @staticmethod
    def _deliver(out) -> None:
        """Hand each event loop its deltas, then wait (at most ``_HANDOFF_S``) until that loop has
        had a turn to pass them on. ``ContinuousBatchingPipeline.step()`` holds the GIL for the
        whole step, so without this wait an event loop gets only a switch interval (5 ms) between
        steps: under load it falls behind, and new requests wait several steps to be parsed and
        admitted (measured: server TTFT p50 at concurrency 16 went from ~2.0 s to
        ~1.3 s, benchmarks/serving_bench.py)."""
        turns = []
        for loop, items in out.items():
            turn = threading.Event()
            try:
                loop.call_soon_threadsafe(_put_all, items, turn)
            except RuntimeError:  # that loop is closed: its requests are gone
                continue
            turns.append(turn)
        for turn in turns:
            turn.wait(_HANDOFF_S)


def _merge(a: Delta, b: Delta) -> Delta:
    logprobs = None if a.logprobs is None and b.logprobs is None else [*(a.logprobs or ()), *(b.logprobs or ())]
    return Delta(text=a.text + b.text, prompt_tokens=b.prompt_tokens, completion_tokens=b.completion_tokens,
                 new_tokens=a.new_tokens + b.new_tokens, finish_reason=b.finish_reason, logprobs=logprobs,
                 index=b.index)


def _put_all(items, turn: threading.Event) -> None:
    for queue, item in items:
        queue.put_nowait(item)
    # runs after the consumers these puts woke up (they were scheduled first)
    asyncio.get_running_loop().call_soon(turn.set)
