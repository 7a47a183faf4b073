"""Safetensors only, no remote code, known architectures only — for local dirs and Hub repos."""

from __future__ import annotations

import json
import shutil

import pytest

from builders import build_engine, read_manifest
from builders.errors import UnsafeCheckpointError, UnsupportedArchitectureError
from builders.facts import SUPPORTED_ARCHITECTURES, inspect_checkpoint
from builders.planner import plan_checkpoint, plan_source
from onramp.errors import OnrampError
from onramp.mirror import publish


@pytest.fixture
def bin_only(tiny_llama, tmp_path):
    """A checkpoint whose weights are a pickled pytorch_model.bin (never unpickled by onramp)."""
    d = tmp_path / "bin-only"
    d.mkdir()
    for name in ("config.json", "tokenizer.json", "tokenizer_config.json"):
        shutil.copy(tiny_llama / name, d / name)
    (d / "pytorch_model.bin").write_bytes(b"\x80\x04not really a pickle")
    return d


def test_bin_only_checkpoint_is_refused(bin_only, tmp_path):
    with pytest.raises(UnsafeCheckpointError, match="only pickled weights \\(pytorch_model.bin\\).*safetensors only"):
        build_engine(bin_only, out_root=tmp_path / "engines")
    assert not (tmp_path / "engines").exists()
    with pytest.raises(UnsafeCheckpointError):
        plan_checkpoint(bin_only, "cpu")


def test_unknown_architecture_is_refused_with_the_supported_list(tiny_llama, tmp_path):
    d = tmp_path / "gpt2ish"
    shutil.copytree(tiny_llama, d)
    config = json.loads((d / "config.json").read_text())
    config["architectures"] = ["GPT2LMHeadModel"]
    (d / "config.json").write_text(json.dumps(config))
    with pytest.raises(UnsupportedArchitectureError) as err:
        inspect_checkpoint(d)
    assert "GPT2LMHeadModel" in str(err.value)
    assert all(arch in str(err.value) for arch in SUPPORTED_ARCHITECTURES)


def test_remote_code_is_refused(tiny_llama, tmp_path):
    d = tmp_path / "remote"
    shutil.copytree(tiny_llama, d)
    config = json.loads((d / "config.json").read_text())
    config["auto_map"] = {"AutoModelForCausalLM": "modeling_evil.EvilForCausalLM"}
    (d / "config.json").write_text(json.dumps(config))
    with pytest.raises(UnsafeCheckpointError, match="remote code"):
        build_engine(d, out_root=tmp_path / "engines")


@pytest.mark.slow
def test_hub_sources_go_through_the_pinned_safetensors_pull(hub_mirror, tiny_llama, bin_only, monkeypatch, tmp_path):
    monkeypatch.setenv("ONRAMP_HF_ENDPOINT", hub_mirror.url)
    publish("onramp-test/bin-only", bin_only, hub_mirror.mirror_dir)
    with pytest.raises(OnrampError, match="only pickled weights"):
        build_engine("onramp-test/bin-only", out_root=tmp_path / "engines")
    with pytest.raises(OnrampError, match="only pickled weights"):
        plan_source("onramp-test/bin-only", "cpu")

    sha = publish("onramp-test/tiny-llama", tiny_llama, hub_mirror.mirror_dir)
    planned = plan_source("onramp-test/tiny-llama", "cpu")
    assert planned.facts.layers == 2 and planned.feasible()
    engine = build_engine("onramp-test/tiny-llama", out_root=tmp_path / "engines")
    manifest = read_manifest(engine)
    assert manifest.source.repo == "onramp-test/tiny-llama" and manifest.source.revision == sha
    assert manifest.name == "tiny-llama" and "openvino_model.xml" in manifest.files
