"""Latency with the seed's method (pplx-api): single stream, then Poisson arrivals at a sweep of rates.

One asyncio process streams chat completions over HTTP (server-sent events) with httpx; the
client stays light so it does not steal the CPU the server needs. For each request it records
the time to first token (TTFT), the gaps between streamed tokens (inter-token latency, ITL)
and the per-stream decode speed ((tokens - 1) / (last token - first token)). Per rate it reports
TTFT p50/p99, ITL p50/p99, per-stream decode speed and aggregate output tokens/s; over the
sweep, the highest aggregate throughput at which the median per-stream decode speed still meets
each SLO (the seed: 60 and 80 tok/s on A100).

Arrivals: exponential inter-arrival times with a seeded RNG (a Poisson process), bounded by a
request count and a duration per rate. Requests ask for ``max_tokens`` = the output length and
send ``ignore_eos`` (servers that do not know it ignore it); the report gives the lengths that
were actually produced.
"""

from __future__ import annotations

import asyncio
import math
import random
import statistics
import time
from datetime import datetime, UTC
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field

from evals.errors import BenchError
from evals.stream import RequestRecord, async_client, chat_payload, check_reachable, make_prompt, stream_chat

DEFAULT_RATES = (0.5, 1.0, 2.0, 4.0)
DEFAULT_SLOS = (60.0, 80.0)


def percentile(values: list[float], q: float) -> float | None:
    """Linear-interpolated percentile (q in 0..100); None for no values."""
    if not values:
        return None
    ordered = sorted(values)
    pos = (len(ordered) - 1) * q / 100
    lo, hi = math.floor(pos), math.ceil(pos)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo)


def poisson_arrivals(rate: float, n: int, *, seed: int = 0, max_duration_s: float | None = None) -> list[float]:
    """Arrival times (s from 0) of a Poisson process at ``rate`` req/s: at most ``n``, all < duration."""
    if rate <= 0 or not math.isfinite(rate):
        raise BenchError(f"request rate {rate} is not a positive number", "pass --rates with values > 0")
    rng = random.Random(seed)
    times, t = [], 0.0
    while len(times) < n:
        t += rng.expovariate(rate)
        if max_duration_s is not None and t >= max_duration_s:
            break
        times.append(t)
    return times


_LATENCY_METRICS = ("single_ttft_s", "single_decode_tok_s", "ttft_p99_s", "max_throughput_at_slo")


def is_latency_metric(name: str) -> bool:
    """Whether ``name`` is a latency number (LatencyReport.metrics() or the A/B's ``ab_*``): such a
    number moves with the machine's load and never decides against one measured in another run."""
    return name.startswith(("ab_", "max_throughput_at_slo")) or name in _LATENCY_METRICS


class Stats(BaseModel):
    """Statistics over the requests of one scenario."""

    model_config = ConfigDict(extra="forbid")

    requests: int
    completed: int
    errors: int
    first_error: str | None = None
    duration_s: float
    ttft_p50_s: float | None = None
    ttft_p99_s: float | None = None
    itl_p50_s: float | None = None
    itl_p99_s: float | None = None
    decode_tok_s_p50: float | None = Field(None, description="per-stream decode speed, median over requests")
    decode_tok_s_p10: float | None = Field(None, description="per-stream decode speed, 10th percentile")
    output_tok_s: float | None = Field(None, description="aggregate output tokens/s over the scenario")
    request_throughput: float | None = None
    mean_output_tokens: float | None = None
    mean_prompt_tokens: float | None = None


class RateResult(Stats):
    rate: float


class SloResult(BaseModel):
    model_config = ConfigDict(extra="forbid")

    slo_tok_s: float
    max_output_tok_s: float | None = Field(None, description="None: no rate met the SLO")
    at_rate: float | None = None


class LatencyReport(BaseModel):
    model_config = ConfigDict(extra="forbid")

    url: str
    model: str
    input_tokens: int
    output_tokens: int
    seed: int
    single: Stats | None
    rates: list[RateResult]
    slo: list[SloResult]
    plots: dict[str, str] = Field(default_factory=dict)
    created: str

    def metrics(self) -> dict[str, float]:
        out: dict[str, float] = {}
        if self.single is not None:
            if self.single.ttft_p50_s is not None:
                out["single_ttft_s"] = self.single.ttft_p50_s
            if self.single.decode_tok_s_p50 is not None:
                out["single_decode_tok_s"] = self.single.decode_tok_s_p50
        p99s = [r.ttft_p99_s for r in self.rates if r.ttft_p99_s is not None]
        if p99s:
            out["ttft_p99_s"] = max(p99s)
        for i, s in enumerate(self.slo):
            value = s.max_output_tok_s or 0.0
            out[f"max_throughput_at_slo_{s.slo_tok_s:g}"] = value
            if i == 0:
                out["max_throughput_at_slo"] = value
        return out

    def to_markdown(self) -> str:
        def f(v, spec=".3g"):
            return "–" if v is None else format(v, spec)

        lines = [f"## Latency: `{self.model}` at {self.url}", "",
                 f"~{self.input_tokens} input / {self.output_tokens} output tokens per request; Poisson arrivals, "
                 f"seed {self.seed}.", ""]
        if self.single is not None:
            s = self.single
            lines += [f"Single stream ({s.completed} requests): TTFT p50 {f(s.ttft_p50_s)} s, decode "
                      f"{f(s.decode_tok_s_p50)} tok/s, ITL p50 {f(s.itl_p50_s)} s.", ""]
        lines += ["| rate (req/s) | done/sent | TTFT p50 (s) | TTFT p99 (s) | ITL p50 (s) | ITL p99 (s) | "
                  "decode/stream p50 (tok/s) | output tok/s |", "|---|---|---|---|---|---|---|---|"]
        for r in self.rates:
            lines.append(f"| {r.rate:g} | {r.completed}/{r.requests} | {f(r.ttft_p50_s)} | {f(r.ttft_p99_s)} | "
                         f"{f(r.itl_p50_s)} | {f(r.itl_p99_s)} | {f(r.decode_tok_s_p50)} | {f(r.output_tok_s)} |")
        lines.append("")
        for s in self.slo:
            if s.max_output_tok_s is None:
                lines.append(f"- SLO {s.slo_tok_s:g} tok/s per stream: met at no swept rate")
            else:
                lines.append(f"- SLO {s.slo_tok_s:g} tok/s per stream: max {s.max_output_tok_s:.1f} output tok/s "
                             f"(at {s.at_rate:g} req/s)")
        for name, path in self.plots.items():
            lines.append(f"- plot {name}: `{path}`")
        return "\n".join(lines) + "\n"


def summarize(records: list[RequestRecord], duration_s: float | None = None) -> Stats:
    ok = [r for r in records if r.error is None and r.done is not None]
    errors = [r for r in records if r.error is not None]
    ttfts = [r.ttft for r in ok if r.ttft is not None]
    itls = [gap for r in ok for gap in r.itls]
    decode = [d for r in ok if (d := r.decode_tok_s) is not None]
    if duration_s is None:
        starts = [r.sent for r in records]
        ends = [r.done for r in ok]
        duration_s = (max(ends) - min(starts)) if ends else 0.0
    total_out = sum(r.output_tokens for r in ok)
    prompts = [r.prompt_tokens for r in ok if r.prompt_tokens]
    return Stats(
        requests=len(records), completed=len(ok), errors=len(errors),
        first_error=errors[0].error if errors else None, duration_s=round(duration_s, 3),
        ttft_p50_s=percentile(ttfts, 50), ttft_p99_s=percentile(ttfts, 99),
        itl_p50_s=percentile(itls, 50), itl_p99_s=percentile(itls, 99),
        decode_tok_s_p50=percentile(decode, 50), decode_tok_s_p10=percentile(decode, 10),
        output_tok_s=total_out / duration_s if duration_s > 0 and ok else None,
        request_throughput=len(ok) / duration_s if duration_s > 0 and ok else None,
        mean_output_tokens=statistics.fmean(r.output_tokens for r in ok) if ok else None,
        mean_prompt_tokens=statistics.fmean(prompts) if prompts else None,
    )


def slo_results(rates: list[RateResult], slos: tuple[float, ...] | list[float]) -> list[SloResult]:
    """Per SLO: the highest aggregate output tok/s among rates whose median per-stream decode meets it."""
    out = []
    for slo in slos:
        meeting = [r for r in rates if r.completed and r.errors == 0 and r.decode_tok_s_p50 is not None
                   and r.decode_tok_s_p50 >= slo and r.output_tok_s is not None]
        best = max(meeting, key=lambda r: r.output_tok_s, default=None)
        out.append(SloResult(slo_tok_s=slo, max_output_tok_s=best.output_tok_s if best else None,
                             at_rate=best.rate if best else None))
    return out


async def run_schedule(url: str, model: str, arrivals: list[float], *, input_tokens: int, output_tokens: int,
                       api_key: str | None, timeout: float, tokenizer, index0: int = 0) -> list[RequestRecord]:
    """Send one request at each arrival time (a zero-gap schedule means one after another if serial)."""
    async with async_client(url, api_key, timeout) as client:
        t0 = time.perf_counter()
        tasks, records = [], []
        for i, at in enumerate(arrivals):
            delay = at - (time.perf_counter() - t0)
            if delay > 0:
                await asyncio.sleep(delay)
            rec = RequestRecord(sent=time.perf_counter() - t0)
            records.append(rec)
            payload = chat_payload(model, make_prompt(index0 + i, input_tokens, tokenizer), output_tokens)
            tasks.append(asyncio.create_task(stream_chat(client, payload, rec, t0)))
        await asyncio.gather(*tasks)
    return records


async def _serial(url: str, model: str, n: int, *, input_tokens: int, output_tokens: int, api_key: str | None,
                  timeout: float, tokenizer, index0: int = 0) -> list[RequestRecord]:
    records = []
    async with async_client(url, api_key, timeout) as client:
        t0 = time.perf_counter()
        for i in range(n):
            rec = RequestRecord(sent=time.perf_counter() - t0)
            await stream_chat(client, chat_payload(model, make_prompt(index0 + i, input_tokens, tokenizer),
                                                   output_tokens), rec, t0)
            records.append(rec)
    return records


def _load_tokenizer(tokenizer):
    if tokenizer is None or not isinstance(tokenizer, (str, Path)):
        return tokenizer
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tokenizer)


def single_stream(url: str, model: str, *, requests: int = 5, input_tokens: int = 700, output_tokens: int = 550,
                  api_key: str | None = None, timeout: float = 600.0, tokenizer=None) -> Stats:
    """One request after another: TTFT and decode speed without contention."""
    if requests < 1:
        raise BenchError(f"single stream needs at least one request (got {requests})", "pass --single 1 or more")
    check_reachable(url, api_key)
    records = asyncio.run(_serial(url, model, requests, input_tokens=input_tokens, output_tokens=output_tokens,
                                  api_key=api_key, timeout=timeout, tokenizer=_load_tokenizer(tokenizer)))
    return summarize(records)


def run_sweep(url: str, model: str, rates: list[float] | tuple[float, ...] = DEFAULT_RATES, *,
              input_tokens: int = 700, output_tokens: int = 550, requests_per_rate: int = 32,
              max_duration_s: float = 120.0, slo_tok_s: list[float] | tuple[float, ...] = DEFAULT_SLOS,
              single_requests: int = 3, warmup_requests: int = 1, seed: int = 0, api_key: str | None = None,
              timeout: float = 600.0, tokenizer=None, plots_dir: str | Path | None = None) -> LatencyReport:
    """Single stream, then the Poisson sweep; optional PNG plots into ``plots_dir``."""
    rates = [float(r) for r in rates]
    if not rates:
        raise BenchError("no request rates given", "pass --rates, e.g. --rates 0.5,1,2")
    for r in rates:
        poisson_arrivals(r, 0)  # validates the rate
    if requests_per_rate < 1:
        raise BenchError(f"requests per rate must be >= 1 (got {requests_per_rate})", "pass --requests 1 or more")
    check_reachable(url, api_key)
    tok = _load_tokenizer(tokenizer)
    kw = dict(input_tokens=input_tokens, output_tokens=output_tokens, api_key=api_key, timeout=timeout, tokenizer=tok)
    if warmup_requests:
        asyncio.run(_serial(url, model, warmup_requests, **{**kw, "output_tokens": min(8, output_tokens)},
                            index0=10_000))
    single = summarize(asyncio.run(_serial(url, model, single_requests, **kw, index0=20_000))) \
        if single_requests else None
    results = []
    for i, rate in enumerate(sorted(rates)):
        arrivals = poisson_arrivals(rate, requests_per_rate, seed=seed + i, max_duration_s=max_duration_s)
        if not arrivals:
            arrivals = [0.0]
        records = asyncio.run(run_schedule(url, model, arrivals, **kw, index0=1000 * (i + 1)))
        results.append(RateResult(rate=rate, **summarize(records).model_dump()))
    if all(r.completed == 0 for r in results) and (single is None or single.completed == 0):
        first = next((r.first_error for r in results if r.first_error), "no response")
        raise BenchError(f"every benchmark request to {url} failed: {first}",
                         "check --model (GET /v1/models lists them) and the API key (--api-key)")
    report = LatencyReport(url=url, model=model, input_tokens=input_tokens, output_tokens=output_tokens, seed=seed,
                           single=single, rates=results, slo=slo_results(results, slo_tok_s),
                           created=datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"))
    if plots_dir is not None:
        from evals.latency_plot import plot_report

        report.plots = plot_report(report, plots_dir)
    return report
