"""KL divergence and top-1 agreement from full logits: the reference against itself is exactly 0,
the real int8 engine passes the gate's KLD checks, a build with scrambled weights fails them, the
intervals are seeded and contain their estimates, and a TensorRT-LLM engine says it can't."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from evals.config import Profile
from evals.errors import EvalError
from evals.gates import apply_gates
from evals.kld import TransformersLogits, bootstrap, compare_logits, engine_logits_model
from evals.quality import _hash_checkpoint

KLD_GATED = ("kld_mean_ci_high", "kld_p99_ci_high", "top1_agreement_ci_low")
# Smaller than the quick profile (~3.1k positions), to keep the suite's runtime modest: 2 corpus
# paragraphs and 1 GSM8K answer (~450 positions); 4 and 2 (~850) for the engines.
TINY = Profile(name="tiny", kld_corpus_docs=2, kld_gsm8k=1, kld_max_tokens=256, kld_bootstrap=200)
SMALL = Profile(name="small", kld_corpus_docs=4, kld_gsm8k=2, kld_bootstrap=500)


@pytest.fixture(scope="module")
def reference(reference_model) -> TransformersLogits:
    return TransformersLogits(reference_model)


def test_reference_against_itself_is_exactly_zero_fresh_and_cached(reference_model, reference, tmp_path):
    digest = _hash_checkpoint(reference_model)
    runs = [compare_logits(reference_model, reference, TINY, checkpoint_hash=digest, cache_dir=tmp_path,
                           reference=reference) for _ in range(2)]
    assert [r.reference_cached for r in runs] == [False, True]
    assert len(list((tmp_path / "evals").glob("kld-reference-*.npz"))) == 1
    for r in runs:  # the cached hidden states give the very same logits
        assert r.n_tokens > 300 and r.n_sequences == 3
        assert r.kld_mean == r.kld_p99 == r.kld_max == 0.0 and r.top1_agreement == 1.0
        assert r.kld_mean_ci == (0.0, 0.0) and r.top1_agreement_ci == (1.0, 1.0)
        assert r.runtime["runtime"] == "transformers"


def test_bootstrap_intervals_are_seeded_and_contain_the_estimates():
    rng = np.random.default_rng(1)
    kl = [rng.exponential(0.01, 64) for _ in range(40)]
    same = [rng.random(64) < 0.95 for _ in range(40)]
    first = bootstrap(kl, same, iters=400, seed=0)
    assert bootstrap(kl, same, iters=400, seed=0) == first
    assert bootstrap(kl, same, iters=400, seed=1) != first
    (m_lo, m_hi), (p_lo, p_hi), (t_lo, t_hi) = first
    flat_kl, flat_same = np.concatenate(kl), np.concatenate(same)
    assert m_lo < flat_kl.mean() < m_hi and p_lo < np.percentile(flat_kl, 99) < p_hi
    assert t_lo < flat_same.mean() < t_hi
    # a quarter of the data: a wider interval
    (q_lo, q_hi), _, _ = bootstrap(kl[:10], same[:10], iters=400, seed=0)
    assert q_hi - q_lo > m_hi - m_lo


def test_int8_engine_passes_and_scrambled_build_fails_the_kld_gate(ov_int8_engine, broken_engine, reference_model,
                                                                   reference):
    digest, cache = _hash_checkpoint(reference_model), Path(os.environ["ONRAMP_CACHE_DIR"])
    good = compare_logits(reference_model, engine_logits_model(ov_int8_engine), SMALL, checkpoint_hash=digest,
                          cache_dir=cache, reference=reference)
    # the engine ran with its manifest's properties; int8 weights are close to, not equal to, float32
    assert good.runtime["KV_CACHE_PRECISION"] == "u8" and "INFERENCE_PRECISION_HINT" in good.runtime
    assert 0 < good.kld_mean < 0.05 and 0.85 < good.top1_agreement < 1
    for value, (lo, hi) in ((good.kld_mean, good.kld_mean_ci), (good.kld_p99, good.kld_p99_ci),
                            (good.top1_agreement, good.top1_agreement_ci)):
        assert lo <= value <= hi and lo < hi
    checks = {c.metric: c for c in apply_gates(good.metrics(), sections=["quality"]).checks}
    assert all(checks[m].passed for m in KLD_GATED), [checks[m] for m in KLD_GATED]

    bad = compare_logits(reference_model, engine_logits_model(broken_engine[0]), SMALL, checkpoint_hash=digest,
                         cache_dir=cache, reference=reference)
    assert bad.reference_cached and bad.n_tokens == good.n_tokens
    assert bad.kld_mean > 10 and bad.top1_agreement < 0.1
    result = apply_gates(bad.metrics(), sections=["quality"])
    assert set(KLD_GATED) <= set(result.failed)
    assert "mean KLD" in bad.to_markdown() and "same top token" in bad.to_markdown()


def test_tensorrt_llm_engine_says_unavailable(ov_int8_engine, tmp_path):
    from builders.manifest import read_manifest, write_manifest

    write_manifest(tmp_path, read_manifest(ov_int8_engine).model_copy(update={"backend": "tensorrt_llm", "files": {}}))
    with pytest.raises(EvalError, match=r"unavailable: full next-token logits .* TensorRT-LLM") as err:
        engine_logits_model(tmp_path)
    assert "--backend openvino" in err.value.fix
