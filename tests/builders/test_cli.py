"""``onramp plan`` and ``onramp build`` through the real CLI app."""

from __future__ import annotations

import json
from pathlib import Path

from typer.testing import CliRunner

from onramp.cli import app

FIXTURES = Path(__file__).parent / "fixtures"
runner = CliRunner()


def test_plan_prints_the_table_with_reasons():
    result = runner.invoke(app, ["plan", str(FIXTURES / "Llama-2-70b-hf"), "--hardware", "a100-80gb"])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert "68.98B params" in lines[0]
    tp1 = next(line for line in lines if line.split()[:2] == ["1", "fp16"])
    assert "no: weights 128.5 GiB/device + workspace 2 GiB exceed the 72.0 GiB usable" in tp1
    tp4 = next(line for line in lines if line.split()[:2] == ["4", "fp16"])
    assert tp4.rstrip().endswith("121  ok")


def test_plan_json():
    result = runner.invoke(app, ["plan", str(FIXTURES / "Llama-2-13b-hf"), "--hardware", "a100-40gb", "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    assert data["model"]["params"] == 13_015_864_320
    tp2 = next(o for o in data["options"] if o["tp"] == 2 and o["precision"] == "fp16")
    assert tp2["feasible"] and tp2["max_batch"] == 14


def test_plan_unknown_hardware_is_one_line():
    result = runner.invoke(app, ["plan", str(FIXTURES / "Llama-2-13b-hf"), "--hardware", "tpu-v5"])
    assert result.exit_code == 1
    assert "unknown hardware 'tpu-v5'" in result.output and "a100-40gb" in result.output
    assert "Traceback" not in result.output


def test_build_refuses_bin_only_in_one_line(tmp_path):
    d = tmp_path / "ckpt"
    d.mkdir()
    (d / "config.json").write_text(json.dumps({"architectures": ["LlamaForCausalLM"]}))
    (d / "pytorch_model.bin").write_bytes(b"x")
    result = runner.invoke(app, ["build", str(d), "--out", str(tmp_path / "engines")])
    assert result.exit_code == 1
    assert "only pickled weights" in result.output and "Traceback" not in result.output


def test_build_prints_the_cached_engine_dir(ov_int8_engine, reference_model):
    from onramp.reference import HUB_REPO_ID

    result = runner.invoke(app, ["build", str(reference_model), "--backend", "openvino", "--quant", "int8",
                                 "--out", str(ov_int8_engine.parent), "--repo", HUB_REPO_ID])
    assert result.exit_code == 0, result.output
    assert result.stdout.strip().splitlines()[-1] == str(ov_int8_engine)


def test_build_tensorrt_llm_here_is_unavailable_after_planning(tiny_llama, tmp_path):
    args = ["build", str(tiny_llama), "--backend", "tensorrt_llm", "--quant", "none", "--hardware", "a100-40gb",
            "--out", str(tmp_path / "engines")]
    result = runner.invoke(app, args + ["--tp", "8"])
    # tiny-llama has 4 attention heads: the planner refuses TP8 and says why
    assert result.exit_code == 1 and "TP8 does not divide the 4 attention heads" in result.output
    result = runner.invoke(app, args + ["--tp", "2"])
    assert result.exit_code == 1
    assert "error: unavailable: tensorrt_llm is not installed here" in result.output
    assert "Traceback" not in result.output


def test_importing_builders_imports_no_backend():
    import subprocess
    import sys

    code = ("import sys, builders, builders.build, builders.planner, builders.cli, builders.backends; "
            "heavy = [m for m in sys.modules if m.split('.')[0] in "
            "('openvino', 'openvino_genai', 'tensorrt_llm', 'torch', 'optimum', 'nncf', 'transformers')]; "
            "print(heavy); sys.exit(1 if heavy else 0)")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_build_dry_run_prints_the_commands_and_builds_nothing(tmp_path):
    out = tmp_path / "engines"
    result = runner.invoke(app, ["build", str(FIXTURES / "Llama-2-13b-hf"), "--backend", "tensorrt_llm",
                                 "--quant", "none", "--hardware", "a100-40gb", "--tp", "2", "--dry-run",
                                 "--out", str(out)])
    assert result.exit_code == 0, result.output
    text = result.output
    assert "layout: hardware=a100-40gb, tp=2, pp=1, dtype=fp16, quantization=none, max_batch=14" in text
    assert "status: not built" in text
    assert "    --tp_size 2 \\\n    --pp_size 1 \\\n    --workers 2\n" in text
    assert "    --max_batch_size 14 \\\n" in text and "    --kv_cache_type paged \\\n" in text
    assert not list(out.glob("llama-2-13b-hf*")) and not list(out.glob(".tmp-*"))
