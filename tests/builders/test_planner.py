"""The planner on the seed's models, with every figure worked out by hand in the comments.

Units: GiB = 2**30 bytes. Defaults: usable = 90 % of the device, workspace 2 GiB/device,
fp16 KV cache (2 bytes), seq len 4096. Llama-family parameter count (no biases):
  embed = vocab x hidden; per layer: q + o = 2 x hidden x heads x head_dim,
  k + v = 2 x hidden x kv_heads x head_dim, MLP = 3 x hidden x intermediate, 2 norms = 2 x hidden;
  final norm = hidden; LM head = vocab x hidden (none of these four models ties it).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from builders.facts import facts_from_config, inspect_checkpoint, read_config
from builders.planner import plan, plan_checkpoint

FIXTURES = Path(__file__).parent / "fixtures"
GIB = 2**30


def facts(name):
    return facts_from_config(read_config(FIXTURES / name), FIXTURES / name)


def test_facts_of_llama_2_70b():
    f = facts("Llama-2-70b-hf")
    # per layer: q,o 2 x 8192 x 8192 = 134,217,728; k,v 2 x 8192 x 1024 = 16,777,216;
    # MLP 3 x 8192 x 28672 = 704,643,072; norms 16,384 -> 855,654,400; x 80 = 68,452,352,000
    # + embed 262,144,000 + LM head 262,144,000 + final norm 8,192 = 68,976,648,192 (the "70B")
    assert f.params == 68_976_648_192 and f.params_source == "config"
    assert (f.layers, f.heads, f.kv_heads, f.head_dim, f.hidden_size) == (80, 64, 8, 128, 8192)
    assert (f.vocab_size, f.max_positions, f.tied_embeddings, f.dtype) == (32000, 4096, False, "fp16")


def test_facts_of_the_other_seed_models():
    # Mistral-7B: per layer q,o 33,554,432 + k,v 8,388,608 + MLP 3 x 4096 x 14336 = 176,160,768
    # + norms 8,192 = 218,112,000; x 32 = 6,979,584,000; + 2 x 131,072,000 + 4,096 = 7,241,732,096
    m = facts("Mistral-7B-v0.1")
    assert m.params == 7_241_732_096 and (m.kv_heads, m.max_positions, m.dtype) == (8, 32768, "bf16")
    # CodeLlama-34B: per layer 134,217,728 + 16,777,216 + 3 x 8192 x 22016 = 541,065,216 + 16,384
    # = 692,076,544; x 48 = 33,219,674,112; + 524,288,000 + 8,192 = 33,743,970,304
    c = facts("CodeLlama-34b-hf")
    assert c.params == 33_743_970_304 and (c.layers, c.kv_heads, c.max_positions) == (48, 8, 16384)
    # Llama-2-13B: the published safetensors index says total_size 26,031,728,640 bytes of fp16,
    # i.e. 13,015,864,320 parameters; from the config: per layer 4 x 5120^2 = 104,857,600
    # + 3 x 5120 x 13824 = 212,336,640 + 10,240 = 317,204,480; x 40 = 12,688,179,200
    # + 327,680,000 + 5,120 = 13,015,864,320: the same, as it must be.
    l13 = facts("Llama-2-13b-hf")
    assert l13.params == 13_015_864_320 and l13.params_source == "index"


def test_safetensors_headers_are_authoritative(reference_model):
    # SmolLM2-135M: tied embeddings, so 49152 x 576 = 28,311,552 once; per layer q,o 2 x 576 x 576
    # = 663,552, k,v 2 x 576 x 192 = 221,184, MLP 3 x 576 x 1536 = 2,654,208, norms 1,152
    # -> 3,540,096; x 30 = 106,202,880; + 28,311,552 + 576 = 134,515,008 — read from the header.
    f = inspect_checkpoint(reference_model)
    assert f.params_source == "safetensors" and f.params == 134_515_008 and f.dtype == "bf16"


def test_llama_2_70b_fp16_does_not_fit_one_80gb_card_and_fits_four():
    p = plan(facts("Llama-2-70b-hf"), "a100-80gb")
    # fp16 weights: 68,976,648,192 x 2 = 137,953,296,384 B = 128.48 GiB (the "140 GB");
    # usable 0.9 x 80 = 72 GiB: TP1 needs 128.48 + 2 GiB workspace > 72 -> rejected.
    tp1 = p.option(1, "fp16")
    assert not tp1.feasible and "exceed the 72.0 GiB usable" in tp1.reason
    assert tp1.weights_gib == pytest.approx(128.48, abs=0.01)
    # TP4: 128.48 / 4 = 32.12 GiB; KV free = 72 - 32.12 - 2 = 37.88 GiB;
    # KV per token per GPU: 2 x 80 layers x (8 / 4 = 2 KV heads) x 128 x 2 B = 81,920 B
    # -> 37.88 x 2^30 / 81,920 = 496,503 tokens -> 496,503 // 4096 = 121 sequences of 4096.
    tp4 = p.option(4, "fp16")
    assert tp4.feasible
    assert tp4.kv_tokens == pytest.approx(496_503, rel=1e-4) and tp4.max_batch == 121
    # TP2: 64.24 + 2 = 66.24 GiB < 72: fits, with 5.76 GiB of KV: 2 x 80 x 4 x 128 x 2 = 163,840 B
    # a token -> 37,751 tokens -> 9 sequences.
    tp2 = p.option(2, "fp16")
    assert tp2.feasible and tp2.max_batch == 9


def test_llama_2_70b_on_40gb_cards():
    p = plan(facts("Llama-2-70b-hf"), "a100-40gb")
    # usable 36 GiB; TP2: 64.24 + 2 > 36 -> rejected for memory.
    assert not p.option(2, "fp16").feasible and "exceed" in p.option(2, "fp16").reason
    # TP4: 32.12 + 2 = 34.12; KV free 1.88 GiB / 81,920 B = 24,620 tokens -> 6 sequences of 4096.
    tp4 = p.option(4, "fp16")
    assert tp4.feasible and tp4.max_batch == 6
    # int8 weight-only at TP1: linear 68,452,360,192 B x 1 + embed+head 524,288,000 x 2 B
    # = 69,500,936,192 B = 64.73 GiB > 36 -> rejected; on 80 GB: 64.73 + 2 = 66.73 < 72, KV free
    # 5.27 GiB / (2 x 80 x 8 x 128 x 2 = 327,680 B) = 17,275 tokens -> 4 sequences.
    assert not p.option(1, "int8").feasible
    big = plan(facts("Llama-2-70b-hf"), "a100-80gb").option(1, "int8")
    assert big.feasible and big.weights_gib == pytest.approx(64.73, abs=0.01) and big.max_batch == 4


def test_llama_2_13b_fits_on_two_a100s_as_the_seed_served_it():
    p = plan(facts("Llama-2-13b-hf"), "a100-40gb")
    # fp16 weights: 26,031,728,640 B = 24.24 GiB; TP2: 12.12 GiB/GPU; KV free 36 - 12.12 - 2
    # = 21.88 GiB; KV per token per GPU 2 x 40 x (40 / 2 = 20) x 128 x 2 = 409,600 B
    # -> 57,351 tokens -> 14 sequences of 4096.
    tp2 = p.option(2, "fp16")
    assert tp2.feasible and tp2.kv_tokens == pytest.approx(57_351, rel=1e-4) and tp2.max_batch == 14
    # TP1 fits too, barely: 36 - 24.24 - 2 = 9.76 GiB at 819,200 B/token = 12,787 tokens -> 3.
    assert p.option(1, "fp16").max_batch == 3
    # 40 heads: TP8 divides them (5 per GPU); every TP in {1,2,4,8} is allowed.
    assert all(o.feasible for o in p.options)


def test_tp_must_divide_the_heads(reference_model):
    # SmolLM2-135M has 9 attention heads (3 KV heads): only TP1 divides 9.
    p = plan_checkpoint(reference_model, "h100-80gb")
    for o in p.options:
        if o.tp == 1:
            assert o.feasible
        else:
            assert not o.feasible and f"TP{o.tp} does not divide the 9 attention heads" == o.reason


def test_precisions_per_hardware():
    f = facts("Mistral-7B-v0.1")
    assert {o.precision for o in plan(f, "a100-80gb").options} == {"fp16", "bf16", "int8", "int4_awq"}
    assert {o.precision for o in plan(f, "h100-80gb").options} == {"fp16", "bf16", "int8", "int4_awq", "fp8"}
    cpu = plan(f, "cpu")
    assert {o.precision for o in cpu.options} == {"int8", "int4"}
    # the cpu target is one process: TP>1 rejected with its reason
    assert [o.tp for o in cpu.feasible()] == [1, 1]
    assert all("TP 1 only" in o.reason for o in cpu.options if o.tp > 1)


def test_seq_len_and_kv_cache_left():
    f = facts("CodeLlama-34b-hf")
    # bf16 weights 67,487,940,608 B = 62.85 GiB; on one H100 (79.6 GiB x 0.9 = 71.64 usable):
    # KV free 71.64 - 62.85 - 2 = 6.79 GiB; per token 2 x 48 x 8 x 128 x 2 = 196,608 B
    # -> 37,073 tokens: 2 sequences of 16,384 tokens, 9 of 4096.
    p = plan(f, "h100-80gb", seq_len=16384)
    o = p.option(1, "bf16")
    assert o.feasible and o.kv_tokens == pytest.approx(37_073, rel=1e-3) and o.max_batch == 2
    assert plan(f, "h100-80gb").option(1, "bf16").max_batch == 9
    # a sequence longer than the model's positions is refused with the reason
    too_long = plan(facts("Llama-2-70b-hf"), "h100-80gb", seq_len=8192)
    assert not too_long.feasible() and "exceeds the model's 4096 max positions" in too_long.options[0].reason


def test_assumptions_are_parameters():
    f = facts("Llama-2-70b-hf")
    # with 95 % usable (76 GiB) and 1 GiB workspace, TP2 fp16 keeps 76 - 64.24 - 1 = 10.76 GiB of KV
    # -> 10.76 x 2^30 / 163,840 = 70,517 tokens -> 17 sequences.
    o = plan(f, "a100-80gb", usable_fraction=0.95, workspace_gib=1.0).option(2, "fp16")
    assert o.max_batch == 17
    layout = o.to_layout()
    assert (layout.tp, layout.dtype, layout.quantization, layout.max_batch) == (2, "fp16", "none", 17)
