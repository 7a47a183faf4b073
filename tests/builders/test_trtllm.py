"""The TensorRT-LLM builder: the exact commands for the seed models' layouts, and "unavailable" here.

Layouts come from the planner (see test_planner.py for their figures); every flag is one that
TensorRT-LLM documents (sources cited in builders/trtllm.py).
"""

from __future__ import annotations

import shlex
from pathlib import Path

import pytest

from builders import build_engine
from builders.errors import BuilderError, BuildUnavailable
from builders.facts import facts_from_config, read_config
from builders.planner import plan
from builders.trtllm import TensorRTLLMBackend, trtllm_commands

FIXTURES = Path(__file__).parent / "fixtures"
EX = "/app/tensorrt_llm/examples"
BUILD_FLAGS = ("--gemm_plugin auto --gpt_attention_plugin auto --max_batch_size {b} --max_input_len 2048 "
               "--max_seq_len 4096 --max_num_tokens 8192 --kv_cache_type paged --remove_input_padding enable "
               "--context_fmha enable --use_paged_context_fmha enable --workers {w}")


def commands(model, hardware, tp, precision):
    facts = facts_from_config(read_config(FIXTURES / model), FIXTURES / model)
    layout = plan(facts, hardware).option(tp, precision).to_layout()
    return trtllm_commands(Path("/models") / model, facts, layout, checkpoint_dir=Path("/work/ckpt"),
                           engine_dir=Path("/work/engine"), examples=Path(EX))


def test_llama_2_13b_fp16_on_two_a100s():
    # the seed's layout: TP2 on A100-40GB, 14 sequences of 4096 (test_planner)
    c = commands("Llama-2-13b-hf", "a100-40gb", 2, "fp16")
    assert shlex.join(c.convert) == (
        f"python3 {EX}/models/core/llama/convert_checkpoint.py --model_dir /models/Llama-2-13b-hf "
        "--output_dir /work/ckpt --dtype float16 --tp_size 2 --pp_size 1 --workers 2")
    assert shlex.join(c.build) == ("trtllm-build --checkpoint_dir /work/ckpt --output_dir /work/engine "
                                   + BUILD_FLAGS.format(b=14, w=2))
    assert c.engine_files == ["config.json", "rank0.engine", "rank1.engine"]


def test_llama_2_70b_fp16_tp4_and_int8_tp1():
    c = commands("Llama-2-70b-hf", "a100-80gb", 4, "fp16")
    assert shlex.join(c.convert) == (
        f"python3 {EX}/models/core/llama/convert_checkpoint.py --model_dir /models/Llama-2-70b-hf "
        "--output_dir /work/ckpt --dtype float16 --tp_size 4 --pp_size 1 --workers 4")
    assert shlex.join(c.build).endswith(BUILD_FLAGS.format(b=121, w=4))
    assert c.engine_files == ["config.json"] + [f"rank{r}.engine" for r in range(4)]
    q = commands("Llama-2-70b-hf", "a100-80gb", 1, "int8")
    assert shlex.join(q.convert) == (
        f"python3 {EX}/models/core/llama/convert_checkpoint.py --model_dir /models/Llama-2-70b-hf "
        "--output_dir /work/ckpt --dtype float16 --tp_size 1 --pp_size 1 "
        "--use_weight_only --weight_only_precision int8 --workers 1")
    assert shlex.join(q.build).endswith(BUILD_FLAGS.format(b=4, w=1))


def test_codellama_34b_awq_and_mistral_fp8_use_quantize_py():
    c = commands("CodeLlama-34b-hf", "a100-80gb", 2, "int4_awq")
    assert shlex.join(c.convert) == (
        f"python3 {EX}/quantization/quantize.py --model_dir /models/CodeLlama-34b-hf --output_dir /work/ckpt "
        "--dtype float16 --qformat int4_awq --awq_block_size 128 --calib_size 32 --tp_size 2 --pp_size 1")
    m = commands("Mistral-7B-v0.1", "h100-80gb", 1, "fp8")
    # Mistral v0.1 converts with the llama example; FP8 through ModelOpt's quantize.py
    assert shlex.join(m.convert) == (
        f"python3 {EX}/quantization/quantize.py --model_dir /models/Mistral-7B-v0.1 --output_dir /work/ckpt "
        "--dtype bfloat16 --qformat fp8 --calib_size 512 --tp_size 1 --pp_size 1")
    assert "--workers 1" in shlex.join(m.build)


def test_script_is_runnable_bash(tmp_path):
    c = commands("Mistral-7B-v0.1", "a100-80gb", 1, "bf16")
    script = c.script()
    assert script.startswith("#!/usr/bin/env bash\nset -euo pipefail\n")
    assert "convert_checkpoint.py" in script and "trtllm-build" in script
    (tmp_path / "b.sh").write_text(script)
    import subprocess

    assert subprocess.run(["bash", "-n", str(tmp_path / "b.sh")]).returncode == 0  # parses


def test_bad_layouts_are_refused():
    facts = facts_from_config(read_config(FIXTURES / "Llama-2-13b-hf"))
    from builders.manifest import Layout

    with pytest.raises(BuilderError, match="does not divide the 40 attention heads"):
        trtllm_commands(Path("/m"), facts, Layout(hardware="a100-80gb", tp=3, dtype="fp16", quantization="none"),
                        checkpoint_dir=Path("/c"), engine_dir=Path("/e"), examples=Path(EX))


def test_default_layout_is_the_smallest_feasible_tp():
    facts = facts_from_config(read_config(FIXTURES / "Llama-2-70b-hf"))
    layout = TensorRTLLMBackend(hardware="a100-80gb").default_layout(facts, "none")
    assert (layout.tp, layout.dtype, layout.quantization) == (2, "fp16", "none")  # TP1 does not fit


def test_build_here_says_unavailable(tiny_llama, tmp_path):
    with pytest.raises(BuildUnavailable, match="^unavailable: tensorrt_llm is not installed"):
        build_engine(tiny_llama, backend="tensorrt_llm", quant="none", out_root=tmp_path / "engines")
    out = tmp_path / "engines"
    # nothing half-written: no engine dir, no .tmp-* build dir (only the checkpoint digest memo)
    assert [p.name for p in out.iterdir()] == [".digests"]
