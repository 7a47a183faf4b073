"""The tuner on the real int8 engine: a tiny budget and two knobs, nothing that depends on speed.

The tuner runs on a copy of the test engine (hard links, own manifest): the shared cached engine
is never tuned. ``min_gain=-1`` and open SLO tolerances make any error-free candidate acceptable,
so the manifest is rewritten whichever candidate is faster on this machine (which one is not
asserted).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from builders.manifest import MANIFEST, read_manifest, verify_files
from builders.ov_runtime import PROMPT_LOOKUP_TOKENS
from evals.errors import BenchError
from evals.tune import KNOBS, TuneLoad, candidate_values, describe, engine_copy, save_report, tune, with_value


@pytest.fixture
def engine(ov_int8_engine, tmp_path) -> Path:
    return engine_copy(ov_int8_engine, read_manifest(ov_int8_engine).runtime.model_dump(), tmp_path / "engine")


def test_candidates_preserve_numerics_and_leave_out_the_current_value(engine):
    runtime = read_manifest(engine).runtime.model_dump()
    space = candidate_values(engine, with_value(runtime, "threads", 2), cores=4)
    assert space["threads"] == [1, 4]  # 2 is the current value
    assert space["cpu_pinning"] == [True]  # unpinned is what a CPU load uses when the manifest says nothing
    assert space["dynamic_split_fuse"] == [not runtime["scheduler"]["dynamic_split_fuse"]]
    assert 256 not in space["max_num_batched_tokens"]  # openvino's default when the manifest says nothing
    assert space["prompt_lookup"] == [PROMPT_LOOKUP_TOKENS]  # off (0): what a load does when the manifest says nothing
    assert all(section in ("properties", "scheduler", "decoding") for section, _ in KNOBS.values())
    assert not {"INFERENCE_PRECISION_HINT", "KV_CACHE_PRECISION"} & {key for _, key in KNOBS.values()}
    assert describe(with_value(runtime, "threads", 1), runtime) == "threads=1"


def test_prompt_lookup_candidates_are_load_adaptive_unless_asked_otherwise(engine):
    from builders.ov_runtime import decoding_settings
    from evals.tune import LOOKUP_BELOW, candidate_runtime

    runtime = read_manifest(engine).runtime.model_dump()
    adaptive = candidate_runtime(runtime, "prompt_lookup", 3)
    assert adaptive["decoding"] == {"num_assistant_tokens": 3, "lookup_below": LOOKUP_BELOW}
    assert describe(adaptive, runtime) == f"prompt_lookup=3, lookup_below={LOOKUP_BELOW}"
    assert candidate_runtime(runtime, "prompt_lookup", 3, lookup_below=0)["decoding"] == {"num_assistant_tokens": 3}
    off = candidate_runtime(adaptive, "prompt_lookup", 0)
    assert off["decoding"] == {"num_assistant_tokens": 0} and describe(off, runtime) == ""
    copy = engine_copy(engine, adaptive, engine.parent / "adaptive")  # what the server reads back
    assert decoding_settings(copy) == {"num_assistant_tokens": 3, "max_ngram_size": 3, "lookup_below": LOOKUP_BELOW}


def test_an_unknown_knob_is_refused_by_name(engine):
    with pytest.raises(BenchError, match="unknown knob.*warp_drive"):
        tune(engine, knobs=["warp_drive"])


@pytest.mark.slow
def test_tune_writes_a_candidate_config_and_the_server_loads_it(engine, ov_int8_engine, tmp_path):
    before = read_manifest(engine)
    original_shared = (ov_int8_engine / MANIFEST).read_text()
    space = candidate_values(engine, before.runtime.model_dump(), cores=2)
    load = TuneLoad(rate=8.0, requests=2, input_tokens=32, output_tokens=6)
    out = tmp_path / "report"
    # a budget that never runs out (the rounds are capped), so every candidate is measured
    report = tune(engine, budget_s=1e6, max_rounds=2, knobs=["threads", "dynamic_split_fuse"], load=load,
                  min_gain=-1.0, ttft_tolerance=float("inf"), decode_tolerance=0.0, cores=2, out_dir=out)

    # the manifest: rewritten whole (it parses, every file checks), the build untouched, a candidate config
    after = read_manifest(engine)
    verify_files(engine, after)
    assert not [p.name for p in engine.iterdir() if p.name.startswith(".")]  # no temp file left behind
    assert after.build_id == before.build_id and after.files == before.files
    assert report.written and after.runtime.model_dump() == report.chosen != report.defaults
    props, sched = after.runtime.properties, after.runtime.scheduler
    assert props.get("INFERENCE_NUM_THREADS", 0) in [0, *space["threads"]]
    assert sched["dynamic_split_fuse"] in [before.runtime.scheduler["dynamic_split_fuse"],
                                           *space["dynamic_split_fuse"]]
    assert {k: v for k, v in props.items() if k != "INFERENCE_NUM_THREADS"} == before.runtime.properties
    assert (ov_int8_engine / MANIFEST).read_text() == original_shared  # the copy was tuned, not the cache
    assert not list(engine.parent.glob(".tune-*"))  # the candidates' copies are gone

    # the table: every candidate screened, the choice confirmed against the untuned runtime side by side
    table = report.table()
    screened = {row["config"] for row in table if row["stage"] == "screening"}
    assert screened == {f"threads={v}" for v in space["threads"]} | {"dynamic_split_fuse=False"}
    confirmed = [row for row in table if row["stage"] == "confirmation"]
    assert confirmed and any("chosen" in row["note"] for row in confirmed)
    assert all(row["output_ratio"] > 0 and row["rounds"] >= 2 for row in confirmed)
    assert report.ratio is not None and report.ratio > 0
    assert "side by side" in report.summary()
    saved = json.loads((out / "tune.json").read_text())
    assert saved["chosen"] == report.chosen and (out / "tune.md").read_text().count("| screening |") == 3
    assert (out / "tune.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    # serving loads the tuned runtime: the server's own log of what it compiled the engine with
    from serving.process import run_onramp_serve

    log = tmp_path / "serve.log"
    with run_onramp_serve(["--engine", f"tuned={engine}", "--no-auth"], log=log):
        pass
    line = next(x for x in log.read_text().splitlines() if "engine tuned loaded with" in x)
    threads = props.get("INFERENCE_NUM_THREADS")
    assert (f"INFERENCE_NUM_THREADS={threads}" in line) == (threads is not None)
    assert f"dynamic_split_fuse={sched['dynamic_split_fuse']}" in line

    # the pipeline's step: off with a zero budget, the saved report when this host tuned the build
    # already, and the table and plot in MLflow
    import socket

    from evals.tune import log_to_mlflow, tune_build
    from onramp.settings import load_settings
    from registry.client import Registry

    settings = load_settings()
    assert tune_build(engine, settings, budget_s=0) is None
    save_report(report, settings.home / "evals" / "tune" / f"{after.build_id[:16]}-{socket.gethostname()}")
    assert tune_build(engine, settings, budget_s=60).chosen == report.chosen  # cached: nothing measured
    registry = Registry(settings)
    run_id = log_to_mlflow(registry, report, after.name, after.build_id, out)
    files = {f.path for f in registry.client.list_artifacts(run_id, "tune")}
    assert {"tune/tune.png", "tune/tune.json", "tune/tune.md", "tune/table.json"} <= files


def test_save_report_writes_a_plot_for_rows_without_ratios(engine, tmp_path):
    from evals.tune import Measured, TuneReport

    runtime = read_manifest(engine).runtime.model_dump()
    report = TuneReport(engine_dir=str(engine), host="h", load=TuneLoad(), budget_s=1, seconds=1, defaults=runtime,
                        chosen=runtime, written=False, created="now",
                        rows=[Measured(stage="screening", label="threads=1", runtime=runtime,
                                       note="not measured (budget)")])
    save_report(report, tmp_path)
    assert (tmp_path / "tune.png").is_file() and "manifest unchanged" in (tmp_path / "tune.md").read_text()
