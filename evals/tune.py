"""The tuner: pick an engine's runtime configuration for the hardware it runs on (``onramp tune``).

Candidates are runtime settings that do not change what the engine computes, only how fast:
OpenVINO's thread count (``INFERENCE_NUM_THREADS``) and the scheduler's
``max_num_batched_tokens``, dynamic split-fuse, prefix caching and KV cache size (the planner's
KV memory for this host), and prompt-lookup decoding (``runtime.decoding``: drafts checked by the
model itself, so greedy output is the model's own; it pays where outputs repeat their prompt, and
costs where many streams share a step). Inference, activation and KV-cache precision change
numerics: they are a build of their own (``onramp build --runtime-precision bf16``, ``f32-dq32``),
judged by the quality gates like any layout, never a tuner choice.

Method (the seed's Poisson arrivals, :mod:`evals.latency`, at a small load):

1. *Screening*: one ``onramp serve`` holds the current runtime (the baseline) and one copy of
   the engine per candidate value, each differing from the baseline in one knob (hard-linked
   files, own manifest). In each round every copy gets the same seeded Poisson schedule; the
   order rotates per round (and reverses every other round) so a drift in the machine's load
   hits all. A value wins its knob when its paired output tok/s ratio against the baseline
   (geometric mean over rounds) is at least ``1 + min_gain`` and it meets the latency SLOs.
2. *Confirmation*: a second server holds the untuned runtime, the combination of the winners
   and the best single winner; the best of those beating the untuned runtime side by side
   (ratio > 1, SLOs met) is written into the manifest (atomically). Else nothing changes.

SLOs: per-stream decode speed and TTFT p50 relative to the baseline (the latency A/B gate's
tolerances: decode >= 0.8x, TTFT <= 1.25x), plus optional absolute ones.
"""

from __future__ import annotations

import asyncio
import os
import statistics
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from evals.errors import BenchError
from evals.tune_report import (DECODE_TOLERANCE, KNOBS, TTFT_TOLERANCE, Measured, TuneLoad, TuneReport, describe,
                               implicit, save_report, with_value)

__all__ = ["BUDGET_ENV", "DECODE_TOLERANCE", "KNOBS", "TTFT_TOLERANCE", "Measured", "TuneLoad", "TuneReport",
           "candidate_values", "describe", "engine_copy", "log_to_mlflow", "run_stage", "save_report", "serve_configs",
           "tune", "tune_build", "with_value"]


def _kv_cache_gb(engine_dir: Path, manifest) -> int | None:
    """The planner's KV cache for this host's memory (whole GB, at most half of what is free now)."""
    from builders.facts import facts_from_config, read_config
    from builders.planner import plan

    try:
        pages, page = os.sysconf("SC_PHYS_PAGES"), os.sysconf("SC_PAGE_SIZE")
        avail = os.sysconf("SC_AVPHYS_PAGES") * page
        option = plan(facts_from_config(read_config(engine_dir)), "cpu", memory_gib=pages * page / 2**30).option(
            1, manifest.layout.quantization)
    except Exception:  # noqa: BLE001 - no config.json, an unknown architecture: no candidate
        return None
    return max(1, int(min(option.kv_gib, avail / 2**30 / 2))) if option.feasible else None


def candidate_values(engine_dir: Path, runtime: dict[str, dict[str, Any]], *, cores: int | None = None
                     ) -> dict[str, list[Any]]:
    """Per knob, the values to try besides the current one (numerics-preserving settings only)."""
    from builders.manifest import read_manifest
    from builders.ov_runtime import PROMPT_LOOKUP_TOKENS

    cores = cores or os.cpu_count() or 1
    current = {k: runtime.get(s, {}).get(key, implicit(k)) for k, (s, key) in KNOBS.items()}
    space: dict[str, list[Any]] = {
        "threads": sorted({1, max(1, cores // 2), cores}),
        "cpu_pinning": [True, False],  # unpinned is the load default (builders.ov_runtime.CPU_LOAD_DEFAULTS)
        "max_num_batched_tokens": [512, 2048],
        "dynamic_split_fuse": [True, False],
        "prefix_caching": [True, False],
        "cache_size": [v] if (v := _kv_cache_gb(engine_dir, read_manifest(engine_dir))) else [],
        "prompt_lookup": [0, PROMPT_LOOKUP_TOKENS],  # draft tokens per step (0: off)
    }
    return {k: [v for v in vals if v != current[k]] for k, vals in space.items()}


def engine_copy(engine_dir: Path, runtime: dict[str, dict[str, Any]], dest: Path) -> Path:
    """``dest``: the engine's files as hard links (copies across devices) and a manifest with ``runtime``."""
    import shutil

    from builders.manifest import Runtime, read_manifest, write_manifest

    manifest = read_manifest(engine_dir)
    for rel in manifest.files:
        target = dest / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.link(engine_dir / rel, target)
        except OSError:
            shutil.copy2(engine_dir / rel, target)
    write_manifest(dest, manifest.model_copy(update={"runtime": Runtime.model_validate(runtime)}))
    return dest


@contextmanager
def serve_configs(engine_dir: Path, configs: dict[str, dict], log_dir: Path) -> Iterator[tuple[str, str]]:
    """One ``onramp serve`` with a copy of the engine per configuration (served as its label);
    yields ``(url, api key)``. Copies live next to the engine (hard links) and go at the end."""
    from serving.auth import create_key
    from serving.process import ServerStartError, run_onramp_serve

    with tempfile.TemporaryDirectory(prefix=".tune-", dir=engine_dir.parent) as tmp:
        args = []
        for label, runtime in configs.items():
            args += ["--engine", f"{label}={engine_copy(engine_dir, runtime, Path(tmp) / label)}"]
        key = create_key(Path(tmp) / "keys.json", "tune")
        try:
            with run_onramp_serve([*args, "--keys-file", str(Path(tmp) / "keys.json")],
                                  log=log_dir / f"tune-serve-{len(configs)}.log") as server:
                yield server.url, key
        except ServerStartError as exc:
            raise BenchError(f"the tuning server for {engine_dir.name} could not start: {exc.what}",
                             f"try `onramp serve --engine NAME={engine_dir}` by hand to see why") from None


def _measure(url: str, key: str, label: str, load: TuneLoad, round_index: int) -> dict[str, float | None]:
    from evals.latency import poisson_arrivals, run_schedule, summarize

    arrivals = poisson_arrivals(load.rate, load.requests, seed=load.seed + round_index)
    records = asyncio.run(run_schedule(url, label, arrivals, input_tokens=load.input_tokens,
                                       output_tokens=load.output_tokens, api_key=key, timeout=load.timeout_s,
                                       tokenizer=None, index0=10_000 * (round_index + 1)))
    s = summarize(records)
    return {"output_tok_s": s.output_tok_s if not s.errors else None, "ttft_s": s.ttft_p50_s,
            "decode_tok_s": s.decode_tok_s_p50, "errors": float(s.errors)}


def run_stage(engine_dir: Path, configs: dict[str, dict], load: TuneLoad, *, min_rounds: int, max_rounds: int,
              budget_s: float, log_dir: Path, progress: Callable[[str], None]) -> dict[str, list[dict]]:
    """Rounds over every configuration (first one: the baseline) for ``budget_s`` of measuring once
    the server is up (at least ``min_rounds``): per label, one dict of numbers per round."""
    labels = list(configs)
    out: dict[str, list[dict]] = {label: [] for label in labels}
    t0 = time.monotonic()
    with serve_configs(engine_dir, configs, log_dir) as (url, key):
        progress(f"  server with {len(labels)} engine copies ready in {time.monotonic() - t0:.0f} s")
        for label in labels:  # warm-up: first requests compile and allocate
            _measure(url, key, label, load.model_copy(update={"requests": 1, "output_tokens": 4}), 999)
        deadline = time.monotonic() + budget_s
        for r in range(max_rounds):
            started = time.monotonic()
            order = labels[r % len(labels):] + labels[:r % len(labels)]
            for label in (order if r % 2 == 0 else order[::-1]):
                if r == 0 and label != labels[0] and time.monotonic() > deadline:
                    labels.remove(label)  # out of budget: not measured (its row says so)
                    continue
                if label in labels:
                    out[label].append(_measure(url, key, label, load, r))
            progress(f"  round {r + 1}: {len(labels)} configurations, {time.monotonic() - started:.0f} s")
            if r + 1 >= min_rounds and time.monotonic() + (time.monotonic() - started) > deadline:
                break
    return out


def _compare(stage: str, label: str, runtime: dict, samples: list[dict], base: list[dict], slos: dict[str, Any],
             knob: str | None = None, value: Any = None) -> Measured:
    from evals.latency_ab import ratio_interval

    def med(metric, rows):
        vals = [v for row in rows if (v := row[metric]) is not None]
        return statistics.median(vals) if vals else None

    def paired(metric):
        return [a[metric] / b[metric] for a, b in zip(samples, base, strict=True)
                if a[metric] and b[metric]]

    geo, lo, hi = ratio_interval(paired("output_tok_s"))
    ttft, decode = ratio_interval(paired("ttft_s"))[0], ratio_interval(paired("decode_tok_s"))[0]
    m = Measured(stage=stage, label=label, knob=knob, value=value, runtime=runtime, rounds=len(samples),
                 output_tok_s=med("output_tok_s", samples), ttft_s=med("ttft_s", samples),
                 decode_tok_s=med("decode_tok_s", samples), errors=int(sum(s["errors"] for s in samples)),
                 output_ratio=geo, output_ratio_lo=lo, output_ratio_hi=hi, ttft_ratio=ttft, decode_ratio=decode)
    misses = []
    slo_ttft_s, slo_decode_tok_s = slos["ttft_s"], slos["decode_tok_s"]
    if m.errors or geo is None:
        misses.append(f"{m.errors} errors")
    if ttft is not None and ttft > slos["ttft_tolerance"]:
        misses.append(f"TTFT x{ttft:.2f}")
    if decode is not None and decode < slos["decode_tolerance"]:
        misses.append(f"decode x{decode:.2f}")
    if slo_ttft_s is not None and (m.ttft_s is None or m.ttft_s > slo_ttft_s):
        misses.append(f"TTFT > {slo_ttft_s:g} s")
    if slo_decode_tok_s is not None and (m.decode_tok_s is None or m.decode_tok_s < slo_decode_tok_s):
        misses.append(f"decode < {slo_decode_tok_s:g} tok/s")
    m.meets_slo, m.note = not misses, "; ".join(misses)
    return m


# prompt lookup as the tuner writes it: load-adaptive, drafting only while fewer requests than this run
# (builders.ov_runtime, serving.engines.ov_loop); drafting always cost 0.83x output tok/s at c=16 on the bare
# int8 f32-dq32 engine, adaptive 1.0x there and 1.39x at c=1 (README, Builders, "Tuning")
LOOKUP_BELOW = 2


def candidate_runtime(runtime: dict[str, dict[str, Any]], knob: str, value: Any,
                      lookup_below: int = LOOKUP_BELOW) -> dict[str, dict[str, Any]]:
    """``runtime`` with ``knob`` set to ``value``; prompt lookup on comes with ``lookup_below`` (0: drafts always)."""
    out = with_value(runtime, knob, value)
    if knob == "prompt_lookup":
        out["decoding"].pop("lookup_below", None)
        if value and lookup_below > 0:
            out["decoding"]["lookup_below"] = int(lookup_below)
    return out


def tune(engine_dir: Path | str, *, budget_s: float = 120.0, knobs: list[str] | None = None,
         load: TuneLoad | None = None, min_gain: float = 0.02, slo_ttft_s: float | None = None,
         slo_decode_tok_s: float | None = None, ttft_tolerance: float = TTFT_TOLERANCE,
         decode_tolerance: float = DECODE_TOLERANCE, max_rounds: int = 6, write: bool = True,
         out_dir: Path | None = None, cores: int | None = None, lookup_below: int = LOOKUP_BELOW,
         progress: Callable[[str], None] | None = None) -> TuneReport:
    """Measure the candidates, keep the best that beats the untuned runtime side by side (output
    tok/s ratio >= ``1 + min_gain``, SLOs met), write it into the manifest (unless ``write=False``);
    report, table and plot into ``out_dir``."""
    import socket

    from builders.manifest import MANIFEST, read_manifest
    from onramp.files import write_text_atomic

    say = progress or (lambda msg: None)
    engine_dir, load = Path(engine_dir).resolve(), load or TuneLoad()
    manifest = read_manifest(engine_dir)
    if manifest.backend != "openvino":
        raise BenchError(f"{engine_dir.name} is a {manifest.backend} engine; the tuner knows OpenVINO's settings",
                         "tune an OpenVINO engine (onramp build --backend openvino)")
    unknown = sorted(set(knobs or ()) - set(KNOBS))
    if unknown:
        raise BenchError(f"unknown knob(s) {', '.join(unknown)}", f"pick from {', '.join(KNOBS)}")
    slos = {"ttft_s": slo_ttft_s, "decode_tok_s": slo_decode_tok_s, "ttft_tolerance": ttft_tolerance,
            "decode_tolerance": decode_tolerance}
    started = time.monotonic()
    defaults = manifest.runtime.model_dump()
    space = {k: v for k, v in candidate_values(engine_dir, defaults, cores=cores).items()
             if v and (not knobs or k in knobs)}
    configs = {"c0": defaults}
    meta: dict[str, tuple[str, Any]] = {}
    for knob, values in space.items():
        for value in values:
            label = f"c{len(configs)}"
            configs[label], meta[label] = candidate_runtime(defaults, knob, value, lookup_below), (knob, value)
    log_dir = Path(out_dir) if out_dir else Path(tempfile.mkdtemp(prefix="onramp-tune-"))
    rows: list[Measured] = []
    winners: list[Measured] = []
    if len(configs) > 1:
        say(f"screening {len(configs) - 1} candidates against the current runtime: "
            + ", ".join(f"{k}={v}" for k, v in meta.values()))
        samples = run_stage(engine_dir, configs, load, min_rounds=1, max_rounds=min(3, max_rounds),
                            budget_s=0.5 * budget_s, log_dir=log_dir, progress=say)
        for label, (knob, value) in meta.items():
            if not samples[label]:
                rows.append(Measured(stage="screening", label=f"{knob}={value}", knob=knob, value=value,
                                     runtime=configs[label], note="not measured (budget)"))
                continue
            rows.append(_compare("screening", f"{knob}={value}", configs[label], samples[label], samples["c0"],
                                 slos, knob, value))
        for knob in space:
            ok = [m for m in rows if m.knob == knob and m.meets_slo and m.output_ratio >= 1 + min_gain]
            if ok:
                winners.append(max(ok, key=lambda m: m.output_ratio))
    final = {"untuned": defaults}
    if winners:
        combined = defaults
        for w in winners:
            combined = candidate_runtime(combined, w.knob, w.value, lookup_below)
        final["tuned"] = combined
        best = max(winners, key=lambda m: m.output_ratio)
        if len(winners) > 1:
            final["best-single"] = best.runtime
    chosen, ratio = defaults, (None, None, None)
    if len(final) > 1:
        say("confirming against the untuned runtime: " + "; ".join(
            f"{k}: {describe(v, defaults)}" for k, v in final.items() if k != "untuned"))
        samples = run_stage(engine_dir, final, load, min_rounds=2, max_rounds=max(2, max_rounds),
                            budget_s=0.5 * budget_s, log_dir=log_dir, progress=say)
        confirmed = [_compare("confirmation", f"{k}: {describe(v, defaults)}", v, samples[k], samples["untuned"],
                              slos) for k, v in final.items() if k != "untuned"]
        rows += confirmed
        good = [m for m in confirmed if m.meets_slo and m.output_ratio >= 1 + min_gain]
        if good:
            pick = max(good, key=lambda m: m.output_ratio)
            chosen, ratio = pick.runtime, (pick.output_ratio, pick.output_ratio_lo, pick.output_ratio_hi)
            pick.note = (pick.note + "; " if pick.note else "") + "chosen"
    elif len(configs) > 1:
        say("no candidate beat the current runtime in screening")
    written = False
    if write and chosen != defaults:
        now = read_manifest(engine_dir)
        if now.runtime.model_dump() != defaults:
            raise BenchError(f"the manifest of {engine_dir.name} changed while it was being tuned",
                             "run onramp tune again")
        write_text_atomic(engine_dir / MANIFEST, now.model_copy(update={"runtime": type(now.runtime)
                                                                        .model_validate(chosen)}).to_json())
        written = True
    report = TuneReport(engine_dir=str(engine_dir), host=socket.gethostname(), load=load, budget_s=budget_s,
                        seconds=round(time.monotonic() - started, 1), defaults=defaults, chosen=chosen,
                        written=written, ratio=ratio[0], ratio_lo=ratio[1], ratio_hi=ratio[2], rows=rows,
                        created=datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"))
    if out_dir is not None:
        save_report(report, Path(out_dir))
    return report


BUDGET_ENV = "ONRAMP_TUNE_BUDGET_S"


def tune_build(engine_dir: Path | str, settings, *, record: bool = True, budget_s: float | None = None
               ) -> TuneReport | None:
    """The pipeline's tune step: tune a fresh OpenVINO build once per (build, host) within
    ``ONRAMP_TUNE_BUDGET_S`` (default 120; 0: off), keep the report under
    ``$ONRAMP_HOME/evals/tune/`` and (``record``) in an MLflow run of its own (table, plot).
    None when off or its backend is not ``tunable``; the saved report when this host tuned it already."""
    import socket

    from builders.backends import get_backend
    from builders.manifest import read_manifest

    budget_s = float(os.environ.get(BUDGET_ENV) or 120) if budget_s is None else budget_s
    manifest = read_manifest(Path(engine_dir))
    if budget_s <= 0 or not getattr(get_backend(manifest.backend), "tunable", False):
        return None
    out_dir = Path(settings.home) / "evals" / "tune" / f"{manifest.build_id[:16]}-{socket.gethostname()}"
    if (out_dir / "tune.json").is_file():
        saved = TuneReport.model_validate_json((out_dir / "tune.json").read_text())
        if saved.chosen == manifest.runtime.model_dump():
            return saved
    report = tune(engine_dir, budget_s=budget_s, out_dir=out_dir)
    if record:
        from registry.client import Registry

        log_to_mlflow(Registry(settings), report, manifest.name, manifest.build_id, out_dir)
    return report


def log_to_mlflow(registry, report: TuneReport, name: str, build_id: str, out_dir: Path) -> str:
    """An MLflow run ``tune NAME BUILD`` (kind ``tune``) with the ratio, the table and the report files."""
    run = registry.start_run(f"tune {name} {build_id[:12]}", params={
        "build_id": build_id, "budget_s": report.budget_s,
        "chosen": describe(report.chosen, report.defaults) or "untuned"}, tags={"onramp.kind": "tune",
                                                                                 "host": report.host})
    run.log_metrics({"tune_output_tok_s_ratio": report.ratio, "tune_seconds": report.seconds})
    run.log_dict({"table": report.table()}, "tune/table.json")
    run.log_artifact(out_dir, "tune")
    run.end("FINISHED")
    return run.run_id
