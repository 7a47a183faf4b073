"""Prefix caching: TTFT of a multi-turn chat with the scheduler's prefix cache off and on.

Two copies of one OpenVINO engine are loaded in this process, one with
``enable_prefix_caching`` off and one with it on (everything else from the engine's manifest).
Each round plays one conversation on each copy, alternating which goes first: a shared system
prompt, then ``--turns`` user turns; each turn sends the whole history (as a chat client does)
and the model's greedy reply is appended to it. The first user message names the round, so the
system prompt is shared across rounds while the history is each conversation's own.

It prints TTFT per turn (median over rounds) for both, their ratio, and whether the greedy
replies were the same token for token, and where they first differ if not. With the u8 KV cache
(the int8 build's default) they can differ at a near tie: a cached prefix was quantized to u8
where the uncached prefill attends to some of the same keys and values before rounding.
``--kv-cache-precision f32`` loads both copies with an unquantized KV cache to check that.

    .venv/bin/python benchmarks/prefix_bench.py [--engine DIR] [--turns 4] [--rounds 3] [--max-tokens 24]
        [--kv-cache-precision u8|f16|f32]

Without --engine it uses (building it once if needed) the reference model's int8 OpenVINO engine
in the test cache.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

SYSTEM = (
    "You are Ada, the support assistant of Northwind Outfitters, a shop for hiking and camping gear. "
    "Answer briefly and politely. Our opening hours are Monday to Friday 9:00-18:00 and Saturday "
    "10:00-16:00; we are closed on Sundays and public holidays. Orders over 50 euros ship for free within "
    "the EU; below that shipping costs 4.90 euros. Returns are accepted within 30 days if the item is unused "
    "and in its original packaging; the customer pays the return shipping unless the item was faulty. "
    "Tents carry a two-year warranty, sleeping bags one year, and boots six months against manufacturing "
    "defects. We never share customer data with third parties. If a question is about an order, ask for the "
    "order number, which has the form NW- followed by six digits. If you do not know an answer, say so and "
    "offer to connect the customer with a human colleague by e-mail at help@northwind.example."
)
TURNS = [
    "Hello! This is customer {round}. I bought a tent from you last month. Can I still return it?",
    "It was used once on a weekend trip, but one pole broke on the first evening.",
    "My order number is NW-4{round:05d}. What should I do next?",
    "Do I have to pay for shipping the tent back to you?",
    "And how long will the refund take once you receive it?",
    "Thanks. One more thing: are you open this Saturday?",
]


async def conversation(engine, round_id: int, turns: int, max_tokens: int) -> tuple[list[float], list[list[int]]]:
    """One conversation: TTFT (s) per turn and the reply token ids per turn."""
    from serving.engine import ChatMessage, GenerationRequest, SamplingParams

    messages = [ChatMessage("system", SYSTEM)]
    ttfts, replies = [], []
    for t in range(turns):
        messages.append(ChatMessage("user", TURNS[t % len(TURNS)].format(round=round_id)))
        request = GenerationRequest(request_id=f"p{round_id}-{t}-{id(engine)}", messages=list(messages),
                                    sampling=SamplingParams(max_tokens=max_tokens, temperature=0.0, logprobs=True))
        t0 = time.perf_counter()
        ttft, text, ids = None, "", []
        async for d in engine.stream(request):
            if ttft is None and d.new_tokens:
                ttft = time.perf_counter() - t0
            text += d.text
            ids.extend(lp.id for lp in d.logprobs or ())
        ttfts.append(ttft or 0.0)
        replies.append(ids)
        messages.append(ChatMessage("assistant", text))
    return ttfts, replies


def load_pair(engine_dir: Path, kv_precision: str | None = None):
    """The same engine twice: prefix caching off, then on."""
    from builders.ov_runtime import load_properties, scheduler_settings
    from serving.engines import load_engine

    sched = scheduler_settings(engine_dir)
    props = load_properties(engine_dir)
    if kv_precision:
        props["KV_CACHE_PRECISION"] = kv_precision
    return [load_engine(engine_dir, name=f"prefix-{on}", max_num_seqs=4, properties=props,
                        scheduler={**sched, "enable_prefix_caching": on}) for on in (False, True)]


def first_difference(a: list[list[int]], b: list[list[int]]) -> str:
    for t, (x, y) in enumerate(zip(a, b, strict=True)):
        if x != y:
            k = next((i for i, (p, q) in enumerate(zip(x, y, strict=False)) if p != q), min(len(x), len(y)))
            return f"turn {t + 1}, reply token {k + 1}"
    return "none"


async def run(engine_dir: Path, turns: int, rounds: int, max_tokens: int, kv_precision: str | None = None):
    engines = load_pair(engine_dir, kv_precision)
    ttft = {False: [], True: []}  # per round: TTFT per turn
    same = []
    try:
        for e in engines:  # warm-up (not timed): compiles, first allocations, the system prompt once
            await conversation(e, 0, 1, 4)
        for r in range(1, rounds + 1):
            order = [0, 1] if r % 2 else [1, 0]
            replies = {}
            for i in order:
                on = i == 1
                times, replies[on] = await conversation(engines[i], r, turns, max_tokens)
                ttft[on].append(times)
            same.append(replies[False] == replies[True])
            if not same[-1]:
                print(f"conversation {r}: the greedy replies differ from "
                      f"{first_difference(replies[False], replies[True])} on")
    finally:
        for e in engines:
            e.close()
    return ttft, same


def default_engine() -> Path:
    import os

    from builders import build_engine
    from onramp.reference import HUB_REPO_ID, make_reference_model

    cache = Path(os.environ.get("ONRAMP_TEST_CACHE") or REPO / ".cache" / "test")
    return build_engine(make_reference_model(cache_dir=cache), backend="openvino", quant="int8",
                        out_root=cache / "engines", repo=HUB_REPO_ID)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--engine", type=Path, default=None)
    ap.add_argument("--turns", type=int, default=4)
    ap.add_argument("--rounds", type=int, default=3, help="conversations per setting (alternating)")
    ap.add_argument("--max-tokens", type=int, default=24, help="reply length per turn")
    ap.add_argument("--kv-cache-precision", choices=["u8", "f16", "f32"], default=None,
                    help="load both copies with this KV_CACHE_PRECISION (default: the manifest's)")
    args = ap.parse_args()
    engine_dir = args.engine or default_engine()
    print(f"engine {engine_dir}\n{args.turns} turns, {args.rounds} conversations per setting, "
          f"{args.max_tokens} tokens per reply, greedy")
    ttft, same = asyncio.run(run(engine_dir, args.turns, args.rounds, args.max_tokens, args.kv_cache_precision))
    print(f"\n{'turn':>4} {'TTFT off ms':>12} {'TTFT on ms':>11} {'off/on':>7}")
    for t in range(args.turns):
        off = statistics.median(r[t] for r in ttft[False])
        on = statistics.median(r[t] for r in ttft[True])
        print(f"{t + 1:>4} {off * 1000:>12.0f} {on * 1000:>11.0f} {off / on:>6.2f}x")
    total_off = statistics.median(sum(r) for r in ttft[False])
    total_on = statistics.median(sum(r) for r in ttft[True])
    print(f"\nwhole conversation, TTFT summed: off {total_off * 1000:.0f} ms, on {total_on * 1000:.0f} ms, "
          f"ratio off/on {total_off / total_on:.2f}x")
    print(f"greedy replies identical with and without prefix caching: {sum(same)} of {len(same)} conversations")


if __name__ == "__main__":
    main()
