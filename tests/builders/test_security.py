"""Safetensors only, no remote code, known architectures only — for local dirs and Hub repos."""

from __future__ import annotations

import json
import shutil

import pytest

from builders import build_engine
from builders.build import compute_build_id, prepare_build
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
    # the build of a Hub source: a pinned pull, identified by the revision sha (the OpenVINO
    # export itself is exercised on the reference model in test_openvino_build.py)
    req = prepare_build("onramp-test/tiny-llama", out_root=tmp_path / "engines")
    assert (req.repo, req.revision, req.name) == ("onramp-test/tiny-llama", sha, "tiny-llama")
    assert (req.checkpoint / "model.safetensors").is_file() and sha in str(req.checkpoint)
    assert req.build_id == compute_build_id(f"sha:{sha}", req.layout, "openvino", req.backend_version,
                                            req.toolchain, req.runtime)
    # a new revision is a new build (even with the same files); asking for the old sha is the old one
    sha2 = publish("onramp-test/tiny-llama", tiny_llama, hub_mirror.mirror_dir, "same files, new revision")
    newer = prepare_build("onramp-test/tiny-llama", out_root=tmp_path / "engines")
    assert newer.revision == sha2 and newer.build_id != req.build_id
    older = prepare_build("onramp-test/tiny-llama", revision=sha, out_root=tmp_path / "engines")
    assert older.build_id == req.build_id
