"""How fast can this engine be on this machine at all? OpenVINO GenAI alone, no onramp code.

``benchmarks/llamacpp_bench.py`` measures onramp's server against llama.cpp's. This script runs
the bare engine underneath on the same workload: a ``ContinuousBatchingPipeline`` step loop in
this process, with the engine's recorded properties, scheduler and decoding settings (and the thread count
asked for), no HTTP, no tokenizer round trips, no onramp engine loop. Same closed loops as the
benchmark (N workers, each sending its next request when its last one ends: 3 per worker at c=1,
2 at c=4, 1 at c=16), unique ~150-word prompts through the engine's chat template, exactly
``--output-tokens`` greedy tokens (``ignore_eos``).

What it prints per concurrency is the fastest of ``--repeat`` runs and of the scheduler's
``max_num_batched_tokens`` values tried (the engine's own, plus ``--max-num-batched-tokens``, the
tuner's knob): an upper bound on what any server on this engine reaches here, since noise only
lowers a run (with prompt lookup, a run's speed also depends on its prompts). ``llamacpp_bench.py
--ceiling`` runs this bare engine as a third side in its own rounds, on the very prompts the two
servers get, and prints it as a paired ratio to llama.cpp's: if the bare engine is below a goal, no
change to onramp's serving code can meet it on this machine.

    .venv/bin/python benchmarks/engine_ceiling.py [--engine DIR] [--quant int8] [--concurrency 1,4,16]
        [--output-tokens 128] [--prompt-words 150] [--threads T] [--repeat 2]
        [--max-num-batched-tokens 1024] [--json FILE]
    .venv/bin/python benchmarks/engine_ceiling.py --compare plain=DIR --compare other=DIR2 [--repeat 3]

``--compare`` runs two or more engines (e.g. copies of one build with different runtimes) side by
side on the same prompts, alternating, and prints each one's output tok/s over the first's.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))


@dataclass
class Level:
    """The bare engine at one concurrency: the fastest of the repeats."""

    concurrency: int
    output_tok_s: float = 0.0
    max_num_batched_tokens: int = 0  # the scheduler setting of that run
    ttft_p50_s: float | None = None
    decode_tok_s_p50: float | None = None


class BareEngine:
    """``openvino_genai.ContinuousBatchingPipeline`` with the engine's recorded runtime."""

    def __init__(self, engine_dir: Path, *, threads: int | None = None, scheduler: dict | None = None):
        import openvino_genai as ov_genai

        from builders.ov_runtime import decoding_settings, load_properties, scheduler_settings, split_decoding
        from serving.engines.ov_pipelines import load_pipelines, scheduler_config

        self.engine_dir = Path(engine_dir)
        self.properties = load_properties(self.engine_dir)
        self.decoding = decoding_settings(self.engine_dir)  # prompt lookup, as the server loads it
        if threads:
            self.properties["INFERENCE_NUM_THREADS"] = int(threads)
        self.scheduler = {**scheduler_settings(self.engine_dir), **(scheduler or {})}
        # as loaded (OpenVINO's default unless set)
        self.batched_tokens = int(scheduler_config(ov_genai, self.scheduler).max_num_batched_tokens)
        self.tokenizer = ov_genai.Tokenizer(str(self.engine_dir))
        # as the server loads it: with lookup_below, a drafting pipeline for requests that start while
        # fewer than that run, beside the plain one (serving.engines.ov_loop)
        self.draft, self.lookup_below = split_decoding(self.decoding)
        self.pipe, self.lookup_pipe = load_pipelines(ov_genai, str(self.engine_dir), self.tokenizer, self.scheduler,
                                                     "CPU", self.properties, self.draft, self.lookup_below)
        self._ov_genai = ov_genai
        self._ids = iter(range(1 << 30))
        from tokenizers import Tokenizer

        self._hf = Tokenizer.from_file(str(self.engine_dir / "tokenizer.json"))

    def chat_ids(self, prompts: list[str]) -> list[list[int]]:
        """Token ids of each prompt as one user message through the engine's chat template."""
        texts = [self.tokenizer.apply_chat_template([{"role": "user", "content": p}], add_generation_prompt=True)
                 for p in prompts]
        return [self._hf.encode(t, add_special_tokens=False).ids for t in texts]

    def worker_prompts(self, concurrency: int, per_worker: int, index, prompt_tokens: int) -> list[list[list[int]]]:
        """Each worker's prompts as chat token ids; ``index(worker, i)`` numbers them for ``make_prompt``."""
        from evals.stream import make_prompt

        return [self.chat_ids([make_prompt(index(w, i), prompt_tokens) for i in range(per_worker)])
                for w in range(concurrency)]

    def warm_up(self, prompt_tokens: int) -> None:
        """Two short requests at once: the first steps compile kernels and allocate the cache."""
        self.closed_loop(self.worker_prompts(2, 1, lambda w, i: 980_000 + w, prompt_tokens), 4)

    def closed_loop(self, prompts: list[list[list[int]]], max_new_tokens: int
                    ) -> tuple[float, list[tuple[float, float, int]]]:
        """Closed loop: worker ``w`` sends ``prompts[w]`` one after another, each when its last one
        ends (all workers at once). Returns the wall time and per request (TTFT s, total s, tokens)."""
        import numpy as np
        import openvino as ov

        def make_config(tokens: int, draft: dict):
            config = self._ov_genai.GenerationConfig()
            config.update_generation_config(max_new_tokens=tokens, ignore_eos=True, do_sample=False, **draft)
            return config

        adaptive = self.lookup_pipe is not None
        plain_config = make_config(max_new_tokens, {} if adaptive else self.draft)
        drafted_config = make_config(max_new_tokens, self.draft)
        pipes = [p for p in (self.pipe, self.lookup_pipe) if p is not None]
        running = self._ov_genai.GenerationStatus.RUNNING
        t0 = time.perf_counter()
        queues = [list(p) for p in prompts]
        active: dict[int, list] = {}  # worker -> [handle, start, first, tokens, prompt ids, generated ids, drafted]
        done: list[tuple[float, float, int]] = []

        def tensor(ids: list[int]):
            return ov.Tensor(np.asarray([ids], dtype=np.int64))

        def send(w: int, arriving: int = 1) -> None:
            """As serving.engines.ov_loop admits: drafted while fewer than lookup_below run (counting the
            ``arriving``); otherwise drafted requests move to the plain pipeline with their tokens so far."""
            if not queues[w]:
                return
            ids = queues[w].pop(0)
            drafting = adaptive and len(active) + arriving < self.lookup_below
            if adaptive and not drafting:
                for rec in active.values():
                    if rec[6] and max_new_tokens - len(rec[5]) >= 1:
                        rec[0].cancel()
                        rec[0] = self.pipe.add_request(next(self._ids), tensor(rec[4] + rec[5]),
                                                       make_config(max_new_tokens - len(rec[5]), {}))
                        rec[6] = False
            pipe, config = (self.lookup_pipe, drafted_config) if drafting else (self.pipe, plain_config)
            active[w] = [pipe.add_request(next(self._ids), tensor(ids), config), time.perf_counter(), None, 0,
                         list(ids), [], drafting]

        for w in range(len(queues)):
            send(w, arriving=len(queues) - w)  # all at once: admitted together
        while active:
            for pipe in pipes:
                if pipe.has_non_finished_requests():
                    pipe.step()
            now = time.perf_counter()
            for w, rec in list(active.items()):
                handle = rec[0]
                if handle.can_read():
                    for o in handle.read().values():
                        rec[3] += len(o.generated_ids)
                        if adaptive:
                            rec[5].extend(o.generated_ids)
                    if rec[2] is None and rec[3]:
                        rec[2] = now - rec[1]
                if handle.get_status() != running and not handle.can_read():
                    done.append((rec[2] or 0.0, now - rec[1], rec[3]))
                    del active[w]
                    send(w)
        return time.perf_counter() - t0, done


def decode_rates(rows: list[tuple[float, float, int]]) -> list[float]:
    """Per request of ``BareEngine.closed_loop``'s rows: tokens after the first per second after it."""
    return [(n - 1) / (total - ttft) for ttft, total, n in rows if n > 1 and total > ttft]


def measure(engine_dir: Path, levels: list[int], *, output_tokens: int = 128, prompt_words: int = 150,
            threads: int | None = None, repeat: int = 2, batched_tokens: list[int] | None = None,
            requests_per_worker=None, progress=print) -> dict[int, Level]:
    """The bare engine on the benchmark's workload at each concurrency (closed loops, the fastest of
    ``repeat`` runs and of the scheduler's ``max_num_batched_tokens`` values tried)."""
    if requests_per_worker is None:
        from benchmarks.llamacpp_bench import per_worker_requests as requests_per_worker
    from builders.ov_runtime import scheduler_settings

    prompt_tokens = int(prompt_words * 1.3) + 1
    best = {c: Level(c) for c in levels}
    own = scheduler_settings(engine_dir).get("max_num_batched_tokens")
    for mnbt in [None, *sorted(set(batched_tokens or []) - {own})]:
        engine = None  # free the last pipeline before compiling the next
        engine = BareEngine(engine_dir, threads=threads,
                            scheduler=None if mnbt is None else {"max_num_batched_tokens": mnbt})
        engine.warm_up(prompt_tokens)
        for c in levels:
            for r in range(repeat):
                prompts = engine.worker_prompts(c, requests_per_worker(c),
                                                lambda w, i, r=r, c=c: 800_000 + 10_000 * r + 100 * c + 10 * w + i,
                                                prompt_tokens)
                wall, rows = engine.closed_loop(prompts, output_tokens)
                decode = decode_rates(rows)
                level = Level(c, sum(n for _, _, n in rows) / wall, engine.batched_tokens,
                              statistics.median(t for t, _, _ in rows), statistics.median(decode) if decode else None)
                progress(f"  bare engine c={c:<2} max_num_batched_tokens={level.max_num_batched_tokens}: "
                         f"{level.output_tok_s:.1f} output tok/s, TTFT p50 {level.ttft_p50_s * 1000:.0f} ms, "
                         f"decode p50 {_f(level.decode_tok_s_p50)} tok/s")
                if level.output_tok_s > best[c].output_tok_s:
                    best[c] = level
    return best


def compare(engines: dict[str, Path], levels: list[int], *, output_tokens: int = 128, prompt_words: int = 150,
            threads: int | None = None, rounds: int = 3, progress=print) -> dict[str, dict[int, list[float]]]:
    """Bare engines side by side on the same prompts, in an order that rotates and reverses every
    level and round (so load drift hits all alike): ``{label: {concurrency: [output tok/s per round]}}``."""
    from benchmarks.llamacpp_bench import per_worker_requests

    prompt_tokens = int(prompt_words * 1.3) + 1
    bare = {label: BareEngine(path, threads=threads) for label, path in engines.items()}
    for engine in bare.values():
        engine.warm_up(prompt_tokens)
    first = next(iter(bare.values()))
    out: dict[str, dict[int, list[float]]] = {label: {c: [] for c in levels} for label in bare}
    for r in range(rounds):
        for c in levels:
            prompts = first.worker_prompts(c, per_worker_requests(c),
                                           lambda w, i, r=r, c=c: 700_000 + 10_000 * r + 100 * c + 10 * w + i,
                                           prompt_tokens)
            order = list(bare) if (r + c) % 2 == 0 else list(bare)[::-1]
            order = order[r % len(order):] + order[:r % len(order)]
            for label in order:
                wall, rows = bare[label].closed_loop(prompts, output_tokens)
                out[label][c].append(sum(n for _, _, n in rows) / wall)
                progress(f"  round {r} c={c:<2} {label}: {out[label][c][-1]:.1f} output tok/s, "
                         f"TTFT p50 {statistics.median(t for t, _, _ in rows) * 1000:.0f} ms")
    return out


def _ratio(mine: list[float], base: list[float]) -> float:
    """Geometric mean of the per-round ratios."""
    return statistics.geometric_mean([a / b for a, b in zip(mine, base, strict=True)])


def describe_comparison(result: dict[str, dict[int, list[float]]]) -> list[str]:
    labels = list(result)
    base = labels[0]
    lines = ["| concurrency | " + " | ".join(f"{label} out tok/s" for label in labels) + " | "
             + " | ".join(f"{label} / {base}" for label in labels[1:]) + " |",
             "|---" * (2 * len(labels)) + "|"]
    for c in result[base]:
        medians = [f"{statistics.median(result[label][c]):.1f}" for label in labels]
        ratios = [f"{_ratio(result[label][c], result[base][c]):.3f}x" for label in labels[1:]]
        lines.append(f"| {c} | " + " | ".join(medians + ratios) + " |")
    return lines


def _f(value: float | None, spec: str = ".1f") -> str:
    return "–" if value is None else format(value, spec)


def describe(levels: dict[int, Level]) -> list[str]:
    lines = ["| concurrency | bare engine out tok/s | max_num_batched_tokens | TTFT p50 | decode/stream p50 |",
             "|---|---|---|---|---|"]
    for c, lv in sorted(levels.items()):
        ttft = _f(lv.ttft_p50_s and lv.ttft_p50_s * 1000, ".0f")
        lines.append(f"| {c} | {lv.output_tok_s:.1f} | {lv.max_num_batched_tokens} | {ttft} ms | "
                     f"{_f(lv.decode_tok_s_p50)} tok/s |")
    return lines


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--engine", type=Path, default=None, help="engine directory (default: the reference build)")
    ap.add_argument("--quant", default="int8", help="reference build to use without --engine (int8, int4)")
    ap.add_argument("--concurrency", default="1,4,16")
    ap.add_argument("--output-tokens", type=int, default=128)
    ap.add_argument("--prompt-words", type=int, default=150)
    ap.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)))
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--max-num-batched-tokens", default="1024",
                    help="other scheduler max_num_batched_tokens to try besides the engine's own (comma-separated; "
                         "'' for none)")
    ap.add_argument("--json", type=Path, default=None)
    ap.add_argument("--compare", action="append", default=[], metavar="LABEL=DIR",
                    help="instead: these engines side by side (two or more; the first is the base), "
                         "--repeat alternating rounds, ratios of output tok/s to the first's")
    args = ap.parse_args()
    from onramp.files import write_text_atomic

    levels = sorted({int(c) for c in args.concurrency.split(",") if c.strip()})
    if not levels or min(levels) < 1 or args.output_tokens < 2 or args.repeat < 1:
        ap.error("every --concurrency >= 1, --output-tokens >= 2 and --repeat >= 1 are needed")
    if args.compare:
        pairs = [item.partition("=") for item in args.compare]
        engines = {label: Path(path) for label, _, path in pairs}
        bad = [f"{label}={path}" for label, _, path in pairs
               if not label or not (Path(path) / "manifest.json").is_file()]
        if len(engines) < 2 or len(engines) < len(pairs) or bad:
            ap.error("--compare needs two or more LABEL=DIR with different labels, each an engine made by "
                     "`onramp build`" + (f" (not one: {', '.join(bad)})" if bad else ""))
        print(f"{len(engines)} engines side by side; {args.threads} threads; load average "
              f"{' '.join(f'{x:.1f}' for x in os.getloadavg())}", flush=True)
        result = compare(engines, levels, output_tokens=args.output_tokens, prompt_words=args.prompt_words,
                         threads=args.threads, rounds=args.repeat, progress=lambda m: print(m, flush=True))
        print("\n".join(describe_comparison(result)))
        if args.json:
            write_text_atomic(args.json, json.dumps(result, indent=2))
        return
    if args.engine is None:
        from benchmarks.llamacpp_bench import reference_engine

        args.engine = reference_engine(args.quant)
    if not (args.engine / "manifest.json").is_file():
        ap.error(f"--engine {args.engine}: no manifest.json there; pass a directory made by `onramp build`")
    mnbt = [int(v) for v in args.max_num_batched_tokens.split(",") if v.strip()]
    print(f"engine {args.engine}; {args.threads} threads; load average "
          f"{' '.join(f'{x:.1f}' for x in os.getloadavg())}", flush=True)
    result = measure(args.engine, levels, output_tokens=args.output_tokens, prompt_words=args.prompt_words,
                     threads=args.threads, repeat=args.repeat, batched_tokens=mnbt,
                     progress=lambda m: print(m, flush=True))
    print("\n".join(describe(result)))
    if args.json:
        write_text_atomic(args.json, json.dumps({c: asdict(v) for c, v in result.items()}, indent=2))


if __name__ == "__main__":
    main()
