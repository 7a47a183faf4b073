"""int4 builds for the CPU: the planner proposes them beside int8, the OpenVINO builder makes one of
the reference model (4-bit weights in groups chosen per model), it serves chat answers, and the
evals measure its KL divergence so the gates can judge it like any layout."""

from __future__ import annotations

import math
import os
import re
from pathlib import Path

import pytest

from builders.facts import inspect_checkpoint
from builders.openvino import int4_group_size
from builders.planner import plan
from onramp.reference import HUB_REPO_ID, PARIS_QUESTION


def test_planner_proposes_int4_beside_int8_on_cpu_smallest_first(reference_model):
    facts = inspect_checkpoint(reference_model)
    result = plan(facts, "cpu")
    candidates = result.candidates()
    assert [(o.precision, o.tp) for o in candidates] == [("int4", 1), ("int8", 1)]
    assert candidates[0].weights_gib < candidates[1].weights_gib
    assert [o.precision for o in result.candidates(["int8"])] == ["int8"]
    # GPUs: one candidate per precision offered, the 16-bit ones after the 8- and 4-bit ones
    gpu = [o.precision for o in plan(facts, "h100-80gb").candidates()]
    assert sorted(gpu) == ["bf16", "fp16", "fp8", "int4_awq", "int8"] and gpu[0] == "int4_awq"


def test_onboard_plan_selects_int8_and_int4_ranked_by_the_planner(reference_model):
    from builders.targets import plan_targets
    from onramp.errors import OnrampError

    both = [p for p in plan_targets(reference_model, ["cpu"], "int8,int4") if p.selected]
    assert sorted((p.rank, p.precision, p.quantization) for p in both) == [(0, "int4", "int4"), (1, "int8", "int8")]
    assert all(p.layout and p.backend == "openvino" for p in both)
    default = [p for p in plan_targets(reference_model, ["cpu"]) if p.selected]
    assert [(p.precision, p.rank) for p in default] == [("int8", 0)]  # int4 is built only when asked for
    with pytest.raises(OnrampError, match="offers no precision 'fp8'"):
        plan_targets(reference_model, ["cpu"], "int8,fp8")


def test_onboard_plan_builds_each_compute_variant_of_a_layout_ranked_as_given(reference_model, tiny_llama):
    from builders.targets import plan_targets
    from onramp.errors import OnrampError

    chosen = [p for p in plan_targets(reference_model, ["cpu"], "int8", "f32-dq32,f32") if p.selected]
    assert [(p.rank, p.key, p.runtime_precision) for p in sorted(chosen, key=lambda p: p.rank)] == [
        (0, "cpu-tp1-int8-f32-dq32", "f32-dq32"), (1, "cpu-tp1-int8-f32", "f32")]
    both = sorted((p for p in plan_targets(reference_model, ["cpu"], "int8,int4", "f32-dq32,f32") if p.selected),
                  key=lambda p: p.rank)
    assert [p.key for p in both] == ["cpu-tp1-int4-f32-dq32", "cpu-tp1-int4-f32", "cpu-tp1-int8-f32-dq32",
                                     "cpu-tp1-int8-f32"]
    assert len({p.key for p in plan_targets(reference_model, ["cpu"], "int8,int4", "f32-dq32,f32")}) == len(
        plan_targets(reference_model, ["cpu"], "int8,int4", "f32-dq32,f32"))  # keys stay unique
    gpu = [p for p in plan_targets(tiny_llama, ["a100-80gb"], None, "f32-dq32") if p.selected]
    assert gpu and all(p.runtime_precision is None for p in gpu)  # TensorRT-LLM records no such variant
    with pytest.raises(OnrampError, match="runtime precision 'f32-dq2'"):
        plan_targets(reference_model, ["cpu"], "int8", "f32-dq2")


@pytest.mark.slow
def test_int4_engine_manifest_and_weights(ov_int4_engine, ov_int8_engine, reference_model):
    from builders import read_manifest, verify_files

    manifest = read_manifest(ov_int4_engine)
    verify_files(ov_int4_engine, manifest)
    assert manifest.source.repo == HUB_REPO_ID and manifest.backend == "openvino"
    assert manifest.layout.quantization == "int4" and manifest.layout.tp == 1
    assert manifest.runtime.properties["INFERENCE_PRECISION_HINT"] == "f32"  # numerics fixed at build time
    assert manifest.build_id != read_manifest(ov_int8_engine).build_id
    # the export used the group size chosen for this model (64: 128 does not divide SmolLM2's 576)
    group = int4_group_size(inspect_checkpoint(reference_model))
    assert group == 64
    # the IR holds 4-bit weights as [out, in / group, group] (and their zero points as [..., 1])
    xml = (ov_int4_engine / "openvino_model.xml").read_text()
    shapes = [tuple(int(d) for d in s.split(",")) for s in re.findall(r'element_type="u4" shape="([0-9, ]+)"', xml)]
    assert len(shapes) > 10 and all(len(s) == 3 for s in shapes)
    assert {s[-1] for s in shapes} == {group, 1}
    assert (576, 576 // group, group) in shapes  # a 576 -> 576 projection (q_proj, o_proj)
    # and its weights file is smaller than the int8 engine's
    assert manifest.files["openvino_model.bin"].size < 0.8 * read_manifest(ov_int8_engine).files[
        "openvino_model.bin"].size


@pytest.mark.slow
def test_int4_engine_serves_a_chat_answer(ov_int4_engine, tmp_path):
    from openai import OpenAI

    from serving.process import run_onramp_serve

    with run_onramp_serve(["--engine", f"smollm2-int4={ov_int4_engine}", "--no-auth"],
                          log=tmp_path / "serve.log", timeout=600) as server:
        client = OpenAI(api_key="unused", base_url=f"{server.url}/v1", timeout=300)
        resp = client.chat.completions.create(model="smollm2-int4", temperature=0, max_tokens=16,
                                              messages=[{"role": "user", "content": PARIS_QUESTION}])
        assert resp.model == "smollm2-int4"
        assert resp.choices[0].message.content.strip()  # an answer, whatever its words
        assert resp.choices[0].finish_reason in ("stop", "length")
        assert 0 < resp.usage.completion_tokens <= 16 and resp.usage.prompt_tokens > 10
        stream = client.chat.completions.create(model="smollm2-int4", temperature=0, max_tokens=8, stream=True,
                                                messages=[{"role": "user", "content": "Say hello."}])
        assert "".join(c.choices[0].delta.content or "" for c in stream if c.choices).strip()


@pytest.mark.slow
def test_int4_kld_is_measured_and_judged_by_the_gates(ov_int4_engine, ov_int8_engine, reference_model):
    from evals.config import Profile
    from evals.gates import apply_gates
    from evals.kld import TransformersLogits, compare_logits, engine_logits_model
    from evals.quality import _hash_checkpoint

    small = Profile(name="small", kld_corpus_docs=4, kld_gsm8k=2, kld_bootstrap=500)
    digest, cache = _hash_checkpoint(reference_model), Path(os.environ["ONRAMP_CACHE_DIR"])
    reference = TransformersLogits(reference_model)
    results = {name: compare_logits(reference_model, engine_logits_model(engine), small, checkpoint_hash=digest,
                                    cache_dir=cache, reference=reference)
               for name, engine in (("int4", ov_int4_engine), ("int8", ov_int8_engine))}
    int4, int8 = results["int4"], results["int8"]
    assert int4.n_tokens == int8.n_tokens > 500
    assert all(math.isfinite(v) for v in int4.metrics().values())
    # 4-bit weights move the distribution far more than 8-bit ones (0.41 vs 0.0045 nats on the quick profile)
    assert int4.kld_mean > 5 * int8.kld_mean and int4.top1_agreement < int8.top1_agreement
    checks = {c.metric: c for c in apply_gates(int4.metrics(), sections=["quality"]).checks}
    for metric in ("kld_mean_ci_high", "kld_p99_ci_high", "top1_agreement_ci_low"):
        assert checks[metric].value == pytest.approx(int4.metrics()[metric])  # judged like any build
