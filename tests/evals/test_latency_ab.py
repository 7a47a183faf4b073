"""The side-by-side latency A/B: its statistics, its gate, and the same engine against itself under load."""

from __future__ import annotations

import json
import math
import subprocess
import sys

import pytest

from evals.errors import GateConfigError
from evals.gates import apply_gates, load_gates
from evals.latency_ab import ABLoad, ABReport, ABRound, Endpoint, SideRound, ab_engines, ratio_interval, run_ab
from tests.evals.sse_server import CadenceServer


def _report(pairs: list[tuple[float, float]], metric: str = "output_tok_s") -> ABReport:
    """An A/B whose rounds measured ``(production, candidate)`` for ``metric`` (the others equal)."""
    rounds = []
    for i, (p, c) in enumerate(pairs):
        base = {"output_tok_s": 100.0, "decode_tok_s": 50.0, "ttft_s": 0.1}
        rounds.append(ABRound(index=i, order=["production", "candidate"],
                              production=SideRound(**{**base, metric: p}), candidate=SideRound(**{**base, metric: c})))
    return ABReport(candidate="c", production="p", load=ABLoad(), rounds=rounds, seconds=1.0, created="now")


def test_ratio_interval_is_a_t_interval_on_log_ratios():
    geo, lo, hi = ratio_interval([0.5, 2.0], 0.90)
    assert geo == pytest.approx(1.0)
    # mean 0, sd of logs = ln 4 / sqrt 2, t(0.95, 1) = 6.314
    half = 6.3138 * math.log(4) / math.sqrt(2) / math.sqrt(2)
    assert (lo, hi) == (pytest.approx(math.exp(-half), rel=1e-3), pytest.approx(math.exp(half), rel=1e-3))
    assert ratio_interval([0.9, 0.9, 0.9]) == (pytest.approx(0.9), pytest.approx(0.9), pytest.approx(0.9))
    assert ratio_interval([1.2]) == (pytest.approx(1.2), None, None)  # one round: no interval
    assert ratio_interval([]) == (None, None, None)
    narrow, wide = ratio_interval([0.9, 1.1, 1.0] * 4), ratio_interval([0.9, 1.1, 1.0])
    assert wide[1] < narrow[1] < 1.0 < narrow[2] < wide[2]  # more rounds, tighter


def test_gate_fails_only_when_the_whole_interval_is_beyond_the_tolerance():
    noisy_same = _report([(100, 140), (120, 80), (90, 100), (110, 95)])  # noise around 1.0
    result = apply_gates({}, sections=[], ab=noisy_same)
    assert result.passed and [c.kind for c in result.checks] == ["ratio"] * 3
    est = noisy_same.estimate("output_tok_s")
    assert est.lo < 1.0 < est.hi and est.rounds == 4
    half = _report([(100, 50), (110, 52), (95, 49), (105, 51)])  # consistently half the throughput
    result = apply_gates({}, sections=[], ab=half)
    assert result.failed == ["output_tok_s (ratio)"]
    assert "upper bound >= 0.8" in result.to_markdown() and "**FAIL**" in result.to_markdown()
    # a real slowdown that the rounds cannot pin down (one wild round) does not fail either
    unsure = _report([(100, 50), (100, 55), (100, 160)])
    assert unsure.estimate("output_tok_s").hi >= 0.8 and apply_gates({}, sections=[], ab=unsure).passed
    slow_ttft = _report([(0.1, 0.3), (0.12, 0.33), (0.09, 0.31)], metric="ttft_s")
    assert apply_gates({}, sections=[], ab=slow_ttft).failed == ["ttft_s (ratio)"]
    # a side that never answered: not measured, and an unmeasured build is not a good build
    dead = _report([(100, 100), (100, 100)])
    for r in dead.rounds:
        r.candidate = SideRound(errors=5, first_error="HTTP 500: boom")
    result = apply_gates({}, sections=[], ab=dead)
    assert not result.passed and all("not measured" in c.note for c in result.checks)
    assert "HTTP 500: boom" in dead.to_markdown()


def test_ab_metrics_and_report_keep_the_absolute_numbers():
    report = _report([(100, 90), (110, 100), (90, 80)])
    m = report.metrics()
    assert m["ab_rounds"] == 3 and m["ab_production_output_tok_s"] == 100 and m["ab_candidate_output_tok_s"] == 90
    assert m["ab_output_tok_s_ratio_lo"] < m["ab_output_tok_s_ratio"] < m["ab_output_tok_s_ratio_hi"]
    assert "| output_tok_s | higher |" in report.to_markdown()


def test_latency_is_never_gated_against_a_number_from_another_run(tmp_path):
    gates = load_gates()
    assert not any(name.startswith(("single_", "ttft", "max_throughput")) for name in gates.regression.metrics)
    assert all(th.report_only for th in gates.latency.values())
    path = tmp_path / "g.yaml"
    path.write_text("version: 1\nregression:\n  metrics:\n    single_decode_tok_s: {better: higher}\n")
    with pytest.raises(GateConfigError, match="single_decode_tok_s is a latency metric"):
        load_gates(path)
    path.write_text("version: 1\nlatency_ab:\n  metrics:\n    speed: {min_ratio: 0.8}\n")
    with pytest.raises(GateConfigError, match="unknown A/B metric 'speed'"):
        load_gates(path)
    path.write_text("version: 1\nlatency_ab:\n  metrics:\n    ttft_s: {min_ratio: 0.8}\n")
    with pytest.raises(GateConfigError, match="give `max_ratio`"):
        load_gates(path)
    # production's stored latency numbers, however much better, decide nothing
    slow = {"single_decode_tok_s": 1.0, "single_ttft_s": 50.0}
    result = apply_gates(slow, production={"single_decode_tok_s": 60.0, "single_ttft_s": 0.1}, sections=["latency"])
    assert result.passed and not [c for c in result.checks if c.kind == "regression"]
    assert "missed (report only)" in result.to_markdown()


def test_ab_catches_a_server_twice_as_slow_and_passes_an_equal_one():
    load = ABLoad(rounds=4, single_requests=1, concurrency=3, input_tokens=20, output_tokens=12, warmup_requests=0)
    with CadenceServer(ttft=0.05, itl=0.02) as prod, CadenceServer(ttft=0.05, itl=0.02) as same, \
            CadenceServer(ttft=0.10, itl=0.04) as slow:
        p = Endpoint(prod.url, "cadence")
        equal = run_ab(Endpoint(same.url, "cadence"), p, load)
        halved = run_ab(Endpoint(slow.url, "cadence"), p, load)
        # both sides got the same prompts (4 rounds x (1 single + a burst of 3))
        assert len(same.app.state.seen) == 16
        assert sorted(json.dumps(b["messages"]) for b in prod.app.state.seen[:16]) == \
            sorted(json.dumps(b["messages"]) for b in same.app.state.seen)
    assert [r.order[0] for r in equal.rounds] == ["production", "candidate"] * 2
    assert apply_gates({}, sections=[], ab=equal).passed
    result = apply_gates({}, sections=[], ab=halved)
    # (the TTFT ratio is left out: client overhead on a loaded machine can swamp 50 ms)
    assert {"output_tok_s (ratio)", "decode_tok_s (ratio)"} <= set(result.failed)
    assert halved.estimate("decode_tok_s").ratio == pytest.approx(0.5, rel=0.25)


@pytest.fixture
def cpu_hog():
    """A busy Python loop beside the test, killed at the end."""
    proc = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    yield proc
    proc.kill()
    proc.wait(timeout=30)


@pytest.mark.slow
def test_the_same_engine_never_fails_against_itself_with_a_cpu_hog(ov_int8_engine, cpu_hog):
    """Two servers on the same int8 engine dir, a busy process beside them: the gate passes."""
    load = ABLoad(rounds=4, single_requests=1, concurrency=2, input_tokens=64, output_tokens=16, warmup_requests=1)
    report = ab_engines(ov_int8_engine, ov_int8_engine, load)
    assert cpu_hog.poll() is None  # the hog ran throughout
    assert report.errors("candidate") == report.errors("production") == 0
    result = apply_gates({}, sections=[], ab=report)
    assert result.passed, result.to_markdown() + report.to_markdown()
    for metric in ("output_tok_s", "decode_tok_s", "ttft_s"):
        est = report.estimate(metric)
        assert est.rounds == 4 and est.lo is not None and est.lo <= est.hi
