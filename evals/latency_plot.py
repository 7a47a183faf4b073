"""PNG plots of a latency report: throughput and TTFT against the request rate."""

from __future__ import annotations

from pathlib import Path

from evals.latency import LatencyReport
from onramp.files import atomic_path


def plot_report(report: LatencyReport, out_dir: str | Path) -> dict[str, str]:
    """Two PNGs: throughput (aggregate and per stream) and TTFT against request rate."""
    out_dir = Path(out_dir)
    rates = report.rates
    slos = [s.slo_tok_s for s in report.slo]
    return {
        "throughput": str(_plot(rates, out_dir / "throughput_vs_rate.png", "tokens/s",
                                f"{report.model}: throughput vs request rate",
                                {"aggregate output tok/s": [r.output_tok_s for r in rates],
                                 "per-stream decode p50 tok/s": [r.decode_tok_s_p50 for r in rates]}, slos)),
        "ttft": str(_plot(rates, out_dir / "ttft_vs_rate.png", "seconds",
                          f"{report.model}: time to first token vs request rate",
                          {"TTFT p50": [r.ttft_p50_s for r in rates], "TTFT p99": [r.ttft_p99_s for r in rates]})),
    }


def _plot(rates, path: Path, ylabel: str, title: str, series: dict[str, list[float | None]],
          lines: list[float] = ()) -> Path:
    """One line per series (missing values drawn as 0) against the request rate; a dotted SLO line
    for each of ``lines``; written atomically to ``path``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    xs = [r.rate for r in rates]
    fig, ax = plt.subplots(figsize=(6, 4))
    for (label, ys), style in zip(series.items(), ("o-", "s--"), strict=False):
        ax.plot(xs, [y or 0 for y in ys], style, label=label)
    for slo in lines:
        ax.axhline(slo, color="grey", lw=0.8, ls=":")
        ax.annotate(f"SLO {slo:g}", (xs[0], slo), fontsize=7, color="grey")
    ax.set_xlabel("request rate (req/s, Poisson)")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    try:
        with atomic_path(path) as tmp:
            fig.savefig(tmp, dpi=110)
    finally:
        plt.close(fig)
    return path
