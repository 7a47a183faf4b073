"""The tuner's vocabulary and its report: the knobs (numerics-preserving runtime settings), one
measurement's load, the measured rows, the tuning table/markdown and its plot (:mod:`evals.tune`
does the measuring)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

__all__ = ["DECODE_TOLERANCE", "KNOBS", "TTFT_TOLERANCE", "Measured", "TuneLoad", "TuneReport", "describe",
           "implicit", "plot_report", "save_report", "with_value"]

KNOBS: dict[str, tuple[str, str]] = {  # knob -> (runtime section, key)
    "threads": ("properties", "INFERENCE_NUM_THREADS"),
    "cpu_pinning": ("properties", "ENABLE_CPU_PINNING"),
    "max_num_batched_tokens": ("scheduler", "max_num_batched_tokens"),
    "dynamic_split_fuse": ("scheduler", "dynamic_split_fuse"),
    "prefix_caching": ("scheduler", "enable_prefix_caching"),
    "cache_size": ("scheduler", "cache_size"),
    "prompt_lookup": ("decoding", "num_assistant_tokens"),
}
# what a load uses when unset
_IMPLICIT = {"threads": 0, "max_num_batched_tokens": 256, "cpu_pinning": False, "prompt_lookup": 0}
TTFT_TOLERANCE, DECODE_TOLERANCE = 1.25, 0.8


class TuneLoad(BaseModel):
    """One measurement: ``requests`` Poisson arrivals at ``rate`` req/s (above capacity: the
    output tok/s is what the engine can do, TTFT includes the queue)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    rate: float = Field(8.0, gt=0)
    requests: int = Field(6, ge=1)
    input_tokens: int = Field(96, ge=1)
    output_tokens: int = Field(24, ge=2)
    seed: int = 0
    timeout_s: float = Field(300.0, gt=0)


class Measured(BaseModel):
    """One configuration against its stage's baseline over the rounds (ratios: geometric means)."""

    model_config = ConfigDict(extra="forbid")

    stage: str  # screening | confirmation
    label: str
    knob: str | None = None
    value: Any = None
    runtime: dict[str, dict[str, Any]]
    rounds: int = 0
    output_tok_s: float | None = None  # medians over rounds
    ttft_s: float | None = None
    decode_tok_s: float | None = None
    errors: int = 0
    output_ratio: float | None = None
    output_ratio_lo: float | None = None
    output_ratio_hi: float | None = None
    ttft_ratio: float | None = None
    decode_ratio: float | None = None
    meets_slo: bool = False
    note: str = ""


class TuneReport(BaseModel):
    model_config = ConfigDict(extra="forbid")

    engine_dir: str
    host: str
    load: TuneLoad
    budget_s: float
    seconds: float
    defaults: dict[str, dict[str, Any]]
    chosen: dict[str, dict[str, Any]]
    written: bool
    ratio: float | None = None  # chosen / untuned output tok/s, side by side
    ratio_lo: float | None = None
    ratio_hi: float | None = None
    rows: list[Measured]
    plot: str | None = None
    created: str

    def table(self) -> list[dict[str, Any]]:
        """The tuning table (one row per measured configuration): Prefect table artifact, MLflow."""
        def r(v, n=3):
            return None if v is None else round(v, n)
        return [{"stage": m.stage, "config": m.label, "output_tok_s": r(m.output_tok_s, 1),
                 "ttft_p50_s": r(m.ttft_s), "decode_tok_s": r(m.decode_tok_s, 1), "output_ratio": r(m.output_ratio),
                 "ttft_ratio": r(m.ttft_ratio), "decode_ratio": r(m.decode_ratio), "rounds": m.rounds,
                 "errors": m.errors, "meets_slo": m.meets_slo, "note": m.note} for m in self.rows]

    def summary(self) -> str:
        what = describe(self.chosen, self.defaults) or "the untuned runtime"
        ratio = "–" if self.ratio is None else f"{self.ratio:.3f}x"
        interval = "" if self.ratio_lo is None else f" [{self.ratio_lo:.3f}, {self.ratio_hi:.3f}]"
        verdict = "written to the manifest" if self.written else "manifest unchanged"
        return f"tuned: {what}; output tok/s vs untuned, side by side: {ratio}{interval}; {verdict}"

    def to_markdown(self) -> str:
        ld = self.load
        lines = [f"## Tuning: `{Path(self.engine_dir).name}` on {self.host}", "",
                 f"Poisson arrivals at {ld.rate:g} req/s, {ld.requests} requests of ~{ld.input_tokens} input / "
                 f"{ld.output_tokens} output tokens per round and configuration; {self.seconds:.0f} s "
                 f"(budget {self.budget_s:.0f} s). Ratios: against the stage's baseline (screening: the current "
                 "runtime; confirmation: the untuned one), geometric mean over rounds.", "",
                 "| stage | config | output tok/s | TTFT p50 (s) | decode tok/s | output ratio | TTFT ratio | "
                 "decode ratio | rounds | SLO | note |", "|---|---|---|---|---|---|---|---|---|---|---|"]
        for row in self.table():
            cells = ["–" if row[k] is None else str(row[k]) for k in
                     ("stage", "config", "output_tok_s", "ttft_p50_s", "decode_tok_s", "output_ratio", "ttft_ratio",
                      "decode_ratio", "rounds")]
            lines.append("| " + " | ".join(cells) + f" | {'met' if row['meets_slo'] else 'missed'} | {row['note']} |")
        lines += ["", f"**{self.summary()}**"]
        return "\n".join(lines) + "\n"


def describe(runtime: dict[str, dict[str, Any]], base: dict[str, dict[str, Any]]) -> str:
    """``knob=value`` for every knob where ``runtime`` differs from ``base``."""
    parts = []
    for knob, (section, key) in KNOBS.items():
        value = runtime.get(section, {}).get(key, _IMPLICIT.get(knob))
        if value != base.get(section, {}).get(key, _IMPLICIT.get(knob)):
            parts.append(f"{knob}={value}")
    below = runtime.get("decoding", {}).get("lookup_below")
    if below and below != base.get("decoding", {}).get("lookup_below"):
        parts.append(f"lookup_below={below}")
    return ", ".join(parts)


def with_value(runtime: dict[str, dict[str, Any]], knob: str, value: Any) -> dict[str, dict[str, Any]]:
    section, key = KNOBS[knob]
    out = {s: dict(v) for s, v in runtime.items()}
    out.setdefault(section, {})[key] = value
    return out


def implicit(knob: str) -> Any:
    """What a load uses for ``knob`` when the manifest does not say."""
    return _IMPLICIT.get(knob)


def save_report(report: TuneReport, out_dir: Path) -> TuneReport:
    """``tune.json``, ``tune.md`` and ``tune.png`` (the plot) into ``out_dir``."""
    from onramp.files import write_text_atomic

    out_dir.mkdir(parents=True, exist_ok=True)
    report.plot = str(plot_report(report, out_dir / "tune.png"))
    write_text_atomic(out_dir / "tune.md", report.to_markdown())
    write_text_atomic(out_dir / "tune.json", json.dumps(report.model_dump(mode="json"), indent=2))
    return report


def plot_report(report: TuneReport, path: Path) -> Path:
    """Bars: each configuration's output tok/s ratio against its stage's baseline, with the SLO verdict."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [m for m in report.rows if m.output_ratio is not None]
    fig, ax = plt.subplots(figsize=(7, 0.45 * max(len(rows), 2) + 1.2))
    ys = range(len(rows))
    colors = ["tab:green" if m.meets_slo and m.output_ratio > 1 else "tab:grey" if m.meets_slo else "tab:red"
              for m in rows]
    ax.barh(list(ys), [m.output_ratio - 1 for m in rows], left=1, color=colors)
    for y, m in zip(ys, rows, strict=True):
        if m.output_ratio_lo is not None:
            ax.plot([m.output_ratio_lo, m.output_ratio_hi], [y, y], color="black", lw=1)
    ax.axvline(1.0, color="black", lw=0.8)
    ax.set_yticks(list(ys), [f"{m.stage}: {m.label}"[:60] for m in rows], fontsize=7)
    ax.invert_yaxis()
    ax.set_xlabel("output tok/s / baseline (paired rounds, geo-mean; red: SLO missed)", fontsize=8)
    ax.set_title(f"tuning {Path(report.engine_dir).name[:50]}", fontsize=9)
    fig.tight_layout()
    from onramp.files import atomic_path

    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110)
    plt.close(fig)
    return path
