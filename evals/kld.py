"""KL divergence and top-1 agreement: the candidate's next-token distributions vs the reference's.

For every position of a fixed set of token sequences (the corpus paragraphs of
``evals/data/corpus.txt`` and GSM8K problems with their worked answers in the chat format), both
models give a full next-token distribution over the vocabulary:

- reference: the original checkpoint in transformers, float32, CPU;
- candidate: the built engine through its own runtime, reached through its backend's
  ``logits_model(engine_dir)`` (OpenVINO: the engine's IR compiled with the runtime properties
  recorded in its manifest; TensorRT-LLM: says it is unavailable).

Per token ``KL(ref || cand) = sum_v p_ref(v) (log p_ref(v) - log p_cand(v))`` over the whole
vocabulary, and whether both put the same token first. Reported: mean and p99 KLD and top-1
agreement, each with a seeded block-bootstrap confidence interval (blocks of consecutive tokens
within a sequence, resampled with replacement: neighbouring tokens are not independent).

The reference side is cached under ``$ONRAMP_CACHE_DIR/evals`` as the final hidden states
(after the last norm: ``hidden_size`` floats a token, 1/85 of the logits for SmolLM2), keyed by
the checkpoint's content hash, the token sequences and the library versions; the logits are
``lm_head(hidden)`` both when computed fresh and from the cache, so the numbers are the same.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import re
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol

from pydantic import BaseModel, ConfigDict, Field

from evals.config import Profile, corpus_paragraphs, gsm8k_file
from evals.errors import EvalError
from onramp.files import write_bytes_atomic

log = logging.getLogger(__name__)

CONFIDENCE = 0.95


class LogitsModel(Protocol):
    """What a backend's ``logits_model(engine_dir)`` returns."""

    runtime: dict[str, str]

    def next_token_logits(self, ids: Sequence[int]) -> Any: ...  # float array [len(ids), vocab]


class KLDResult(BaseModel):
    model_config = ConfigDict(extra="forbid")

    n_tokens: int
    n_sequences: int
    n_blocks: int
    kld_mean: float
    kld_mean_ci: tuple[float, float]
    kld_p99: float
    kld_p99_ci: tuple[float, float]
    kld_median: float
    kld_max: float
    top1_agreement: float = Field(description="share of positions where both rank the same token first")
    top1_agreement_ci: tuple[float, float]
    confidence: float = CONFIDENCE
    bootstrap_iters: int
    block_tokens: int
    seed: int
    runtime: dict[str, str] = Field(default_factory=dict, description="how the candidate ran (what it reports)")
    reference_cached: bool = False
    seconds: float = 0.0

    def metrics(self) -> dict[str, float]:
        return {
            "kld_mean": self.kld_mean, "kld_mean_ci_low": self.kld_mean_ci[0], "kld_mean_ci_high": self.kld_mean_ci[1],
            "kld_p99": self.kld_p99, "kld_p99_ci_low": self.kld_p99_ci[0], "kld_p99_ci_high": self.kld_p99_ci[1],
            "top1_agreement": self.top1_agreement, "top1_agreement_ci_low": self.top1_agreement_ci[0],
            "top1_agreement_ci_high": self.top1_agreement_ci[1], "kld_tokens": float(self.n_tokens),
        }

    def to_markdown(self) -> str:
        pct = f"{self.confidence:.0%}"

        def ci(pair: tuple[float, float]) -> str:
            return f"[{pair[0]:.4g}, {pair[1]:.4g}]"

        runtime = ", ".join(f"{k}={v}" for k, v in self.runtime.items()) or "n/a"
        return "\n".join([
            f"KL divergence and top-1 agreement vs the reference over {self.n_tokens} token positions "
            f"({self.n_sequences} sequences; {pct} intervals: block bootstrap over {self.n_blocks} blocks of "
            f"{self.block_tokens} tokens, {self.bootstrap_iters} resamples, seed {self.seed}):",
            "",
            f"| measure | value | {pct} interval |", "|---|---|---|",
            f"| mean KLD (nats) | {self.kld_mean:.4g} | {ci(self.kld_mean_ci)} |",
            f"| p99 KLD (nats) | {self.kld_p99:.4g} | {ci(self.kld_p99_ci)} |",
            f"| same top token | {self.top1_agreement:.4f} | {ci(self.top1_agreement_ci)} |",
            "",
            f"median KLD {self.kld_median:.4g}, max {self.kld_max:.4g}; candidate runtime: {runtime}; "
            f"reference {'cached' if self.reference_cached else 'computed'}.",
            "",
        ])


# ------------------------------------------------------------------------------ the sequences

_CALC = re.compile(r"<<[^>]*>>")


def evaluation_sequences(tokenizer: Any, profile: Profile) -> list[list[int]]:
    """Corpus paragraphs as plain text, then GSM8K problems as a chat (question, worked answer),
    each cut to ``kld_max_tokens``."""
    texts = corpus_paragraphs()
    if profile.kld_corpus_docs is not None:
        texts = texts[: profile.kld_corpus_docs]
    seqs = [list(tokenizer(text)["input_ids"]) for text in texts]
    if profile.kld_gsm8k:
        with open(gsm8k_file(), encoding="utf-8") as fh:
            rows = [json.loads(line) for _, line in zip(range(profile.kld_gsm8k), fh, strict=False)]
        for row in rows:
            answer = _CALC.sub("", row["answer"]).replace("####", "The answer is")
            chat = [{"role": "user", "content": row["question"]}, {"role": "assistant", "content": answer}]
            enc = tokenizer.apply_chat_template(chat, tokenize=True, return_dict=True)
            seqs.append(list(enc["input_ids"]))
    seqs = [s[: profile.kld_max_tokens] for s in seqs if len(s) >= 2]
    if not seqs:
        raise EvalError("no evaluation sequences for the KL divergence",
                        "set kld_corpus_docs or kld_gsm8k in the profile")
    return seqs


# ------------------------------------------------------------------------------ the reference

class TransformersLogits:
    """A transformers checkpoint, float32 on the CPU: the reference, or a checkpoint as candidate.

    Logits are ``lm_head(final hidden state)``; the hidden states are what the cache keeps.
    """

    def __init__(self, checkpoint: Path):
        import torch
        from transformers import AutoModelForCausalLM

        self.checkpoint = Path(checkpoint)
        self.model = AutoModelForCausalLM.from_pretrained(self.checkpoint, dtype=torch.float32)
        self.model.eval()
        self.head = self.model.get_output_embeddings()
        self.runtime = {"runtime": "transformers", "dtype": "float32", "device": "cpu"}

    def hidden(self, ids: Sequence[int]):
        import torch

        with torch.inference_mode():
            out = self.model.get_decoder()(input_ids=torch.tensor([list(ids)]))
        return out.last_hidden_state[0].float().numpy()

    def logits_from_hidden(self, hidden):
        import torch

        with torch.inference_mode():
            return self.head(torch.from_numpy(hidden)).float().numpy()

    def next_token_logits(self, ids: Sequence[int]):
        return self.logits_from_hidden(self.hidden(ids))


def _reference_key(checkpoint_hash: str, sequences: list[list[int]]) -> str:
    import torch
    import transformers

    digest = hashlib.sha256(json.dumps([checkpoint_hash, transformers.__version__, torch.__version__,
                                        "float32", "last_hidden_state"]).encode())
    digest.update(json.dumps(sequences).encode())
    return digest.hexdigest()[:24]


def reference_hidden(ref: TransformersLogits, sequences: list[list[int]], checkpoint_hash: str,
                     cache_dir: Path | None) -> tuple[list, bool]:
    """The reference's final hidden states per sequence, from the cache when the same inputs were seen."""
    import numpy as np

    key = _reference_key(checkpoint_hash, sequences)
    path = Path(cache_dir) / "evals" / f"kld-reference-{key}.npz" if cache_dir else None
    lengths = [len(s) for s in sequences]
    if path is not None and path.is_file():
        try:
            with np.load(path) as data:
                if str(data["key"]) == key and data["lengths"].tolist() == lengths:
                    return np.split(data["hidden"], np.cumsum(lengths)[:-1]), True
        except (OSError, ValueError, KeyError):
            log.warning("ignoring unreadable reference cache %s", path)
    hidden = [ref.hidden(s) for s in sequences]
    if path is not None:
        buf = io.BytesIO()
        np.savez(buf, key=np.array(key), lengths=np.array(lengths), hidden=np.concatenate(hidden))
        write_bytes_atomic(path, buf.getvalue())
    return hidden, False


# ------------------------------------------------------------------------------ the measure

def token_kld(ref_logits, cand_logits):
    """Per position ``KL(ref || cand)`` over the full vocabulary (nats) and whether the top tokens agree."""
    import torch

    r = torch.log_softmax(torch.as_tensor(ref_logits, dtype=torch.float32), dim=-1)
    c = torch.log_softmax(torch.as_tensor(cand_logits, dtype=torch.float32), dim=-1)
    kl = (r.exp() * (r - c)).sum(-1).clamp_min(0.0)
    same = r.argmax(-1) == c.argmax(-1)
    return kl.numpy().astype("float64"), same.numpy()


def bootstrap(kl_blocks: list, top1_blocks: list, *, iters: int, seed: int, confidence: float = CONFIDENCE):
    """Percentile intervals of (mean KLD, p99 KLD, top-1 agreement) from resampling whole blocks."""
    import numpy as np

    rng = np.random.default_rng(seed)
    n = len(kl_blocks)
    means, p99s, top1s = np.empty(iters), np.empty(iters), np.empty(iters)
    for i in range(iters):
        pick = rng.integers(0, n, n)
        kl = np.concatenate([kl_blocks[j] for j in pick])
        means[i], p99s[i] = kl.mean(), np.percentile(kl, 99)
        top1s[i] = np.concatenate([top1_blocks[j] for j in pick]).mean()
    lo, hi = (1 - confidence) / 2 * 100, (1 + confidence) / 2 * 100

    def interval(x) -> tuple[float, float]:
        a, b = np.percentile(x, [lo, hi])
        return float(a), float(b)

    return interval(means), interval(p99s), interval(top1s)


def _blocks(arr, size: int) -> list:
    return [arr[i:i + size] for i in range(0, len(arr), size)]


def compare_logits(reference_dir: Path, candidate: LogitsModel, profile: Profile, *,
                   checkpoint_hash: str, cache_dir: Path | None = None, reference: TransformersLogits | None = None
                   ) -> KLDResult:
    """KL divergence and top-1 agreement of ``candidate`` against the reference checkpoint."""
    import numpy as np
    from transformers import AutoTokenizer

    start = time.monotonic()
    sequences = evaluation_sequences(AutoTokenizer.from_pretrained(reference_dir), profile)
    ref = reference or TransformersLogits(reference_dir)
    from evals.config import reference_threads

    with reference_threads():
        hidden, cached = reference_hidden(ref, sequences, checkpoint_hash, cache_dir)
    kl_blocks, top1_blocks = [], []
    for ids, h in zip(sequences, hidden, strict=True):
        ref_logits = ref.logits_from_hidden(h)
        cand_logits = candidate.next_token_logits(ids)
        if tuple(cand_logits.shape) != tuple(ref_logits.shape):
            raise EvalError(f"the candidate's logits have shape {tuple(cand_logits.shape)}, the reference's "
                            f"{tuple(ref_logits.shape)} for the same {len(ids)} tokens",
                            "the engine must be built from this reference checkpoint (same vocabulary)")
        kl, same = token_kld(ref_logits, cand_logits)
        kl_blocks += _blocks(kl, profile.kld_block_tokens)
        top1_blocks += _blocks(same, profile.kld_block_tokens)
    kl_all, top1_all = np.concatenate(kl_blocks), np.concatenate(top1_blocks)
    mean_ci, p99_ci, top1_ci = bootstrap(kl_blocks, top1_blocks, iters=profile.kld_bootstrap, seed=profile.kld_seed)
    result = KLDResult(
        n_tokens=int(kl_all.size), n_sequences=len(sequences), n_blocks=len(kl_blocks),
        kld_mean=float(kl_all.mean()), kld_mean_ci=mean_ci, kld_p99=float(np.percentile(kl_all, 99)),
        kld_p99_ci=p99_ci, kld_median=float(np.median(kl_all)), kld_max=float(kl_all.max()),
        top1_agreement=float(top1_all.mean()), top1_agreement_ci=top1_ci, bootstrap_iters=profile.kld_bootstrap,
        block_tokens=profile.kld_block_tokens, seed=profile.kld_seed, runtime=dict(candidate.runtime),
        reference_cached=cached, seconds=round(time.monotonic() - start, 2))
    log.info("kld: %s", result.metrics())
    return result


def engine_logits_model(engine_dir: Path) -> LogitsModel:
    """The engine's backend (from its manifest; an unmanifested dir is the default backend's export)
    gives its logits."""
    from builders.backends import backend_for_engine
    from onramp.errors import OnrampError

    try:
        return backend_for_engine(Path(engine_dir)).logits_model(Path(engine_dir))
    except OnrampError as err:
        raise EvalError(f"KL divergence of {engine_dir}: {err.what}", err.fix) from None
