"""Latency A/B benchmark: does the side-by-side gate tell "the same" from "slower" on a busy machine?

Two A/Bs of the int8 reference engine (evals.latency_ab: both engines behind their own
`onramp serve`, alternating rounds on the same prompts, paired candidate/production ratios with
a t-interval), each with a busy CPU hog process beside it (a Python busy loop, killed at the end):

1. same: the engine against itself. Its ratios' intervals should contain 1.0 and its gate pass.
2. threads: a copy of the engine whose manifest runtime says INFERENCE_NUM_THREADS=1 (the
   server loads engines with exactly their manifest's OpenVINO properties) against the engine.
   On 2 idle cores that is about half speed; on 2 cores already oversubscribed by other
   processes it is not (one thread gets about the CPU share two got), so this one is informative.
3. duty: the same engine, but the candidate's server is stopped (SIGSTOP) for half of every
   second and continued (SIGCONT) for the other half: about half speed whatever else the machine
   runs (with a 100 ms period the scheduler's wake-up credit for sleepers made up most of the
   loss on an oversubscribed machine). Its gate should fail.

    .venv/bin/python benchmarks/latency_ab.py [--engine DIR] [--rounds 6] [--hogs 1]
        [--only same,threads,duty]

Without --engine it uses (building it once if needed) the reference model's int8 OpenVINO engine
in the test cache. Prints per-round ratios, the estimates and the gate of each A/B.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))


def default_engine() -> Path:
    from builders import build_engine
    from onramp.reference import HUB_REPO_ID, make_reference_model

    cache = Path(os.environ.get("ONRAMP_TEST_CACHE") or REPO / ".cache" / "test")
    return build_engine(make_reference_model(cache_dir=cache), backend="openvino", quant="int8",
                        out_root=cache / "engines", repo=HUB_REPO_ID)


def throttled_copy(engine_dir: Path, out: Path, threads: int = 1) -> Path:
    """The engine's files (hard links) with a manifest whose runtime asks for ``threads`` threads."""
    from builders.manifest import read_manifest
    from evals.tune import engine_copy, with_value

    return engine_copy(engine_dir, with_value(read_manifest(engine_dir).runtime.model_dump(), "threads", threads), out)


@contextlib.contextmanager
def cpu_hogs(n: int):
    procs = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(n)]
    try:
        yield procs
    finally:
        for p in procs:
            p.kill()
            p.wait(timeout=30)


@contextlib.contextmanager
def duty_cycle(pid: int | None, on: float = 0.5, period: float = 1.0):
    """Stop and continue a process group: it runs ``on`` of every ``period`` seconds."""
    import signal
    import threading

    stop = threading.Event()

    def loop():
        while not stop.is_set():
            os.killpg(pid, signal.SIGSTOP)
            stop.wait(period * (1 - on))
            os.killpg(pid, signal.SIGCONT)
            stop.wait(period * on)

    thread = threading.Thread(target=loop, daemon=True) if pid else None
    if thread:
        thread.start()
    try:
        yield
    finally:
        stop.set()
        if thread:
            thread.join(timeout=5)
            os.killpg(pid, signal.SIGCONT)


def one_ab(label: str, candidate: Path, production: Path, load, hogs: int, *, duty: float | None = None) -> bool:
    from evals.gates import apply_gates
    from evals.latency_ab import run_ab, serve_pair

    print(f"\n=== {label}: candidate {candidate.name} vs production {production.name}, "
          f"{hogs} CPU hog(s) beside it", flush=True)
    t0 = time.monotonic()

    def progress(r):
        print(f"  round {r.index} ({'P,C' if r.order[0] == 'production' else 'C,P'}) {time.monotonic() - t0:5.0f}s  "
              + "  ".join(f"{m} {r.production.__dict__[m] or 0:.3g}/{r.candidate.__dict__[m] or 0:.3g}"
                          f"={r.ratio(m) or float('nan'):.3f}" for m in ("output_tok_s", "decode_tok_s", "ttft_s")),
              flush=True)

    with cpu_hogs(hogs), serve_pair(candidate, production) as (cand, prod):
        with duty_cycle(cand.pid, duty) if duty else contextlib.nullcontext():
            report = run_ab(cand, prod, load, candidate_label=candidate.name, production_label=production.name,
                            progress=progress)
    gate = apply_gates({}, sections=[], ab=report)
    print(report.to_markdown())
    print(gate.to_markdown())
    return gate.passed


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--engine", type=Path, default=None)
    ap.add_argument("--rounds", type=int, default=6)
    ap.add_argument("--hogs", type=int, default=1, help="busy-loop processes beside the A/B")
    ap.add_argument("--only", default="same,threads,duty", help="which A/Bs, comma-separated")
    args = ap.parse_args()

    from evals.latency_ab import load_for

    load = load_for("quick").model_copy(update={"rounds": args.rounds})
    engine = (args.engine or default_engine()).resolve()
    print(f"load: {load.model_dump()}")
    only = {x.strip() for x in args.only.split(",")}
    verdicts = {}
    if "same" in only:
        verdicts["same"] = one_ab("same engine against itself", engine, engine, load, args.hogs)
    if "threads" in only:
        with tempfile.TemporaryDirectory(prefix="onramp-throttled-") as tmp:
            slow = throttled_copy(engine, Path(tmp) / f"{engine.name}-1thread")
            verdicts["threads"] = one_ab("copy with INFERENCE_NUM_THREADS=1 against the engine", slow,
                                         engine, load, args.hogs)
    if "duty" in only:
        verdicts["duty"] = one_ab("the engine, its server stopped half of every second, against the engine",
                                  engine, engine, load, args.hogs, duty=0.5)
    print("\nverdicts: " + ", ".join(f"{k}: gate {'PASS' if v else 'FAIL'}" for k, v in verdicts.items()))
    ok = verdicts.get("same", True) and not verdicts.get("duty", False)
    print("as expected" if ok else "NOT as expected")
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
