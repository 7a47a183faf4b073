"""Gates: thresholds from the versioned YAML, NaN handling, regression against production."""

from __future__ import annotations

import math

import pytest

from evals.errors import GateConfigError
from evals.gates import GATES_FILE, apply_gates, load_gates

GOOD = {"perplexity_ratio": 1.01, "gsm8k_accuracy_drop": 0.0, "greedy_agreement": 0.875, "token_agreement": 0.95,
        "candidate_word_perplexity": 61.9, "candidate_gsm8k_accuracy": 0.1,
        "kld_mean_ci_high": 0.0055, "kld_p99_ci_high": 0.047, "top1_agreement_ci_low": 0.959}


def test_shipped_gates_are_versioned_and_parse():
    gates = load_gates()
    assert gates.version is not None
    assert {"perplexity_ratio", "gsm8k_accuracy_drop", "greedy_agreement"} <= set(gates.quality)
    # KL divergence and top-1 agreement decide, on their confidence bounds; small samples only advise
    decisive = {name for name, th in gates.quality.items() if not th.advisory}
    assert {"kld_mean_ci_high", "kld_p99_ci_high", "top1_agreement_ci_low"} <= decisive
    assert not decisive & {"gsm8k_accuracy_drop", "greedy_agreement", "token_agreement"}
    assert gates.latency and gates.regression.metrics
    assert gates.source == str(GATES_FILE)


def test_every_metric_listed_with_value_threshold_and_verdict():
    result = apply_gates(GOOD, sections=["quality"])
    assert result.passed and result.failed == []
    assert [c.metric for c in result.checks] == list(load_gates().quality)
    ratio = next(c for c in result.checks if c.metric == "perplexity_ratio")
    assert ratio.value == pytest.approx(1.01) and ratio.threshold == "<= 1.05" and ratio.passed
    assert "PASS" in result.to_markdown()


def test_failing_metric_is_named():
    result = apply_gates({**GOOD, "perplexity_ratio": 3.2, "kld_mean_ci_high": 0.5}, sections=["quality"])
    assert not result.passed
    assert result.failed == ["kld_mean_ci_high", "perplexity_ratio"]
    assert "FAIL (kld_mean_ci_high, perplexity_ratio)" in result.to_markdown()


def test_advisory_check_is_shown_but_does_not_fail_the_gate():
    result = apply_gates({**GOOD, "greedy_agreement": 0.0, "gsm8k_accuracy_drop": 0.3}, sections=["quality"])
    assert result.passed and result.failed == []
    greedy = next(c for c in result.checks if c.metric == "greedy_agreement")
    assert greedy.advisory and not greedy.passed and greedy.value == 0.0
    assert "| greedy_agreement | threshold | 0 | >= 0.25 | miss (advisory) |" in result.to_markdown()


@pytest.mark.parametrize("bad", [math.nan, math.inf])
def test_non_finite_value_fails(bad):
    result = apply_gates({**GOOD, "perplexity_ratio": bad}, sections=["quality"])
    assert result.failed == ["perplexity_ratio"]


def test_unmeasured_metric_fails_unless_its_section_is_left_out_or_report_only(tmp_path):
    result = apply_gates({k: v for k, v in GOOD.items() if k != "perplexity_ratio"})
    assert result.failed == ["perplexity_ratio"]
    # the shipped absolute latency SLOs are report only: shown, never failing
    latency = [c for c in result.checks if c.section == "latency"]
    assert latency and all(c.note == "not measured" and not c.gating for c in latency)
    gates = tmp_path / "g.yaml"
    gates.write_text("version: 2\nlatency:\n  single_ttft_s: {max: 2.0}\n")
    assert apply_gates(GOOD, gates).failed == ["single_ttft_s"]


def test_regression_against_production(tmp_path):
    gates = tmp_path / "g.yaml"
    gates.write_text("version: 7\nquality:\n  greedy_agreement: {min: 0.5}\nregression:\n  max_pct: 10\n"
                     "  metrics:\n    candidate_gsm8k_accuracy: {better: higher}\n"
                     "    candidate_word_perplexity: {better: lower, abs_tol: 0.5}\n")
    prod = {"candidate_gsm8k_accuracy": 0.5, "candidate_word_perplexity": 60.0}
    ok = apply_gates({"greedy_agreement": 1.0, "candidate_gsm8k_accuracy": 0.46, "candidate_word_perplexity": 66.4},
                     gates, prod)
    assert ok.passed and ok.gates_version == "7" and len(ok.checks) == 3
    bad = apply_gates({"greedy_agreement": 1.0, "candidate_gsm8k_accuracy": 0.44, "candidate_word_perplexity": 66.6},
                      gates, prod)
    assert bad.failed == ["candidate_gsm8k_accuracy (regression)", "candidate_word_perplexity (regression)"]
    # without production numbers there is nothing to regress against
    assert apply_gates({"greedy_agreement": 1.0}, gates).passed


def test_bad_gates_files_are_refused_with_a_fix(tmp_path):
    path = tmp_path / "g.yaml"
    path.write_text("quality: {}\n")
    with pytest.raises(GateConfigError, match="version"):
        load_gates(path)
    path.write_text("version: 1\nquality:\n  perplexity_ratio: {max: 1.0, min: 0.5}\n")
    with pytest.raises(GateConfigError, match="exactly one"):
        load_gates(path)
    path.write_text("version: 1\nqualty: {}\n")
    with pytest.raises(GateConfigError, match="qualty"):
        load_gates(path)
    with pytest.raises(GateConfigError, match="--gates"):
        load_gates(tmp_path / "missing.yaml")
    with pytest.raises(GateConfigError, match="unknown gate section"):
        apply_gates(GOOD, sections=["speed"])
