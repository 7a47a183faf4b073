"""flows.report: the onboarding's artifacts rendered from results, without Prefect or MLflow."""

from __future__ import annotations

import base64

from evals.build_eval import EvalResult
from evals.gates import Gates, apply_gates
from flows.report import (
    LayoutOutcome,
    OnboardResult,
    eval_markdown,
    layout_rows,
    not_promoted_markdown,
    plot_markdown,
    result_markdown,
    slug,
    tracking_links,
)


def test_slug_is_an_artifact_key():
    assert slug("HuggingFaceTB/SmolLM2-135M-Instruct") == "huggingfacetb-smollm2-135m-instruct"
    assert slug("mlflow_run") == "mlflow-run"
    assert slug("--A..b--") == "a-b"


def test_layout_rows_keep_every_layout_and_cut_long_reasons():
    outcomes = [LayoutOutcome(key="cpu-tp1-int8", target="cpu", backend="openvino", precision="int8", status="built",
                              build_seconds=12.5, gate="passed", version="3"),
                LayoutOutcome(key="a100-80gb-tp2-bf16", target="a100-80gb", backend="tensorrt_llm",
                              precision="bf16", status="infeasible", reason="x" * 500)]
    rows = layout_rows(outcomes)
    assert [r["layout"] for r in rows] == ["cpu-tp1-int8", "a100-80gb-tp2-bf16"]
    assert rows[0] == {"layout": "cpu-tp1-int8", "target": "cpu", "backend": "openvino", "precision": "int8",
                       "status": "built", "build_s": 12.5, "gate": "passed", "version": "3", "reason": ""}
    assert rows[1]["gate"] == "" and rows[1]["version"] == "" and len(rows[1]["reason"]) == 200


def test_eval_markdown_puts_each_report_under_its_gate_verdict():
    good = EvalResult(build_id="a" * 64, profile="quick", metrics={"perplexity_ratio": 1.0}, report_md="## A report")
    bad = EvalResult(build_id="b" * 64, profile="quick", metrics={"perplexity_ratio": 9.0}, report_md="## B report",
                     cached=True)
    rules = Gates.model_validate({"version": "t", "quality": {"perplexity_ratio": {"max": 1.05}}})
    gates = {k: apply_gates(e.metrics, rules, sections=("quality",)) for k, e in (("a", good), ("b", bad))}
    assert gates["a"].passed and not gates["b"].passed
    md = eval_markdown("acme/m", "0123456789abcdef", {"a": good, "b": bad, "c": good}, gates)
    assert md.startswith("# Evals and gates: acme/m@0123456789ab")
    assert "# a: gate **passed** (profile quick)" in md
    assert "# b: gate **FAILED** (perplexity_ratio) (cached, profile quick)" in md
    assert "# c: gate n/a (profile quick)" in md  # evaluated, not judged
    assert md.index("## A report") < md.index("# b:") < md.index("## B report")
    assert gates["b"].to_markdown() in md


def test_plot_markdown_inlines_the_png():
    png = b"\x89PNG\r\n\x1a\nnot really"
    md = plot_markdown(png)
    assert md.startswith("# Latency")
    assert base64.b64decode(md.split("base64,")[1].split(")")[0]) == png


def test_result_markdown_and_links():
    result = OnboardResult(repo="acme/m", sha="f" * 40, message="m version 2 is production", builds_made=1)
    assert result_markdown(result) == "**m version 2 is production** (acme/m@ffffffffffff; 1 builds made, 0 evals run)."
    assert not_promoted_markdown("no build passed") == "**Not promoted**: no build passed."
    ui = tracking_links("m", "2", "r1", ui="http://127.0.0.1:5000", experiment_id="7", tracking_uri="sqlite:///x")
    assert ui == {"mlflow_run": "http://127.0.0.1:5000/#/experiments/7/runs/r1",
                  "mlflow_version": "http://127.0.0.1:5000/#/models/m/versions/2"}
    plain = tracking_links("m", "2", None, ui=None, experiment_id=None, tracking_uri="sqlite:///x")
    assert plain == {"mlflow_version": "models:/m/2"}


def test_the_best_ranked_passing_build_is_promoted():
    from flows.steps import choose_build

    def build(key, rank, gate):
        return LayoutOutcome(key=key, target="cpu", backend="openvino", precision=key[-4:], status="built",
                             rank=rank, gate=gate)

    int8, int4 = build("cpu-tp1-int8", 1, "passed"), build("cpu-tp1-int4", 0, "passed")
    assert choose_build([int8, int4], {"cpu-tp1-int8", "cpu-tp1-int4"}) == ("cpu-tp1-int4", True)
    int4.gate = "failed"  # int4's quality fails its gates: int8 goes out
    assert choose_build([int8, int4], {"cpu-tp1-int8", "cpu-tp1-int4"}) == ("cpu-tp1-int8", True)
    int8.gate = "failed"
    assert choose_build([int8, int4], {"cpu-tp1-int8", "cpu-tp1-int4"}) == ("cpu-tp1-int8", False)
    assert choose_build([int8, int4], set()) == (None, False)
