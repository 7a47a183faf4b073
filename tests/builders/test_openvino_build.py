"""The OpenVINO builder end to end on the real reference model (SmolLM2-135M-Instruct)."""

from __future__ import annotations

from onramp.reference import PARIS_QUESTION
import json

import pytest

from builders import build_engine, read_manifest, verify_files
from builders.errors import ManifestError
from builders.ov_runtime import load_properties
from onramp.reference import HUB_REPO_ID




@pytest.mark.slow
def test_int8_engine_answers_paris(ov_int8_engine):
    import openvino_genai

    pipe = openvino_genai.LLMPipeline(str(ov_int8_engine), "CPU", **load_properties(ov_int8_engine))
    tok = pipe.get_tokenizer()
    prompt = tok.apply_chat_template([{"role": "user", "content": PARIS_QUESTION}],
                                     add_generation_prompt=True)
    assert prompt.endswith("<|im_start|>assistant\n")  # the chat template travelled with the engine
    config = openvino_genai.GenerationConfig()
    config.max_new_tokens = 16
    answer = pipe.generate(prompt, config)
    assert "Paris" in str(answer)


@pytest.mark.slow
def test_int8_engine_runs_under_continuous_batching(ov_int8_engine):
    import openvino_genai

    scheduler = openvino_genai.SchedulerConfig()
    scheduler.cache_size = 1  # GB of KV cache
    pipe = openvino_genai.ContinuousBatchingPipeline(str(ov_int8_engine), scheduler, "CPU",
                                                     load_properties(ov_int8_engine))
    prompt = pipe.get_tokenizer().apply_chat_template(
        [{"role": "user", "content": PARIS_QUESTION}], add_generation_prompt=True)
    config = openvino_genai.GenerationConfig()
    config.max_new_tokens = 16
    results = pipe.generate([prompt, prompt], [config, config])
    assert all("Paris" in r.m_generation_ids[0] for r in results)


@pytest.mark.slow
def test_manifest_describes_the_engine(ov_int8_engine):
    manifest = read_manifest(ov_int8_engine)
    assert manifest.name == "smollm2-135m-instruct"
    assert manifest.source.repo == HUB_REPO_ID
    assert manifest.backend == "openvino" and manifest.backend_version.startswith("2026.4")
    assert manifest.layout.quantization == "int8" and manifest.layout.tp == 1
    for name in ("openvino_model.xml", "openvino_model.bin", "openvino_tokenizer.xml",
                 "openvino_detokenizer.xml", "chat_template.jinja", "config.json", "generation_config.json"):
        assert name in manifest.files
    assert manifest.build_seconds > 0
    # numerics are chosen at build time, never left to the device (bf16 on CPUs with AVX-512 BF16)
    assert manifest.runtime.properties["INFERENCE_PRECISION_HINT"] == "f32"
    assert manifest.runtime.properties["KV_CACHE_PRECISION"] == "u8"
    assert manifest.runtime.properties["DYNAMIC_QUANTIZATION_GROUP_SIZE"] == 0
    assert manifest.runtime.scheduler["enable_prefix_caching"] is True
    verify_files(ov_int8_engine, manifest)


@pytest.mark.slow
def test_second_build_request_returns_the_cached_engine(ov_int8_engine, reference_model):
    before = read_manifest(ov_int8_engine)
    inode = ov_int8_engine.stat().st_ino
    again = build_engine(reference_model, backend="openvino", quant="int8",
                         out_root=ov_int8_engine.parent, repo=HUB_REPO_ID)
    assert again == ov_int8_engine
    assert again.stat().st_ino == inode  # same directory, not a rebuilt one renamed into place
    assert read_manifest(again).created == before.created


@pytest.mark.slow
def test_corrupted_engine_file_is_detected(ov_int8_engine, tmp_path):
    import shutil

    copy = tmp_path / "engine"
    shutil.copytree(ov_int8_engine, copy)
    manifest = read_manifest(copy)
    xml = copy / "openvino_detokenizer.xml"
    data = bytearray(xml.read_bytes())
    data[100] ^= 0x01  # same size, one bit flipped
    xml.write_bytes(bytes(data))
    with pytest.raises(ManifestError, match="openvino_detokenizer.xml.*sha256"):
        verify_files(copy, manifest)
    (copy / "openvino_detokenizer.xml").unlink()
    with pytest.raises(ManifestError, match="openvino_detokenizer.xml.*missing"):
        verify_files(copy, manifest)
    raw = json.loads((copy / "manifest.json").read_text())
    raw["surprise"] = 1
    (copy / "manifest.json").write_text(json.dumps(raw))
    with pytest.raises(ManifestError, match="surprise"):
        read_manifest(copy)


def test_export_command_int4_picks_a_group_size_that_divides_the_channels(reference_model, tmp_path):
    import sys

    from builders.facts import inspect_checkpoint
    from builders.openvino import export_command

    facts = inspect_checkpoint(reference_model)
    # SmolLM2-135M: hidden 576 = 64 x 9 (128 does not divide it), intermediate 1536, 9 heads x 64
    cmd = export_command(reference_model, tmp_path / "out", "int4", facts)
    assert cmd == [sys.executable, "-m", "optimum.commands.optimum_cli", "export", "openvino", "--model",
                   str(reference_model), "--task", "text-generation-with-past", "--weight-format", "int4",
                   "--group-size", "64", str(tmp_path / "out")]
    assert "--trust-remote-code" not in export_command(reference_model, tmp_path, "int8", facts)


def test_checkpoint_digest_is_remembered_until_a_file_changes(tmp_path):
    import os

    from builders.build import checkpoint_digest

    ckpt = tmp_path / "ckpt"
    ckpt.mkdir()
    (ckpt / "config.json").write_text("{}")
    (ckpt / "model.safetensors").write_bytes(b"a" * 1000)
    memo = tmp_path / "memo"
    first = checkpoint_digest(ckpt, memo)
    assert checkpoint_digest(ckpt, memo) == first == checkpoint_digest(ckpt)  # memo and fresh agree
    (ckpt / "model.safetensors").write_bytes(b"b" * 1000)  # same size, new content and mtime
    os.utime(ckpt / "model.safetensors", ns=(1, 1))
    changed = checkpoint_digest(ckpt, memo)
    assert changed != first and changed == checkpoint_digest(ckpt)
