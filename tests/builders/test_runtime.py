"""The runtime configuration is part of the build: recorded in the manifest, honoured at every load."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from builders.build import prepare_build
from builders.errors import BuilderError
from builders.ov_runtime import (CPU_LOAD_DEFAULTS, DEFAULT_PROPERTIES, PRECISION_ENV, load_properties,
                                 scheduler_settings)
from onramp.cli import app

runner = CliRunner()


def test_default_cpu_build_records_f32_and_a_bf16_variant_is_its_own_build(tiny_llama, tmp_path, monkeypatch):
    monkeypatch.delenv(PRECISION_ENV, raising=False)
    plain = prepare_build(tiny_llama, out_root=tmp_path)
    assert plain.runtime.properties == DEFAULT_PROPERTIES
    assert plain.runtime.properties["INFERENCE_PRECISION_HINT"] == "f32"
    bf16 = prepare_build(tiny_llama, out_root=tmp_path, runtime_precision="bf16")
    assert bf16.runtime.properties["INFERENCE_PRECISION_HINT"] == "bf16"
    assert bf16.build_id != plain.build_id and bf16.final != plain.final
    with pytest.raises(BuilderError, match="not one of"):
        prepare_build(tiny_llama, out_root=tmp_path, runtime_precision="int3")


def test_a_dynamic_quantization_variant_is_its_own_build(tiny_llama, tmp_path, monkeypatch):
    monkeypatch.delenv(PRECISION_ENV, raising=False)
    plain = prepare_build(tiny_llama, out_root=tmp_path)
    dq = prepare_build(tiny_llama, out_root=tmp_path, runtime_precision="f32-dq32")
    assert dq.runtime.properties == {**DEFAULT_PROPERTIES, "DYNAMIC_QUANTIZATION_GROUP_SIZE": 32}
    assert dq.build_id != plain.build_id and dq.final != plain.final
    bf16dq = prepare_build(tiny_llama, out_root=tmp_path, runtime_precision="bf16-dq64")
    assert bf16dq.runtime.properties["INFERENCE_PRECISION_HINT"] == "bf16"
    assert bf16dq.runtime.properties["DYNAMIC_QUANTIZATION_GROUP_SIZE"] == 64
    for bad, why in (("f32-dq", "not one of"), ("f32-dq3", "group must be"), ("int8-dq32", "not one of")):
        with pytest.raises(BuilderError, match=why):
            prepare_build(tiny_llama, out_root=tmp_path, runtime_precision=bad)


def test_dry_run_prints_the_runtime_properties(tiny_llama, tmp_path):
    result = runner.invoke(app, ["build", str(tiny_llama), "--out", str(tmp_path), "--dry-run",
                                 "--runtime-precision", "bf16"])
    assert result.exit_code == 0, result.output
    assert "INFERENCE_PRECISION_HINT=bf16" in result.output
    assert "KV_CACHE_PRECISION=u8" in result.output and "enable_prefix_caching=True" in result.output


def test_load_properties_come_from_the_manifest_and_the_override_wins(ov_int8_engine, monkeypatch):
    monkeypatch.delenv(PRECISION_ENV, raising=False)
    props = load_properties(ov_int8_engine)
    assert props["INFERENCE_PRECISION_HINT"] == "f32" and props["KV_CACHE_PRECISION"] == "u8"
    assert scheduler_settings(ov_int8_engine)["cache_size"] == 1
    monkeypatch.setenv(PRECISION_ENV, "bf16")
    assert load_properties(ov_int8_engine)["INFERENCE_PRECISION_HINT"] == "bf16"
    monkeypatch.setenv(PRECISION_ENV, "fp64")
    with pytest.raises(BuilderError, match=PRECISION_ENV):
        load_properties(ov_int8_engine)


def test_cpu_threads_are_unpinned_unless_the_manifest_records_pinning(monkeypatch):
    from types import SimpleNamespace

    monkeypatch.delenv(PRECISION_ENV, raising=False)
    plain = SimpleNamespace(runtime={"properties": dict(DEFAULT_PROPERTIES)})
    assert load_properties(plain)["ENABLE_CPU_PINNING"] is False
    assert load_properties(plain) == {**DEFAULT_PROPERTIES, **CPU_LOAD_DEFAULTS}
    assert "ENABLE_CPU_PINNING" not in load_properties(plain, device="GPU")  # a CPU plugin property
    pinned = SimpleNamespace(runtime={"properties": {**DEFAULT_PROPERTIES, "ENABLE_CPU_PINNING": True}})
    assert load_properties(pinned)["ENABLE_CPU_PINNING"] is True


def test_the_serving_engine_loads_with_the_manifest_properties(ov_int8_engine, monkeypatch):
    from serving.engines import load_engine

    monkeypatch.setenv(PRECISION_ENV, "f32")
    engine = load_engine(ov_int8_engine, name="m")
    try:
        assert engine.properties == load_properties(ov_int8_engine)
    finally:
        engine.close()
