"""Structured decoding's cost: output tokens/s with and without a response_format, through the server.

For each concurrency level (closed loop: N clients, each sending its next request when the last
one ends) it alternates rounds of free decoding and of structured decoding (a JSON schema of a
list of strings, so that outputs run long), on the same prompt and max_tokens, and prints the
median tokens/s of each and their ratio. Outputs may end early (EOS, or the grammar's end), so
tokens/s is completion tokens over wall time.

    .venv/bin/python benchmarks/structured_bench.py [--engine DIR] [--concurrency 1,16]
        [--max-tokens 96] [--requests 16] [--rounds 3]

Without --engine it uses (building it once if needed) the reference model's int8 OpenVINO engine
in the test cache.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

MESSAGES = [{"role": "user", "content": "List as many cat names as you can, as JSON."}]
SCHEMA = {"type": "object", "properties": {"names": {"type": "array", "items": {"type": "string"}}},
          "required": ["names"]}


async def level(url: str, model: str, concurrency: int, requests: int, max_tokens: int, structured: bool) -> float:
    """Output tokens/s of ``requests`` requests sent by ``concurrency`` closed-loop clients."""
    import httpx

    body = {"model": model, "messages": MESSAGES, "max_tokens": max_tokens, "temperature": 0.8, "seed": 1}
    if structured:
        body["response_format"] = {"type": "json_schema", "json_schema": {"name": "names", "schema": SCHEMA}}
    left = requests
    tokens = 0

    async def client(http: httpx.AsyncClient) -> None:
        nonlocal left, tokens
        while left > 0:
            left -= 1
            r = await http.post("/v1/chat/completions", json=body)
            r.raise_for_status()
            tokens += r.json()["usage"]["completion_tokens"]

    async with httpx.AsyncClient(base_url=url, timeout=600) as http:
        t0 = time.perf_counter()
        await asyncio.gather(*(client(http) for _ in range(concurrency)))
        return tokens / (time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--engine", type=Path)
    ap.add_argument("--concurrency", default="1,16")
    ap.add_argument("--max-tokens", type=int, default=96)
    ap.add_argument("--requests", type=int, default=16, help="requests per round (at least the concurrency)")
    ap.add_argument("--rounds", type=int, default=3, help="free/structured round pairs per level")
    args = ap.parse_args()
    from benchmarks.serving_bench import default_engine
    from serving.process import run_onramp_serve

    engine = args.engine or default_engine()
    log = Path(os.environ.get("TMPDIR", "/tmp")) / "structured_bench_server.log"
    with run_onramp_serve(["--engine", f"m={engine}", "--no-auth"], log=log) as server:
        print(f"engine {engine}\nconcurrency  free tok/s  structured tok/s  structured/free")
        for c in [int(x) for x in args.concurrency.split(",")]:
            n = max(args.requests, c)
            free, constrained = [], []
            asyncio.run(level(server.url, "m", c, c, 8, True))  # warm-up: compile paths, grammar caches
            for _ in range(args.rounds):  # alternate, so drift on a shared machine hits both alike
                free.append(asyncio.run(level(server.url, "m", c, n, args.max_tokens, False)))
                constrained.append(asyncio.run(level(server.url, "m", c, n, args.max_tokens, True)))
            f, s = statistics.median(free), statistics.median(constrained)
            print(f"{c:>11}  {f:>10.1f}  {s:>16.1f}  {s / f:>15.2f}", flush=True)


if __name__ == "__main__":
    main()
