"""The real server (`onramp serve`, int8 OpenVINO engine) as the candidate: latency sweep and quality."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from evals.gates import apply_gates
from evals.quality import run_quality
from onramp.cli import app
from tests.evals.conftest import SERVED

pytestmark = pytest.mark.slow
runner = CliRunner()


def test_bench_cli_poisson_sweep_on_the_real_server(served_int8, tmp_path, monkeypatch):
    monkeypatch.setenv("ONRAMP_API_KEY", served_int8.key)
    result = runner.invoke(app, ["bench", served_int8.url, "--model", SERVED, "--rates", "0.5,2",
                                 "--requests", "3", "--input-tokens", "64", "--output-tokens", "16",
                                 "--single", "1", "--slo", "5", "--slo", "100000", "--json", "--out", str(tmp_path)])
    assert result.exit_code == 0, result.output
    payload = json.loads((tmp_path / "report.json").read_text())
    lat, metrics = payload["latency"], payload["metrics"]
    assert [r["rate"] for r in lat["rates"]] == [0.5, 2.0]
    for r in lat["rates"]:
        assert r["completed"] == 3 and r["errors"] == 0
        assert 0 < r["ttft_p50_s"] <= r["ttft_p99_s"] < 60
        assert r["decode_tok_s_p50"] > 0 and r["output_tok_s"] > 0
        assert r["mean_prompt_tokens"] > 30  # the server counted a real prompt
    assert lat["single"]["completed"] == 1 and metrics["single_decode_tok_s"] > 0
    assert lat["slo"][1]["max_output_tok_s"] is None  # nobody decodes 100k tok/s per stream
    assert (tmp_path / "throughput_vs_rate.png").read_bytes()[:4] == b"\x89PNG"
    assert (tmp_path / "ttft_vs_rate.png").read_bytes()[:4] == b"\x89PNG"
    gate = apply_gates(metrics, sections=["latency"])
    assert [c.metric for c in gate.checks] == ["single_ttft_s", "single_decode_tok_s", "ttft_p99_s"]
    assert all(c.value is not None for c in gate.checks)


def test_bench_cli_bad_input(served_int8):
    result = runner.invoke(app, ["bench", served_int8.url, "--model", SERVED, "--rates", "fast"])
    assert result.exit_code == 1 and "--rates" in result.output
    result = runner.invoke(app, ["bench", served_int8.url, "--model", SERVED, "--rates", "1", "--requests", "1",
                                 "--single", "0", "--output-tokens", "2", "--api-key", "wrong"])
    assert result.exit_code == 1 and "HTTP 401" in result.output and "Traceback" not in result.output


def test_endpoint_as_quality_candidate(served_int8, reference_model):
    report = run_quality(served_int8.url, reference_model, "quick", model=SERVED, api_key=served_int8.key)
    assert report.candidate_kind == "endpoint"
    assert report.candidate_scores.model == "local-chat-completions"
    assert report.candidate_scores.gsm8k_n == 10
    assert report.candidate_scores.word_perplexity is None  # an endpoint gives no prompt log-probabilities
    metrics = report.metrics()
    assert "perplexity_ratio" not in metrics and "kld_mean" not in metrics
    assert report.kld is None and "no full next-token logits" in report.kld_not_measured
    assert "KL divergence and top-1 agreement: not measured" in report.to_markdown()
    # the server runs the same int8 engine as the openvino path: its greedy answers pass the agreement
    # checks, GSM8K does not drop; only what needs logits is unmeasured (and so fails: not enough to promote)
    gate = apply_gates(metrics, sections=["quality"])
    unmeasured = ["kld_mean_ci_high", "kld_p99_ci_high", "top1_agreement_ci_low", "perplexity_ratio"]
    assert gate.failed == unmeasured, gate.to_markdown()
    checks = {c.metric: c for c in gate.checks}
    assert all(checks[m].note == "not measured" for m in unmeasured)
    assert checks["greedy_agreement"].passed and checks["token_agreement"].passed
