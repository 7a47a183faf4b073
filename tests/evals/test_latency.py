"""The load generator: Poisson schedule, statistics, SLO search, plots, and its clocks on a known cadence."""

from __future__ import annotations

import statistics

import pytest

from evals.errors import BenchError
from evals.latency import (RateResult, RequestRecord, percentile, poisson_arrivals, run_sweep, single_stream,
                           slo_results, summarize)
from tests.evals.sse_server import CadenceServer


def test_poisson_arrivals_are_seeded_exponential_and_bounded():
    a = poisson_arrivals(4.0, 4000, seed=1)
    assert a == poisson_arrivals(4.0, 4000, seed=1)
    assert a != poisson_arrivals(4.0, 4000, seed=2)
    gaps = [y - x for x, y in zip([0.0, *a], a, strict=False)]
    assert statistics.fmean(gaps) == pytest.approx(0.25, rel=0.06)
    # exponential: standard deviation equals the mean
    assert statistics.pstdev(gaps) == pytest.approx(0.25, rel=0.1)
    assert all(t < 3.0 for t in poisson_arrivals(4.0, 1000, seed=1, max_duration_s=3.0))
    assert len(poisson_arrivals(100.0, 7, seed=3)) == 7
    with pytest.raises(BenchError, match="--rates"):
        poisson_arrivals(0.0, 3)


def test_percentile_and_summary_arithmetic():
    assert percentile([], 50) is None
    assert percentile([3.0, 1.0, 2.0], 50) == 2.0
    assert percentile([0.0, 10.0], 99) == pytest.approx(9.9)
    recs = [RequestRecord(sent=0.0, first_token=0.5, done=2.5, token_times=[0.5, 1.5, 2.5], output_tokens=3),
            RequestRecord(sent=1.0, first_token=1.2, done=3.0, token_times=[1.2, 2.1, 3.0], output_tokens=3),
            RequestRecord(sent=1.5, error="HTTP 500: boom")]
    s = summarize(recs)
    assert (s.requests, s.completed, s.errors, s.first_error) == (3, 2, 1, "HTTP 500: boom")
    assert s.ttft_p50_s == pytest.approx(0.35)
    assert s.duration_s == pytest.approx(3.0) and s.output_tok_s == pytest.approx(2.0)
    assert s.decode_tok_s_p50 == pytest.approx((1.0 + 2 / 1.8) / 2)
    assert s.itl_p50_s == pytest.approx(0.95)


def _rate(rate, decode, out, errors=0):
    return RateResult(rate=rate, requests=4, completed=4 - errors, errors=errors, duration_s=1.0,
                      decode_tok_s_p50=decode, output_tok_s=out)


def test_max_throughput_at_slo():
    rates = [_rate(1, 90, 80), _rate(2, 70, 150), _rate(4, 50, 210), _rate(8, 85, 400, errors=1)]
    a, b, c = slo_results(rates, [60, 80, 100])
    assert (a.slo_tok_s, a.max_output_tok_s, a.at_rate) == (60, 150, 2)
    assert (b.max_output_tok_s, b.at_rate) == (80, 1)  # the rate with errors never counts
    assert c.max_output_tok_s is None and c.at_rate is None


def test_single_stream_measures_the_servers_cadence():
    with CadenceServer(ttft=0.2, itl=0.02) as srv:
        stats = single_stream(srv.url, "cadence", requests=2, input_tokens=50, output_tokens=30)
        assert len(srv.app.state.seen) == 2 and all(b["stream"] for b in srv.app.state.seen)
    assert stats.completed == 2 and stats.errors == 0
    assert 0.18 <= stats.ttft_p50_s < 0.5
    assert 0.018 <= stats.itl_p50_s < 0.06
    assert 20 < stats.decode_tok_s_p50 <= 52
    assert stats.mean_output_tokens == 30


def test_sweep_report_plots_and_metrics(tmp_path):
    with CadenceServer(ttft=0.05, itl=0.01, key="sk-test") as srv:
        report = run_sweep(srv.url, "cadence", [4, 1], input_tokens=40, output_tokens=12, requests_per_rate=4,
                           max_duration_s=10, slo_tok_s=[50, 500], single_requests=1, api_key="sk-test",
                           plots_dir=tmp_path)
        prompts = [b["messages"][0]["content"] for b in srv.app.state.seen]
    assert len(set(prompts)) == len(prompts)  # no shared prompts between requests
    assert [r.rate for r in report.rates] == [1, 4]
    assert all(r.completed == 4 and r.errors == 0 and r.output_tok_s > 0 for r in report.rates)
    assert report.slo[0].max_output_tok_s == max(r.output_tok_s for r in report.rates)
    assert report.slo[1].max_output_tok_s is None
    metrics = report.metrics()
    assert metrics["max_throughput_at_slo"] == report.slo[0].max_output_tok_s
    assert metrics["max_throughput_at_slo_500"] == 0.0
    assert {"single_ttft_s", "single_decode_tok_s", "ttft_p99_s"} <= set(metrics)
    for path in report.plots.values():
        assert open(path, "rb").read(8) == b"\x89PNG\r\n\x1a\n"
    assert set(report.plots) == {"throughput", "ttft"}
    md = report.to_markdown()
    assert "| 4 | 4/4 |" in md and "SLO 500 tok/s per stream: met at no swept rate" in md


def test_wrong_key_and_unreachable_server_are_clear_errors():
    with CadenceServer(key="sk-right") as srv:
        with pytest.raises(BenchError, match="every benchmark request.*HTTP 401.*--api-key"):
            run_sweep(srv.url, "cadence", [2], requests_per_rate=2, output_tokens=4, input_tokens=10,
                      single_requests=0, warmup_requests=0, api_key="sk-wrong")
    from tests.conftest import free_port

    with pytest.raises(BenchError, match="cannot reach"):
        run_sweep(f"http://127.0.0.1:{free_port()}", "m", [1])
    with pytest.raises(BenchError, match="--rates"):
        run_sweep("http://127.0.0.1:1", "m", [])
