"""The onboard flow's tune step: its table and plot become Prefect artifacts; off, it does nothing.

The build here was "tuned" on this host already (a saved report whose choice is the manifest's
runtime), so the step measures nothing and publishes the saved report.
"""

from __future__ import annotations

import socket

import httpx
from prefect import flow

from builders.manifest import read_manifest
from evals.tune import Measured, TuneLoad, TuneReport, engine_copy, save_report, with_value
from onramp.settings import load_settings


def _artifacts(keys: list[str]) -> dict[str, dict]:
    from prefect.settings import PREFECT_API_URL

    arts = httpx.post(f"{PREFECT_API_URL.value()}/artifacts/latest/filter", timeout=15,
                      json={"artifacts": {"key": {"any_": keys}}, "limit": 10}).json()
    return {a["key"]: a for a in arts}


def test_tune_task_publishes_the_table_and_the_plot(prefect_server, ov_int8_engine, tmp_path, monkeypatch):
    from flows.onboard import tune_task

    untuned = read_manifest(ov_int8_engine).runtime.model_dump()
    tuned = with_value(untuned, "threads", 1)
    engine = engine_copy(ov_int8_engine, tuned, tmp_path / "tunetest--openvino-int8-tp1--0")
    settings = load_settings()
    manifest = read_manifest(engine)
    row = Measured(stage="confirmation", label="tuned: threads=1", runtime=tuned, rounds=2, output_tok_s=12.0,
                   output_ratio=1.1, ttft_ratio=0.9, decode_ratio=1.05, meets_slo=True, note="chosen")
    save_report(TuneReport(engine_dir=str(engine), host=socket.gethostname(), load=TuneLoad(), budget_s=60,
                           seconds=50, defaults=untuned, chosen=tuned, written=True, ratio=1.1, rows=[row],
                           created="now"),
                settings.home / "evals" / "tune" / f"{manifest.build_id[:16]}-{socket.gethostname()}")

    @flow
    def one_step(enabled: bool) -> None:
        tune_task(engine, settings, enabled, layout_key="cpu-int8")

    keys = ["tunetest-tune-cpu-int8", "tunetest-tune-cpu-int8-plot"]
    monkeypatch.setenv("ONRAMP_TUNE_BUDGET_S", "60")
    one_step(False)  # latency off: no tuning, no artifact
    assert not _artifacts(keys)
    one_step(True)
    arts = _artifacts(keys)
    assert arts[keys[0]]["type"] == "table" and "threads=1" in str(arts[keys[0]]["data"])
    assert "data:image/png;base64," in str(arts[keys[1]]["data"])
    assert "1.100x" in arts[keys[0]]["description"]
    assert read_manifest(engine).runtime.model_dump() == tuned  # nothing measured, nothing rewritten
