"""PNG plots of a latency report: throughput and TTFT against the request rate."""

from __future__ import annotations

from pathlib import Path

from evals.latency import LatencyReport


def plot_report(report: LatencyReport, out_dir: str | Path) -> dict[str, str]:
    """Two PNGs: throughput (aggregate and per stream) and TTFT against request rate."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    xs = [r.rate for r in report.rates]
    paths = {}

    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(xs, [r.output_tok_s or 0 for r in report.rates], "o-", label="aggregate output tok/s")
    ax.plot(xs, [r.decode_tok_s_p50 or 0 for r in report.rates], "s--", label="per-stream decode p50 tok/s")
    for s in report.slo:
        ax.axhline(s.slo_tok_s, color="grey", lw=0.8, ls=":")
        ax.annotate(f"SLO {s.slo_tok_s:g}", (xs[0], s.slo_tok_s), fontsize=7, color="grey")
    ax.set_xlabel("request rate (req/s, Poisson)")
    ax.set_ylabel("tokens/s")
    ax.set_title(f"{report.model}: throughput vs request rate")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    paths["throughput"] = str(_save(fig, out_dir / "throughput_vs_rate.png"))
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(xs, [r.ttft_p50_s or 0 for r in report.rates], "o-", label="TTFT p50")
    ax.plot(xs, [r.ttft_p99_s or 0 for r in report.rates], "s--", label="TTFT p99")
    ax.set_xlabel("request rate (req/s, Poisson)")
    ax.set_ylabel("seconds")
    ax.set_title(f"{report.model}: time to first token vs request rate")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    paths["ttft"] = str(_save(fig, out_dir / "ttft_vs_rate.png"))
    plt.close(fig)
    return paths


def _save(fig, path: Path) -> Path:
    from onramp.files import atomic_path

    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110)
    return path
