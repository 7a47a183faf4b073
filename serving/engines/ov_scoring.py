"""Full next-token distributions for the OpenVINO backend: top logprobs and prompt logprobs.

``ContinuousBatchingPipeline`` returns only the sampled token's log-probability, so the
alternatives (``top_logprobs``) and the log-probabilities of prompt tokens (``echo`` with
``logprobs``, what lm-eval's loglikelihood tasks need) come from a second compiled copy of the
engine's own IR (``openvino_model.xml``, stateful, with the engine's runtime properties),
compiled on first use. The log-probabilities are the model's raw distribution (before
temperature, top-p or penalties), as vLLM reports them.

:class:`Tracker` follows one generated sequence: it feeds the prompt once, then each new token,
keeping the model's KV state, so the distribution of every generated token costs one more
token of compute.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any
from collections.abc import Callable, Sequence

import numpy as np

__all__ = ["Scorer", "Tracker", "log_softmax", "top_k"]


def log_softmax(logits: np.ndarray) -> np.ndarray:
    x = logits.astype(np.float64)
    x -= x.max(axis=-1, keepdims=True)
    return x - np.log(np.exp(x).sum(axis=-1, keepdims=True))


def top_k(logprobs: np.ndarray, k: int) -> list[tuple[int, float]]:
    """The ``k`` most likely token ids of one distribution, best first."""
    if k <= 0:
        return []
    idx = np.argpartition(-logprobs, min(k, logprobs.shape[-1] - 1))[:k]
    idx = idx[np.argsort(-logprobs[idx], kind="stable")]
    return [(int(i), float(logprobs[i])) for i in idx]


class Scorer:
    """A stateful OpenVINO model of the engine, compiled lazily; thread-safe (a request per call)."""

    def __init__(self, engine_dir: Path | str, properties: dict[str, Any] | None = None, device: str = "CPU"):
        self.engine_dir = Path(engine_dir)
        self.properties = dict(properties or {})
        self.device = device
        self._compiled = None
        self._lock = threading.Lock()

    def _model(self):
        with self._lock:
            if self._compiled is None:
                import openvino as ov

                core = ov.Core()
                self._compiled = core.compile_model(str(self.engine_dir / "openvino_model.xml"), self.device,
                                                    self.properties)
            return self._compiled

    def request(self):
        return self._model().create_infer_request()

    @staticmethod
    def forward(request, ids: Sequence[int], past: int) -> np.ndarray:
        """Feed ``ids`` after ``past`` tokens already in ``request``'s state; logits [len(ids), vocab]."""
        n = len(ids)
        inputs = {
            "input_ids": np.asarray([ids], dtype=np.int64),
            "attention_mask": np.ones((1, past + n), dtype=np.int64),
            "position_ids": np.arange(past, past + n, dtype=np.int64)[None, :],
            "beam_idx": np.zeros((1,), dtype=np.int32),
        }
        request.infer(inputs)
        return np.array(request.get_tensor("logits").data[0])

    def prompt_logprobs(self, ids: Sequence[int], k: int = 1) -> list[tuple[float, list[tuple[int, float]]] | None]:
        """For each token of ``ids``: None for the first, else (its logprob given the tokens before,
        the ``k`` most likely tokens there)."""
        request = self.request()
        request.reset_state()
        logits = self.forward(request, ids, 0)
        out: list[tuple[float, list[tuple[int, float]]] | None] = [None]
        for start in range(0, len(ids) - 1, 256):  # rows in chunks: a float64 copy of all would be large
            lp = log_softmax(logits[start:min(start + 256, len(ids) - 1)])
            for offset, row in enumerate(lp):
                out.append((float(row[ids[start + offset + 1]]), top_k(row, k)))
        return out


class Tracker:
    """The distributions of one generated sequence, token by token (see the module docstring)."""

    def __init__(self, scorer: Scorer, prompt_ids: Sequence[int], k: int, decode: Callable[[list[int]], str]):
        self._scorer = scorer
        self._prompt = list(prompt_ids)
        self._k = k
        self._decode = decode
        self._request = None
        self._past = 0
        self._next: np.ndarray | None = None  # the distribution of the next token

    def add(self, new_ids: Sequence[int]) -> list[tuple[float, tuple[tuple[str, float], ...]]]:
        """(logprob, top alternatives as (text, logprob)) for each of ``new_ids``, in order."""
        if self._request is None:
            self._request = self._scorer.request()
            self._request.reset_state()
            self._next = log_softmax(self._scorer.forward(self._request, self._prompt, 0)[-1])
            self._past = len(self._prompt)
        out = []
        rows = [self._next]
        if new_ids:
            logits = self._scorer.forward(self._request, list(new_ids), self._past)
            self._past += len(new_ids)
            rows += list(log_softmax(logits))
        for tok, row in zip(new_ids, rows, strict=False):
            top = tuple((self._decode([i]), lp) for i, lp in top_k(row, self._k))
            out.append((float(row[tok]), top))
        self._next = rows[-1]
        return out
