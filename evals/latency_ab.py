"""Latency of a candidate against production, side by side, as ratios.

A latency number measured in one run never decides against a number measured in another: the
machine's load moves both. Instead both engines are served at once, each by its own
``onramp serve``, and measured in alternating rounds on the same prompts (round r sends the same
seeded prompt set to both; even rounds measure production first, odd rounds the candidate
first, so a drift in load cancels out). Per round and side:

- ``ttft_s``: median time to first token of ``single_requests`` requests sent one after another;
- ``decode_tok_s``: median per-stream decode speed of those requests;
- ``output_tok_s``: aggregate output tokens/s of ``concurrency`` requests sent at once (a closed
  burst, so the number is the server's capacity, not the offered load).

Each round gives a paired ratio candidate / production per metric. Over the rounds the estimate
is the geometric mean of the ratios with a Student-t interval on their logarithms
(:func:`ratio_interval`); the gates (``latency_ab`` in ``evals/gates.yaml``) fail a metric only
when the whole interval is worse than the tolerance. Absolute numbers of both sides stay in the
report (and MLflow), never in a gate.
"""

from __future__ import annotations

import asyncio
import math
import statistics
import time
from collections.abc import Iterator, Mapping
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field

from evals.errors import BenchError
from evals.latency import percentile
from evals.stream import RequestRecord, async_client, chat_payload, check_reachable, make_prompt, stream_chat

#: metric -> which direction is better (the ratio is always candidate / production)
AB_METRICS: dict[str, str] = {"output_tok_s": "higher", "decode_tok_s": "higher", "ttft_s": "lower"}
DEFAULT_CONFIDENCE = 0.90
SIDES = ("production", "candidate")


class ABLoad(BaseModel):
    """How much load one A/B sends: ``rounds`` × (single stream + one burst) per side."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    rounds: int = Field(6, ge=2)
    single_requests: int = Field(2, ge=1)
    concurrency: int = Field(4, ge=1)
    input_tokens: int = Field(128, ge=1)
    output_tokens: int = Field(32, ge=2)
    warmup_requests: int = Field(2, ge=0)
    seed: int = 0
    timeout_s: float = Field(300.0, gt=0)


# Per eval profile. ``quick`` takes about a minute for the reference model on 2 loaded cores.
AB_LOAD: dict[str, ABLoad] = {
    "quick": ABLoad(rounds=6, single_requests=1, concurrency=4, input_tokens=96, output_tokens=24,
                    warmup_requests=1),
    "full": ABLoad(rounds=10, single_requests=3, concurrency=8, input_tokens=700, output_tokens=128),
}


def load_for(profile: str) -> ABLoad:
    return AB_LOAD.get(profile, AB_LOAD["quick"])


@dataclass(frozen=True)
class Endpoint:
    url: str
    model: str
    api_key: str | None = None
    pid: int | None = None  # the server process (its own process group), when serve_pair started it


class SideRound(BaseModel):
    """What one side measured in one round."""

    model_config = ConfigDict(extra="forbid")

    ttft_s: float | None = None
    decode_tok_s: float | None = None
    output_tok_s: float | None = None
    output_tokens: int = 0
    errors: int = 0
    first_error: str | None = None


class ABRound(BaseModel):
    model_config = ConfigDict(extra="forbid")

    index: int
    order: list[str]  # which side was measured first
    production: SideRound
    candidate: SideRound

    def ratio(self, metric: str) -> float | None:
        c, p = getattr(self.candidate, metric), getattr(self.production, metric)
        if c is None or p is None or not (c > 0 and p > 0) or not (math.isfinite(c) and math.isfinite(p)):
            return None
        return c / p


class RatioEstimate(BaseModel):
    """Geometric mean of the per-round ratios and its confidence interval (None: too few rounds)."""

    model_config = ConfigDict(extra="forbid")

    metric: str
    better: str
    rounds: int
    ratio: float | None
    lo: float | None
    hi: float | None
    confidence: float


def ratio_interval(ratios: list[float], confidence: float = DEFAULT_CONFIDENCE
                   ) -> tuple[float | None, float | None, float | None]:
    """``(geometric mean, lower, upper)`` of paired ratios: a two-sided Student-t interval on the mean
    of their logarithms, mapped back. Needs two or more ratios for an interval."""
    logs = [math.log(r) for r in ratios if r is not None and r > 0 and math.isfinite(r)]
    if not logs:
        return None, None, None
    mean = statistics.fmean(logs)
    if len(logs) < 2:
        return math.exp(mean), None, None
    from scipy.stats import t

    half = float(t.ppf((1 + confidence) / 2, len(logs) - 1)) * statistics.stdev(logs) / math.sqrt(len(logs))
    return math.exp(mean), math.exp(mean - half), math.exp(mean + half)


class ABReport(BaseModel):
    model_config = ConfigDict(extra="forbid")

    candidate: str  # a label (engine dir or URL)
    production: str
    load: ABLoad
    rounds: list[ABRound]
    seconds: float
    created: str

    def estimate(self, metric: str, confidence: float = DEFAULT_CONFIDENCE) -> RatioEstimate:
        if metric not in AB_METRICS:
            raise BenchError(f"unknown A/B metric {metric!r}", f"use one of {', '.join(AB_METRICS)}")
        ratios = [q for r in self.rounds if (q := r.ratio(metric)) is not None]
        geo, lo, hi = ratio_interval(ratios, confidence)
        return RatioEstimate(metric=metric, better=AB_METRICS[metric], rounds=len(ratios), ratio=geo, lo=lo, hi=hi,
                             confidence=confidence)

    def median(self, side: str, metric: str) -> float | None:
        values = [v for r in self.rounds if (v := getattr(getattr(r, side), metric)) is not None]
        return statistics.median(values) if values else None

    def errors(self, side: str) -> int:
        return sum(getattr(r, side).errors for r in self.rounds)

    def metrics(self, confidence: float = DEFAULT_CONFIDENCE) -> dict[str, float]:
        """For MLflow: ratios with their bounds, and each side's absolute medians (report only)."""
        out: dict[str, float] = {"ab_rounds": float(len(self.rounds))}
        for metric in AB_METRICS:
            est = self.estimate(metric, confidence)
            for key, value in (("ratio", est.ratio), ("ratio_lo", est.lo), ("ratio_hi", est.hi)):
                if value is not None:
                    out[f"ab_{metric}_{key}"] = value
            for side in SIDES:
                if (m := self.median(side, metric)) is not None:
                    out[f"ab_{side}_{metric}"] = m
        for side in SIDES:
            out[f"ab_{side}_errors"] = float(self.errors(side))
        return out

    def to_markdown(self, confidence: float = DEFAULT_CONFIDENCE) -> str:
        def f(v, spec=".3g"):
            return "–" if v is None else format(v, spec)

        ld = self.load
        lines = ["## Latency A/B: candidate vs production, side by side", "",
                 f"candidate `{self.candidate}` vs production `{self.production}`, each behind its own server, "
                 f"{len(self.rounds)} alternating rounds on the same prompts (~{ld.input_tokens} input / "
                 f"{ld.output_tokens} output tokens; per round and side {ld.single_requests} single-stream "
                 f"requests and a burst of {ld.concurrency}); {self.seconds:.0f} s.", "",
                 f"| metric | better | candidate / production (geo-mean) | {confidence:.0%} interval | rounds | "
                 "production (median) | candidate (median) |", "|---|---|---|---|---|---|---|"]
        for metric in AB_METRICS:
            est = self.estimate(metric, confidence)
            lines.append(f"| {metric} | {est.better} | {f(est.ratio, '.3f')} | [{f(est.lo, '.3f')}, "
                         f"{f(est.hi, '.3f')}] | {est.rounds} | {f(self.median('production', metric))} | "
                         f"{f(self.median('candidate', metric))} |")
        errs = {side: self.errors(side) for side in SIDES}
        if any(errs.values()):
            first = next((getattr(r, s).first_error for r in self.rounds for s in SIDES if getattr(r, s).first_error),
                         None)
            lines += ["", f"Errors: production {errs['production']}, candidate {errs['candidate']} (first: {first})."]
        lines += ["", "Absolute numbers are for the record only: they move with the machine's load; the gate "
                      "judges the ratios."]
        return "\n".join(lines) + "\n"


# ------------------------------------------------------------------------------ measuring

def _prompt_index(load: ABLoad, round_index: int, phase: int, i: int) -> int:
    """The prompt of request ``i`` of a phase of a round: the same for both sides."""
    return 1_000_000 * (1 + load.seed) + 1000 * round_index + 100 * phase + i


async def _single(client, ep: Endpoint, load: ABLoad, round_index: int, tokenizer) -> list[RequestRecord]:
    records = []
    t0 = time.perf_counter()
    for i in range(load.single_requests):
        rec = RequestRecord(sent=time.perf_counter() - t0)
        prompt = make_prompt(_prompt_index(load, round_index, 0, i), load.input_tokens, tokenizer)
        await stream_chat(client, chat_payload(ep.model, prompt, load.output_tokens), rec, t0)
        records.append(rec)
    return records


async def _burst(client, ep: Endpoint, load: ABLoad, round_index: int, tokenizer) -> list[RequestRecord]:
    t0 = time.perf_counter()
    records = [RequestRecord(sent=0.0) for _ in range(load.concurrency)]
    await asyncio.gather(*(
        stream_chat(client, chat_payload(ep.model, make_prompt(_prompt_index(load, round_index, 1, i),
                                                               load.input_tokens, tokenizer), load.output_tokens),
                    rec, t0)
        for i, rec in enumerate(records)))
    return records


def side_round(single: list[RequestRecord], burst: list[RequestRecord]) -> SideRound:
    """One side's numbers for one round (None where every request of a phase failed)."""
    ok_single = [r for r in single if r.error is None and r.done is not None]
    ok_burst = [r for r in burst if r.error is None and r.done is not None]
    failed = [r for r in (*single, *burst) if r.error is not None]
    ttfts = [t for r in ok_single if (t := r.ttft) is not None]
    decode = [d for r in ok_single if (d := r.decode_tok_s) is not None]
    out_tok_s = None
    if ok_burst and len(ok_burst) == len(burst):  # a burst with failures measured less work: not comparable
        span = max(r.done for r in ok_burst) - min(r.sent for r in ok_burst)
        out_tok_s = sum(r.output_tokens for r in ok_burst) / span if span > 0 else None
    return SideRound(ttft_s=percentile(ttfts, 50), decode_tok_s=percentile(decode, 50), output_tok_s=out_tok_s,
                     output_tokens=sum(r.output_tokens for r in (*ok_single, *ok_burst)), errors=len(failed),
                     first_error=failed[0].error if failed else None)


async def _ab(production: Endpoint, candidate: Endpoint, load: ABLoad, tokenizer, progress) -> list[ABRound]:
    eps = {"production": production, "candidate": candidate}
    async with async_client(production.url, production.api_key, load.timeout_s) as pc, \
            async_client(candidate.url, candidate.api_key, load.timeout_s) as cc:
        clients = {"production": pc, "candidate": cc}
        for side in SIDES:  # warm both servers up (first requests compile and allocate)
            for i in range(load.warmup_requests):
                rec = RequestRecord(sent=0.0)
                payload = chat_payload(eps[side].model, make_prompt(900_000 + i, load.input_tokens, tokenizer),
                                       min(8, load.output_tokens))
                await stream_chat(clients[side], payload, rec, time.perf_counter())
        rounds = []
        for r in range(load.rounds):
            order = list(SIDES) if r % 2 == 0 else list(reversed(SIDES))
            singles, bursts = {}, {}
            for side in order:  # single stream: first side, second side
                singles[side] = await _single(clients[side], eps[side], load, r, tokenizer)
            for side in reversed(order):  # burst: second side, first side (ABBA within the round)
                bursts[side] = await _burst(clients[side], eps[side], load, r, tokenizer)
            rounds.append(ABRound(index=r, order=order, **{s: side_round(singles[s], bursts[s]) for s in SIDES}))
            if progress:
                progress(rounds[-1])
    return rounds


def run_ab(candidate: Endpoint, production: Endpoint, load: ABLoad | None = None, *, tokenizer=None,
           candidate_label: str | None = None, production_label: str | None = None,
           progress=None) -> ABReport:
    """Measure two served endpoints in alternating rounds on the same prompts (see the module doc)."""
    load = load or ABLoad()
    for ep in (production, candidate):
        check_reachable(ep.url, ep.api_key)
    started = time.monotonic()
    rounds = asyncio.run(_ab(production, candidate, load, tokenizer, progress))
    report = ABReport(candidate=candidate_label or candidate.url, production=production_label or production.url,
                      load=load, rounds=rounds, seconds=round(time.monotonic() - started, 1),
                      created=datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"))
    if all(r.candidate.errors and r.candidate.output_tokens == 0 for r in rounds) and \
            all(r.production.errors and r.production.output_tokens == 0 for r in rounds):
        first = rounds[0].candidate.first_error if rounds else "no rounds"
        raise BenchError(f"every A/B request failed on both sides: {first}",
                         "check the model names and API keys of both endpoints")
    return report


# ------------------------------------------------------------------------------ serving both engines

@contextmanager
def serve_pair(candidate_dir: Path, production_dir: Path, *, name: str = "model", start_timeout: float = 300.0,
               candidate_env: Mapping[str, str] | None = None, log_dir: Path | None = None
               ) -> Iterator[tuple[Endpoint, Endpoint]]:
    """Both engines behind their own ``onramp serve`` (free loopback ports, auth on with a throw-away
    key) until the block ends; yields ``(candidate, production)`` endpoints. ``candidate_env``
    replaces the candidate server's environment (benchmarks use it to throttle one side)."""
    import tempfile

    from serving.auth import create_key
    from serving.process import ServerStartError, run_onramp_serve

    with tempfile.TemporaryDirectory(prefix="onramp-ab-") as tmp, ExitStack() as stack:
        logs = Path(log_dir) if log_dir else Path(tmp)
        keys = Path(tmp) / "keys.json"
        key = create_key(keys, "latency-ab")
        eps = {}
        for side, engine_dir, env in (("production", production_dir, None),
                                      ("candidate", candidate_dir, candidate_env)):
            try:
                server = stack.enter_context(run_onramp_serve(
                    ["--engine", f"{name}={engine_dir}", "--keys-file", str(keys)], log=logs / f"{side}-serve.log",
                    env=env, timeout=start_timeout))
            except ServerStartError as exc:
                raise BenchError(f"the {side} server for {Path(engine_dir).name} could not start: {exc.what}",
                                 "try `onramp serve --engine NAME=DIR` by hand to see why") from None
            eps[side] = Endpoint(url=server.url, model=name, api_key=key, pid=server.proc.pid)
        yield eps["candidate"], eps["production"]


def ab_engines(candidate_dir: Path, production_dir: Path, load: ABLoad | None = None, *,
               candidate_env: Mapping[str, str] | None = None, candidate_label: str | None = None,
               production_label: str | None = None, progress=None) -> ABReport:
    """Serve both engine directories side by side and run the A/B."""
    with serve_pair(candidate_dir, production_dir, candidate_env=candidate_env) as (cand, prod):
        return run_ab(cand, prod, load, candidate_label=candidate_label or str(candidate_dir),
                      production_label=production_label or str(production_dir), progress=progress)
