"""benchmarks/engine_ceiling.py: the bare engine's closed loops on the reference int8 engine, and
llamacpp_bench's third side (the bare engine in its rounds) and verdict of whether a goal is within
the bare engine's reach."""

from __future__ import annotations

from benchmarks.engine_ceiling import BareEngine, measure
from benchmarks.llamacpp_bench import BARE, LevelResult, bare_level, per_worker_requests, print_ceiling, summarize
from evals.stream import make_prompt


def test_closed_loop_runs_every_worker_s_requests_to_their_length(ov_int8_engine):
    engine = BareEngine(ov_int8_engine, threads=1)
    assert engine.properties["INFERENCE_NUM_THREADS"] == 1
    assert engine.properties["INFERENCE_PRECISION_HINT"] == "f32"  # the manifest's, not the CPU's default
    prompts = [engine.chat_ids([make_prompt(10 * w + i, 40) for i in range(2)]) for w in range(2)]
    assert all(20 < len(ids) < 120 for worker in prompts for ids in worker)
    wall, rows = engine.closed_loop(prompts, 6)
    assert len(rows) == 4 and all(n == 6 for _, _, n in rows)
    assert all(0 < ttft <= total <= wall for ttft, total, _ in rows)


def test_measure_keeps_the_fastest_run_per_level(ov_int8_engine):
    import openvino_genai as ov_genai

    default = ov_genai.SchedulerConfig().max_num_batched_tokens  # the reference engine records none
    seen = []
    result = measure(ov_int8_engine, [1, 2], output_tokens=4, prompt_words=20, threads=1, repeat=2,
                     batched_tokens=[64], requests_per_worker=lambda c: 1, progress=seen.append)
    assert sorted(result) == [1, 2]
    assert len(seen) == 2 * 2 * 2  # two scheduler settings x two levels x two repeats
    for c, level in result.items():
        rates = [float(line.split(": ")[1].split(" output")[0]) for line in seen if f"c={c:<2}" in line]
        assert level.output_tok_s > 0 and abs(level.output_tok_s - max(rates)) < 0.06
        assert level.max_num_batched_tokens in (64, default)  # the one tried, or the engine's own
        assert level.ttft_p50_s > 0 and level.decode_tok_s_p50 > 0


def test_bare_level_runs_the_rounds_closed_loops_on_the_real_engine(ov_int8_engine):
    bare = BareEngine(ov_int8_engine, threads=1)
    level = bare_level(bare, 1, 0, output_tokens=4, prompt_tokens=30)
    assert level.output_tokens == [4] * per_worker_requests(1)  # c=1: one worker's requests, each to its length
    assert level.output_tok_s > 0 and len(level.ttfts) == len(level.output_tokens) and all(t > 0 for t in level.ttfts)
    assert len(level.decode) == len(level.output_tokens) and all(d > 0 for d in level.decode)


def test_ceiling_verdict_pairs_the_bare_engine_with_llamacpp_round_by_round(capsys):
    def side(tok_s):
        return LevelResult(output_tok_s=tok_s, ttfts=[0.1], decode=[50.0], output_tokens=[128])

    # per round: onramp, llama.cpp, bare; the machine is twice as fast in the second round
    results = {1: [{"onramp": side(50.0), "llama.cpp": side(60.0), BARE: side(66.0)},
                   {"onramp": side(100.0), "llama.cpp": side(120.0), BARE: side(132.0)}],
               4: [{"onramp": side(90.0), "llama.cpp": side(80.0), BARE: side(110.0)}] * 2,
               16: [{"onramp": side(100.0), "llama.cpp": side(30.0), BARE: side(120.0)},
                    {"onramp": side(200.0), "llama.cpp": side(60.0), BARE: side(240.0)}]}
    rows = summarize(results)
    assert abs(rows[0]["bare_ratio"]["ratio"] - 1.1) < 1e-9  # 66 / 60 and 132 / 120, not 132 / 60
    assert abs(rows[2]["server_of_bare"]["ratio"] - 100 / 120) < 1e-9
    assert rows[0][BARE]["output_tok_s"] == 99.0  # the median of the bare engine's rounds
    print_ceiling("int8", "Q8_0", rows)
    lines = {line.split(" | ")[0].strip("| "): line for line in capsys.readouterr().out.splitlines()
             if line.startswith("| ") and line[2].isdigit()}
    assert "| 1.10x [1.10, 1.10] | 1.3x | no |" in lines["1"]  # 1.1 < 1.3
    assert "| 1.38x [1.38, 1.38] | – | – |" in lines["4"]  # no goal at c=4
    assert "| 4.00x [4.00, 4.00] | 3.0x | yes |" in lines["16"]  # 4 >= 3
    assert lines["1"].endswith("| 0.76x [0.76, 0.76] |") and lines["16"].endswith("| 0.83x [0.83, 0.83] |")
    plain = summarize({1: [{"onramp": side(2.0), "llama.cpp": side(1.0)}]})[0]  # without --ceiling: two sides
    assert BARE not in plain and "bare_ratio" not in plain and plain["output_tok_s_ratio"]["ratio"] == 2.0


def test_compare_runs_engines_side_by_side_and_models_adaptive_prompt_lookup(ov_int8_engine, tmp_path):
    from builders.manifest import read_manifest
    from benchmarks.engine_ceiling import compare, describe_comparison
    from evals.tune import engine_copy

    runtime = read_manifest(ov_int8_engine).runtime.model_dump()
    runtime["decoding"] = {"num_assistant_tokens": 3, "max_ngram_size": 3, "lookup_below": 2}
    adaptive = engine_copy(ov_int8_engine, runtime, tmp_path / "adaptive")
    bare = BareEngine(adaptive, threads=1)
    assert bare.lookup_pipe is not None and bare.lookup_below == 2
    for workers in (1, 2):  # alone: drafted for; two at once: the plain pipeline
        prompts = [bare.chat_ids([make_prompt(50 + w, 30)]) for w in range(workers)]
        _, rows = bare.closed_loop(prompts, 6)
        assert [n for _, _, n in rows] == [6] * workers
    del bare
    seen: list[str] = []
    result = compare({"plain": ov_int8_engine, "adaptive": adaptive}, [1, 2], output_tokens=4, prompt_words=20,
                     threads=1, rounds=2, progress=seen.append)
    assert {k: {c: len(v) for c, v in levels.items()} for k, levels in result.items()} == {
        "plain": {1: 2, 2: 2}, "adaptive": {1: 2, 2: 2}}
    assert all(x > 0 for levels in result.values() for v in levels.values() for x in v)
    assert len(seen) == 2 * 2 * 2
    table = describe_comparison(result)
    assert table[0].startswith("| concurrency | plain out tok/s | adaptive out tok/s | adaptive / plain |")
    assert len(table) == 4 and table[2].startswith("| 1 | ")
