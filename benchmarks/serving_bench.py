"""Serving benchmark: the HTTP server vs the same engine driven in-process.

For each concurrency level (closed loop: N clients, each sending its next request when the last
one ends) it prints aggregate output tokens/s, TTFT p50/p99 and per-stream decode speed, first
with the engine class driven directly in this process, then through `onramp serve` (a
subprocess) with one light asyncio httpx client streaming /v1/chat/completions. Every request
generates exactly --max-tokens tokens (ignore_eos), so both modes do the same work.

    .venv/bin/python benchmarks/serving_bench.py [--engine DIR] [--concurrency 1,4,16]
        [--max-tokens 128] [--rounds 3] [--repeat 1] [--mode both|inproc|server] [--against CHECKOUT] [--raw]

``--against CHECKOUT`` (another git worktree or a copy of the repository, e.g. ``git archive main``
unpacked) runs a second `onramp serve` from that checkout's code beside this one's (mode server),
alternating the two round by round at each level, and prints this checkout's server over that
one's: per-stream decode tok/s and throughput, median of the per-round ratios. That is how a change
to the engine loop is measured on a machine whose background load drifts.

``--raw`` adds, at concurrency 1, OpenVINO without onramp in this process, in the same alternation:
``openvino_genai.LLMPipeline.generate`` and a bare ``ContinuousBatchingPipeline`` step loop, both
with the engine's recorded properties and scheduler settings, and prints the server's per-stream
decode speed over the bare step loop's (what the engine loop, HTTP and SSE cost).

Without --engine it uses (building it once if needed) the reference model's int8 OpenVINO engine
in the test cache.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

MESSAGES = [{"role": "user", "content": "Tell me a long story about a robot who learns to paint."}]


@dataclass
class Sample:
    ttft: float
    total: float
    tokens: int

    @property
    def decode_tps(self) -> float:  # per-stream decode speed after the first token
        return (self.tokens - 1) / (self.total - self.ttft) if self.total > self.ttft and self.tokens > 1 else 0.0


@dataclass
class Level:
    concurrency: int
    wall: float
    samples: list[Sample]
    cpu: dict[str, float] | None = None  # CPU seconds used during the level, by process

    @property
    def throughput(self) -> float:
        return sum(s.tokens for s in self.samples) / self.wall

    def pct(self, q: float) -> float:
        values = sorted(s.ttft for s in self.samples)
        return values[min(len(values) - 1, int(round(q * (len(values) - 1))))]


def _cpu(procs: dict) -> dict[str, float]:
    out = {}
    for name, p in procs.items():
        t = p.cpu_times()
        out[name] = t.user + t.system
    return out


async def closed_loop(one, concurrency: int, rounds: int, procs: dict | None = None) -> Level:
    samples: list[Sample] = []
    before = _cpu(procs or {})

    async def client(i: int):
        for r in range(rounds):
            samples.append(await one(i * 1000 + r))

    t0 = time.perf_counter()
    await asyncio.gather(*[client(i) for i in range(concurrency)])
    wall = time.perf_counter() - t0
    after = _cpu(procs or {})
    return Level(concurrency, wall, samples, {k: after[k] - before[k] for k in after})


def inproc_runner(engine_dir: Path, max_seqs: int, max_tokens: int):
    from serving.engine import ChatMessage, GenerationRequest, SamplingParams
    from serving.engines import load_engine

    engine = load_engine(engine_dir, name="bench", max_num_seqs=max_seqs)
    messages = [ChatMessage(m["role"], m["content"]) for m in MESSAGES]

    async def one(i: int) -> Sample:
        request = GenerationRequest(request_id=f"b{i}", messages=messages, sampling=SamplingParams(
            max_tokens=max_tokens, temperature=0.0, ignore_eos=True))
        t0 = time.perf_counter()
        ttft, last = None, None
        async for d in engine.stream(request):
            if ttft is None and d.text:
                ttft = time.perf_counter() - t0
            last = d
        return Sample(ttft or 0.0, time.perf_counter() - t0, last.completion_tokens)

    return engine, one


def raw_runners(engine_dir: Path, max_tokens: int) -> dict:
    """OpenVINO GenAI alone, same properties and scheduler as the engine: name -> () -> Sample."""
    import numpy as np
    import openvino as ov
    import openvino_genai as ov_genai

    from benchmarks.engine_ceiling import BareEngine

    bare = BareEngine(engine_dir)
    [ids] = bare.chat_ids([MESSAGES[0]["content"]])
    config = ov_genai.GenerationConfig()
    config.update_generation_config(max_new_tokens=max_tokens, ignore_eos=True, do_sample=False)
    llm = ov_genai.LLMPipeline(str(engine_dir), "CPU", **bare.properties)

    def step_loop() -> Sample:
        _, [(ttft, total, n)] = bare.closed_loop([[ids]], max_tokens)
        return Sample(ttft, total, n)

    def generate() -> Sample:
        t0 = time.perf_counter()
        result = llm.generate(ov.Tensor(np.asarray([ids], dtype=np.int64)), config)
        total = time.perf_counter() - t0
        return Sample(result.perf_metrics.get_ttft().mean / 1000, total, max_tokens)

    return {"LLMPipeline.generate": generate, "ContinuousBatchingPipeline step loop": step_loop}


def start_server(engine_dir: Path, max_seqs: int, port: int, checkout: Path | None = None):
    """``onramp serve`` for the engine, auth off, as a child process (serving.process); not yet ready.
    ``checkout``: run the code of that checkout instead of this one's (its directory first on PYTHONPATH)."""
    from serving.process import spawn_server

    home = Path(os.environ.get("ONRAMP_HOME", str(REPO / ".cache" / "bench-home")))
    env = {**os.environ, "ONRAMP_HOME": str(home)}
    code = checkout or REPO
    env["PYTHONPATH"] = os.pathsep.join([str(code), *[p for p in env.get("PYTHONPATH", "").split(os.pathsep)
                                                       if p and Path(p).resolve() != REPO]])
    cmd = [sys.executable, "-m", "onramp", "serve", "--engine", f"bench={engine_dir}", "--no-auth",
           "--port", str(port), "--max-queue", str(max_seqs * 2)]
    log = home / ("serving-bench.log" if checkout is None else "serving-bench-against.log")
    return spawn_server(cmd, url=f"http://127.0.0.1:{port}", log=log, env=env, cwd=code, what="onramp serve")


def http_runner(client, max_tokens: int):
    async def one(i: int) -> Sample:
        body = {"model": "bench", "messages": MESSAGES, "max_tokens": max_tokens, "temperature": 0,
                "stream": True, "stream_options": {"include_usage": True}, "ignore_eos": True}
        t0 = time.perf_counter()
        ttft, tokens = None, 0
        async with client.stream("POST", "/v1/chat/completions", json=body) as resp:
            resp.raise_for_status()
            async for line in resp.aiter_lines():
                # parse JSON only where needed: the load client shares the engine's 2 cores
                if ttft is None and line.startswith("data: {"):
                    chunk = json.loads(line[6:])
                    if chunk["choices"] and chunk["choices"][0]["delta"].get("content"):
                        ttft = time.perf_counter() - t0
                if '"usage":{' in line:
                    tokens = json.loads(line[6:])["usage"]["completion_tokens"]
        return Sample(ttft or 0.0, time.perf_counter() - t0, tokens)

    return one


async def run(engine_dir: Path, levels: list[int], max_tokens: int, rounds: int, port: int, mode: str,
              repeat: int = 1, against: Path | None = None, against_port: int = 0, raw: bool = False):
    """Both modes, level by level (in-process, then server, at each level, ``repeat`` times), so
    that changes in the machine's background load hit both alike. With ``against``, the server of
    that checkout takes its turn after this one's in every repeat (its levels come back third)."""
    import httpx

    import psutil

    max_seqs = max(levels)
    engine = server = other = None
    inproc: list[Level] = []
    served: list[Level] = []
    theirs: list[Level] = []
    bare: dict[str, list[Level]] = {}
    try:
        server = start_server(engine_dir, max_seqs, port) if mode in ("both", "server") else None
        if against is not None and server is not None:
            other = start_server(engine_dir, max_seqs, against_port, checkout=against)
        me = psutil.Process()
        server_procs = {"client": me} | ({"server": psutil.Process(server.proc.pid)} if server else {})
        other_procs = {"client": me} | ({"server": psutil.Process(other.proc.pid)} if other else {})
        if mode in ("both", "inproc"):
            engine, one_inproc = inproc_runner(engine_dir, max_seqs, max_tokens)
            await one_inproc(-1)  # warm-up
        runners = raw_runners(engine_dir, max_tokens) if raw else {}
        for fn in runners.values():
            fn()  # warm-up
        limits = httpx.Limits(max_connections=max_seqs + 4)
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=600, limits=limits) as client, \
                httpx.AsyncClient(base_url=f"http://127.0.0.1:{against_port}", timeout=600, limits=limits) as client2:
            one_http = http_runner(client, max_tokens)
            one_other = http_runner(client2, max_tokens)
            for s, one in ((server, one_http), (other, one_other)):
                if s is not None:
                    await asyncio.to_thread(s.wait_ready, timeout=600)
                    await one(-1)  # warm-up
            for c in levels:
                for i in range(repeat):
                    if engine is not None:
                        inproc.append(await closed_loop(one_inproc, c, rounds, {"process": me}))
                    pair = [(server, one_http, server_procs, served), (other, one_other, other_procs, theirs)]
                    for s, one, procs, into in (pair if i % 2 == 0 else pair[::-1]):
                        if s is not None:
                            into.append(await closed_loop(one, c, rounds, procs))
                    if c == 1:
                        for name, fn in runners.items():
                            t0 = time.perf_counter()
                            samples = [fn() for _ in range(rounds)]
                            bare.setdefault(name, []).append(Level(1, time.perf_counter() - t0, samples))
    finally:
        if engine is not None:
            engine.close()
        for s in (server, other):
            if s is not None:
                s.stop()
    return inproc, served, theirs, bare


def table(title: str, levels: list[Level]) -> None:
    print(f"\n{title}")
    print(f"{'conc':>5} {'reqs':>5} {'out tok/s':>10} {'TTFT p50 ms':>12} {'TTFT p99 ms':>12} "
          f"{'decode tok/s/stream':>20}  CPU s per 1k tokens")
    for lv in levels:
        decode = statistics.median(s.decode_tps for s in lv.samples)
        tokens = sum(s.tokens for s in lv.samples) / 1000
        cpu = " ".join(f"{k}={v / tokens:.2f}" for k, v in (lv.cpu or {}).items())
        print(f"{lv.concurrency:>5} {len(lv.samples):>5} {lv.throughput:>10.1f} {lv.pct(0.5) * 1000:>12.0f} "
              f"{lv.pct(0.99) * 1000:>12.0f} {decode:>20.1f}  {cpu}")


def default_engine() -> Path:
    from builders import build_engine
    from onramp.reference import HUB_REPO_ID, make_reference_model

    cache = Path(os.environ.get("ONRAMP_TEST_CACHE") or REPO / ".cache" / "test")
    return build_engine(make_reference_model(cache_dir=cache), backend="openvino", quant="int8",
                        out_root=cache / "engines", repo=HUB_REPO_ID)


def main() -> None:
    from onramp.signals import exit_on_signals

    exit_on_signals()  # SIGTERM stops the server child too
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--engine", type=Path, default=None)
    ap.add_argument("--concurrency", default="1,4,16")
    ap.add_argument("--max-tokens", type=int, default=128)
    ap.add_argument("--rounds", type=int, default=3, help="requests per client per level")
    ap.add_argument("--repeat", type=int, default=1,
                    help="alternate in-process and server this many times per level; the ratio is their medians'")
    ap.add_argument("--mode", choices=["both", "inproc", "server"], default="both")
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--against", type=Path, default=None, metavar="CHECKOUT",
                    help="also serve with that checkout's code, alternating with this one (A/B of the server)")
    ap.add_argument("--raw", action="store_true",
                    help="also time OpenVINO GenAI alone at concurrency 1 (LLMPipeline.generate, a bare step loop)")
    args = ap.parse_args()
    if args.against is not None and not (args.against / "onramp").is_dir():
        raise SystemExit(f"error: --against {args.against} is not a checkout of onramp (it has no onramp/ package)")
    levels = [int(c) for c in args.concurrency.split(",")]
    engine_dir = args.engine or default_engine()
    from onramp.process import free_port

    port = args.port or free_port()
    against_port = free_port() if args.against is not None else 0
    print(f"engine {engine_dir}\n{args.max_tokens} output tokens per request, {args.rounds} requests per client, "
          f"{os.cpu_count()} CPUs")
    from onramp.errors import OnrampError

    try:
        inproc, server, theirs, bare = asyncio.run(run(engine_dir, levels, args.max_tokens, args.rounds, port,
                                                       args.mode, args.repeat, args.against, against_port, args.raw))
    except OnrampError as err:
        raise SystemExit(f"error: {err}") from None
    if inproc:
        table("in-process (engine.stream)", inproc)
    if server:
        table("HTTP server (onramp serve, SSE /v1/chat/completions, one asyncio httpx client)", server)
    if theirs:
        table(f"HTTP server of {args.against}", theirs)
        print(f"\nthis checkout's server / {args.against}'s "
              f"(median of {len(theirs) // len(levels)} alternating rounds):")

        def decode(lv: Level) -> float:
            return statistics.median(s.decode_tps for s in lv.samples)

        for c in levels:
            mine = [lv for lv in server if lv.concurrency == c]
            other = [lv for lv in theirs if lv.concurrency == c]
            tput = [a.throughput / b.throughput for a, b in zip(mine, other, strict=True)]
            dec = [decode(a) / decode(b) for a, b in zip(mine, other, strict=True)]
            ttft = [b.pct(0.5) / a.pct(0.5) for a, b in zip(mine, other, strict=True)]
            print(f"  c={c}: decode tok/s/stream {statistics.median(dec):.3f}x, "
                  f"throughput {statistics.median(tput):.3f}x, TTFT p50 {statistics.median(ttft):.3f}x faster  "
                  f"(decode per round: "
                  + " ".join(f"{x:.2f}" for x in dec) + ")")
    for name, lvs in bare.items():
        table(f"OpenVINO GenAI alone: {name}", lvs)
    loop_levels = bare.get("ContinuousBatchingPipeline step loop")
    if loop_levels:
        def decode_median(lvs: list[Level]) -> float:
            return statistics.median(s.decode_tps for lv in lvs for s in lv.samples)

        mine = {"in-process engine": [lv for lv in inproc if lv.concurrency == 1],
                "server": [lv for lv in server if lv.concurrency == 1],
                "LLMPipeline.generate": bare.get("LLMPipeline.generate", [])}
        print("\nper-stream decode at c=1 over the bare step loop's (medians): " + ", ".join(
            f"{k} {decode_median(v) / decode_median(loop_levels):.1%}" for k, v in mine.items() if v))
    if inproc and server:
        parts = []
        for c in levels:
            a = statistics.median(lv.throughput for lv in inproc if lv.concurrency == c)
            b = statistics.median(lv.throughput for lv in server if lv.concurrency == c)
            parts.append(f"c={c}: {b / a:.1%}")
        print(f"\nserver / in-process throughput (median of {args.repeat}): " + ", ".join(parts))


if __name__ == "__main__":
    main()
