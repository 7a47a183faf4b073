"""The stepping thread of :class:`serving.engines.openvino.OpenVINOEngine`.

One thread drives ``ContinuousBatchingPipeline``: requests join the running batch between steps
and leave it when they finish or are aborted. The thread sleeps on a condition while there is
nothing to do; after each ``step()`` it reads every handle, detokenizes the new ids
incrementally and hands the deltas to each request's asyncio queue with one
``call_soon_threadsafe`` per event loop. :class:`StepLoop` is a mixin: the engine owns the
state (``_pipes``, ``_cond``, ``_incoming``, ``_aborts``, ``_active``, ``_dirty``, ``_closed``).

With load-adaptive prompt lookup (``runtime.decoding.lookup_below``) the engine has two pipelines on
the same weights: a greedy, unconstrained, unpenalized request admitted while fewer than ``lookup_below``
requests run (counting those being admitted) goes to the drafting one, any other to the plain one.
When more arrive, the drafted requests move to the plain pipeline (cancelled there, re-added with
their prompt and the tokens they have so far, greedy: the same tokens follow), so a full batch is
one step of one pipeline, not two.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

from serving.detok import IncrementalDetokenizer
from serving.engine import Constraint, Delta, TokenLogprob
from serving.errors import RequestError

log = logging.getLogger("serving.engines.openvino")

__all__ = ["StepLoop"]

# longest the stepping thread waits for an event loop to take its deltas before the next step
_HANDOFF_S = 0.02


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
    drafted: bool = False  # in the drafting pipeline (load-adaptive prompt lookup)
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


class StepLoop:
    """The stepping thread and what it does to the running batch (a mixin of the engine)."""

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
            drafting = self._lookup_pipe is not None and len(self._active) + len(incoming) < self._lookup_below
            if self._lookup_pipe is not None and incoming and not drafting:
                for req in [r for r in self._active.values() if r.drafted and r.rid not in aborts]:
                    self._migrate(req, out)
            for req in incoming:
                if req.rid in aborts:
                    aborts.discard(req.rid)
                    self._finish(req, out, "abort")
                    continue
                try:
                    tensor = self._ov_tensor(req.input_ids)
                    req.handle = self._route(req, drafting).add_request(req.rid, tensor, req.config)
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
                    dirty, self._dirty = self._dirty, False
                    for pipe in self._pipes:
                        if dirty or pipe.has_non_finished_requests():
                            pipe.step()
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
                for pipe in self._pipes:
                    pipe.step()
            except Exception:  # noqa: BLE001
                log.debug("final cleanup step failed", exc_info=True)

    def _route(self, req: _Req, drafting: bool):
        """The pipeline ``req`` joins: the drafting one while few requests run (``drafting``), if it is
        greedy, unconstrained and without penalties (a sampled, grammar-bound or penalized request
        could not move without changing what it produces: its RNG, grammar state or the counts of
        its own tokens would start over)."""
        config = req.config
        movable = (req.constraint is None and not config.do_sample and not config.presence_penalty
                   and not config.frequency_penalty and config.repetition_penalty == 1.0)
        if drafting and movable:
            req.config.update_generation_config(**self._draft)
            req.drafted = True
            self.routed["drafted"] += 1
            return self._lookup_pipe
        self.routed["drafted" if self._draft and self._lookup_pipe is None else "plain"] += 1
        return self._pipe

    def _migrate(self, req: _Req, out) -> None:
        """Move a drafted request to the plain pipeline: its prompt and the tokens it has become the
        new prompt, for the tokens it has left (greedy: the same tokens follow)."""
        choice = req.choices[0]
        ids = choice.detok.ids
        left = int(req.config.max_new_tokens) - len(ids)
        if choice.done or left < 1 or req.handle is None:
            return  # finishing anyway
        handle, req.handle = req.handle, None
        self._dirty = True
        try:
            handle.cancel()  # frees its blocks in the drafting pipeline at the next step
            req.config.update_generation_config(num_assistant_tokens=0, max_ngram_size=0, max_new_tokens=left,
                                                min_new_tokens=max(0, int(req.config.min_new_tokens) - len(ids)))
            req.handle = self._pipe.add_request(req.rid, self._ov_tensor([*req.input_ids, *ids]), req.config)
        except Exception as exc:  # noqa: BLE001 - reported to that request only
            self._active.pop(req.rid, None)
            req.done = True
            out[req.loop].append((req.queue, RequestError(f"the engine could not move the request: {exc}")))
            return
        req.drafted = False
        req.keys = {}
        self.routed["moved"] += 1

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
