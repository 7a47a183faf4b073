"""The onboard flow: its steps on real checkpoints, engines and MLflow, and the flow end to end.

The slow test drives the whole story on the real parts: a new revision on the loopback
mirror (olah) → the ``onboard`` flow on a real Prefect API (Completed) → the MLflow version at
alias ``production`` → ``onramp serve --registry`` (a subprocess with the real OpenVINO engine)
answering from that version; a rerun of the revision builds nothing; a new revision that fails
its gates leaves production where it was.
"""

from __future__ import annotations

import threading
import time

import pytest
import yaml

from builders import targets
from evals import build_eval
from flows import steps
from flows.onboard import OnboardConfig
from onramp.errors import OnrampError
from onramp.settings import load_settings

# ------------------------------------------------------------------------------ fast


def test_config_validation():
    cfg = OnboardConfig(repo="acme/model", targets="cpu, a100-80gb")
    assert cfg.targets == ["cpu", "a100-80gb"] and cfg.revision == "main" and cfg.profile == "quick"
    assert OnboardConfig(repo="a/b", runtime_precision="f32-dq32,f32").runtime_precision == "f32-dq32,f32"
    for bad in ({"repo": "no-slash"}, {"repo": "a/b/c"}, {"repo": "a/b", "targets": ""},
                {"repo": "a/b", "unknown": 1},
                {"repo": "a/b", "runtime_precision": "f32-dq32,int9"}):
        with pytest.raises(ValueError):
            OnboardConfig(**bad)


def test_plan_selects_one_layout_per_target(reference_model):
    plans = targets.plan_targets(reference_model, ["cpu", "a100-80gb", "h100-80gb"])
    selected = {p.target: p for p in plans if p.selected}
    assert set(selected) == {"cpu", "a100-80gb", "h100-80gb"}
    cpu = selected["cpu"]
    assert (cpu.backend, cpu.precision, cpu.tp) == ("openvino", "int8", 1)
    gpu = selected["a100-80gb"]
    assert (gpu.backend, gpu.precision, gpu.tp) == ("tensorrt_llm", "bf16", 1)  # the checkpoint's dtype
    assert gpu.layout["tp"] == 1 and gpu.layout["max_batch"] >= 1
    rejected = [p for p in plans if not p.feasible]
    assert rejected and all(p.reason for p in rejected)
    # SmolLM2-135M has 9 attention heads: TP2 cannot split them, and the row says so
    assert any(p.tp == 2 and "heads" in p.reason for p in rejected)
    assert len({p.key for p in plans}) == len(plans)
    int4 = [p for p in targets.plan_targets(reference_model, ["cpu"], "int4") if p.selected]
    assert [(p.precision, p.quantization) for p in int4] == [("int4", "int4")]


def test_plan_refuses_unknown_hardware_and_precision(reference_model):
    with pytest.raises(OnrampError, match="unknown hardware 'tpu-v5'"):
        targets.plan_targets(reference_model, ["tpu-v5"])
    with pytest.raises(OnrampError, match="offers no precision 'fp8'"):
        targets.plan_targets(reference_model, ["cpu"], "fp8")


def test_gpu_layout_says_it_is_unavailable_here(reference_model):
    gpu = next(p for p in targets.plan_targets(reference_model, ["a100-80gb"]) if p.selected)
    with pytest.raises(OnrampError, match="unavailable"):
        targets.build_target(reference_model, gpu, "acme/x", "0" * 40, load_settings())


def test_eval_cache_roundtrip():
    settings = load_settings()
    assert build_eval.load_cached_eval(settings, "b" * 64, "quick") is None
    result = build_eval.EvalResult(build_id="b" * 64, profile="quick", metrics={"perplexity_ratio": 1.01},
                              report_md="## Quality", plot="/nonexistent.png", seconds=3.0)
    legacy = settings.home / "evals" / ("b" * 64) / "quick.json"  # saved by older evals (no KLD)
    legacy.parent.mkdir(parents=True)
    legacy.write_text(result.model_dump_json())
    assert build_eval.load_cached_eval(settings, "b" * 64, "quick") is None  # measured again, not reused
    path = build_eval.save_eval(settings, result)
    assert path == settings.home / "evals" / ("b" * 64) / f"quick.v{build_eval.EVALS_VERSION}.json"
    cached = build_eval.load_cached_eval(settings, "b" * 64, "quick")
    assert cached.cached and cached.metrics == {"perplexity_ratio": 1.01} and cached.plot is None
    assert build_eval.load_cached_eval(settings, "b" * 64, "full") is None
    path.write_text("{broken")
    assert build_eval.load_cached_eval(settings, "b" * 64, "quick") is None  # evaluated again, not trusted


def test_registering_a_build_twice_makes_one_version(ov_int8_engine):
    from registry.client import Registry

    registry = Registry(load_settings())
    name, v1, created = steps.register(registry, ov_int8_engine, run_id=None, gate_passed=False,
                                       metrics={"perplexity_ratio": 1.0}, tags={})
    assert created and registry.client.get_model_version(name, v1).tags["gate"] == "failed"
    name2, v2, created2 = steps.register(registry, ov_int8_engine, run_id=None, gate_passed=True,
                                         metrics={"perplexity_ratio": 1.0}, tags={})
    assert (name2, v2, created2) == (name, v1, False)
    assert len(registry.client.search_model_versions(f"name = '{name}'")) == 1
    # passing its gates now makes it promotable and the candidate
    assert registry.client.get_model_version(name, v1).tags["gate"] == "passed"
    assert registry.alias_version(name, "candidate") == v1
    assert steps.production_metrics(registry, name) is None


def test_latency_ab_only_against_a_production_of_another_build(ov_int8_engine):
    """No production (a first onboarding) or production being this very build: no A/B, and the
    latency gate then has nothing that can flip with the machine's load."""
    from registry.client import Registry

    settings = load_settings()
    registry = Registry(settings)
    name = steps.read_build(ov_int8_engine)["name"]
    first = build_eval.latency_ab(registry, name, ov_int8_engine, "quick", settings)
    assert first.report is None and "no production version yet" in first.note
    name, version, _ = steps.register(registry, ov_int8_engine, run_id=None, gate_passed=True,
                                      metrics={"single_decode_tok_s": 99.0}, tags={})
    registry.promote(name, version)
    same = build_eval.latency_ab(registry, name, ov_int8_engine, "quick", settings)
    assert same.report is None and same.production_version == version and "is production" in same.note
    evaluated = build_eval.EvalResult(build_id="b" * 64, profile="quick", metrics={"single_decode_tok_s": 1.0},
                                 report_md="## Quality")
    merged = build_eval.with_ab(evaluated, same)
    assert merged.metrics == evaluated.metrics and "No side-by-side comparison" in merged.report_md
    # production's stored latency (99 tok/s) decides nothing against this run's (1 tok/s)
    outcome = build_eval.judge(merged.metrics, None, steps.production_metrics(registry, name), latency=True, ab=same)
    assert not any(r["kind"] in ("regression", "ratio") for r in outcome.rows)
    assert "single_decode_tok_s" not in outcome.failed


@pytest.mark.slow
def test_same_weights_new_revision_pass_the_latency_ab_with_a_cpu_hog(ov_int8_engine, tmp_path, monkeypatch):
    """The demo's second revision in small: identical weights under a new build id against
    production, served side by side with a busy process beside them: the gate passes."""
    import json
    import os
    import subprocess
    import sys

    from evals import latency_ab
    from registry.client import Registry

    # a lighter load than the quick profile's (6 rounds) to keep the test short on a busy machine
    monkeypatch.setitem(latency_ab.AB_LOAD, "quick", latency_ab.ABLoad(
        rounds=3, single_requests=1, concurrency=2, input_tokens=64, output_tokens=12, warmup_requests=1))

    settings = load_settings()
    registry = Registry(settings)
    name, version, _ = steps.register(registry, ov_int8_engine, run_id=None, gate_passed=True, metrics={}, tags={})
    registry.promote(name, version)
    candidate = tmp_path / "new-revision"
    candidate.mkdir()
    for src in ov_int8_engine.iterdir():
        if src.is_file() and src.name != "manifest.json":
            os.link(src, candidate / src.name)
    manifest = json.loads((ov_int8_engine / "manifest.json").read_text())
    manifest["build_id"] = "f" * len(manifest["build_id"])
    (candidate / "manifest.json").write_text(json.dumps(manifest))
    hog = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        ab = build_eval.latency_ab(registry, name, candidate, "quick", settings)
    finally:
        hog.kill()
        hog.wait(timeout=30)
    assert ab.report is not None and ab.production_version == version, ab.note
    outcome = build_eval.judge({}, None, None, latency=False, ab=ab)  # (quality not measured here)
    ratios = [r for r in outcome.rows if r["kind"] == "ratio"]
    assert len(ratios) == 3 and all(r["result"] == "pass" for r in ratios), outcome.summary + ab.markdown()
    merged = build_eval.with_ab(build_eval.EvalResult(build_id="f" * 64, profile="quick", metrics={}), ab)
    assert {"ab_output_tok_s_ratio", "ab_production_output_tok_s", "ab_candidate_output_tok_s"} <= set(merged.metrics)
    again = build_eval.latency_ab(registry, name, candidate, "quick", settings)
    assert again.cached and again.report == ab.report  # the pair is measured once


def test_a_missing_repo_fails_at_once_with_the_hub_error(prefect_server, hub_mirror, monkeypatch):
    from flows.onboard import onboard

    monkeypatch.setenv("ONRAMP_HF_ENDPOINT", hub_mirror.url)
    started = time.monotonic()
    state = onboard(OnboardConfig(repo="nobody/no-such-model"), return_state=True)
    assert state.is_failed()
    with pytest.raises(OnrampError, match="repository nobody/no-such-model not found"):
        state.result()
    assert time.monotonic() - started < 30  # not retried: a missing repo is no outage (retries wait 2 + 4 + 8 s)


# ------------------------------------------------------------------------------ end to end

IMPOSSIBLE_GATES = {"version": "test-impossible", "quality": {"perplexity_ratio": {"max": 0.0001}},
                    "latency": {}, "regression": {"max_pct": 10, "metrics": {}}}


@pytest.mark.slow
def test_new_revision_to_served_endpoint_failing_gate_and_rerun(prefect_server, hub_mirror, reference_model,
                                                                monkeypatch, tmp_path):
    """One real build and eval, three onboardings of a new revision on the mirror:

    A. impossible gates: built (the GPU layout fails alone: no TensorRT-LLM here), evaluated,
       registered with gate=failed, not promoted, the run Failed, nothing served;
    B. the real gates, with a human approval: nothing built or evaluated again, the same version
       passes, is promoted, and the server answers from it;
    C. impossible gates again: the run Failed, production and the served version untouched.
    """
    from flows.demo import chat, served_version, wait_served
    from flows.onboard import onboard
    from flows.up import Up
    from onramp.mirror import publish
    from registry.client import Registry
    from tests.conftest import free_port

    repo = f"e2e-{time.monotonic_ns() % 10**8}/SmolLM2-135M-Instruct"
    monkeypatch.setenv("ONRAMP_HF_ENDPOINT", hub_mirror.url)
    monkeypatch.setenv("ONRAMP_API_PORT", str(free_port()))
    settings = load_settings()
    registry = Registry(settings)
    impossible = tmp_path / "impossible.yaml"
    impossible.write_text(yaml.safe_dump(IMPOSSIBLE_GATES))
    sha = publish(repo, reference_model, hub_mirror.mirror_dir, "a new revision")

    api = Up(settings, services=("api",), progress=lambda _: None)
    api.start()
    try:
        # A. failing gate on a fresh build
        state = onboard(OnboardConfig(repo=repo, revision=sha, targets=["cpu", "a100-80gb"], gates=str(impossible),
                                      serving_timeout_s=0), return_state=True)
        assert state.is_failed() and "no build passed its gates" in state.message
        versions = registry.client.search_model_versions()
        mine = [mv for mv in versions if mv.tags.get("hf_repo") == repo]
        assert len(mine) == 1 and mine[0].tags["hf_revision"] == sha and mine[0].tags["gate"] == "failed"
        name, version = mine[0].name, str(mine[0].version)
        assert registry.alias_version(name, "production") is None
        assert served_version(api.api_url, api.api_key, name) is None

        # B. the real gates and an approval: nothing built or evaluated again; promoted; served
        started = time.monotonic()
        approver = threading.Thread(target=_approve_when_paused, args=(repo, {"approve": True, "comment": "lgtm"}),
                                    daemon=True)
        approver.start()
        state = onboard(OnboardConfig(repo=repo, revision=sha, targets=["cpu", "a100-80gb"], approve=True,
                                      approval_timeout_s=300, serving_timeout_s=0), return_state=True)
        rerun_s = time.monotonic() - started
        approver.join(timeout=5)
        assert state.is_completed(), state.message
        result = state.result()
        assert approved_runs, "the run did not wait for the approval"
        assert (result.builds_made, result.evals_run, result.version) == (0, 0, version)
        assert result.promoted and result.gate_passed and result.model == name
        by_target = {o.target: o for o in result.layouts if o.status not in ("infeasible", "not selected")}
        assert by_target["cpu"].status == "reused" and by_target["cpu"].gate == "passed"
        assert by_target["a100-80gb"].status == "failed" and "unavailable" in by_target["a100-80gb"].reason
        assert registry.alias_version(name, "production") == version
        assert registry.client.get_model_version(name, version).tags["gate"] == "passed"
        logged = registry.client.get_run(registry.client.get_model_version(name, version).run_id).data.metrics
        assert {"kld_mean", "kld_p99", "top1_agreement", "kld_mean_ci_high"} <= set(logged), sorted(logged)
        wait_served(api.api_url, api.api_key, name, version, timeout=300)
        answer = chat(api.api_url, api.api_key, name)
        assert "Paris" in answer["choices"][0]["message"]["content"]
        _assert_artifacts(repo)

        # C. a failing gate leaves production and the server alone
        state = onboard(OnboardConfig(repo=repo, revision=sha, gates=str(impossible), serving_timeout_s=0),
                        return_state=True)
        assert state.is_failed()
        assert registry.alias_version(name, "production") == version
        assert served_version(api.api_url, api.api_key, name) == version
        assert len([mv for mv in registry.client.search_model_versions(f"name = '{name}'")
                    if mv.tags.get("hf_repo") == repo]) == 1
    finally:
        api.stop()
    assert rerun_s < 180, f"a rerun took {rerun_s:.0f} s"


approved_runs: list[str] = []


def _approve_when_paused(repo: str, answer: dict, timeout: float = 600) -> None:
    """Play the human: wait until the onboard run of ``repo`` pauses, then submit the form."""
    import httpx
    from prefect.flow_runs import resume_flow_run
    from prefect.settings import PREFECT_API_URL

    api = PREFECT_API_URL.value()
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        runs = httpx.post(f"{api}/flow_runs/filter", timeout=10, json={
            "flow_runs": {"state": {"type": {"any_": ["PAUSED"]}}}, "limit": 50}).json()
        for run in runs:
            if repo in run["name"]:
                resume_flow_run(run["id"], run_input=answer)
                approved_runs.append(run["id"])
                return
        time.sleep(1)


def _assert_artifacts(repo: str) -> None:
    """The keyed artifacts the Prefect UI shows for an onboarding (read over plain HTTP)."""
    import httpx
    from prefect.settings import PREFECT_API_URL

    from flows.report import slug as _slug

    slug = _slug(repo)
    keys = [f"{slug}-{k}" for k in ("layouts", "evals", "latency", "mlflow-run", "mlflow-version", "result")]
    # the latest version of each key: run A (a failing gate) wrote the same keys before run B
    arts = httpx.post(f"{PREFECT_API_URL.value()}/artifacts/latest/filter", timeout=15,
                      json={"artifacts": {"key": {"any_": keys}}, "limit": 50}).json()
    by_key = {a["key"]: a for a in arts}
    assert set(keys) <= set(by_key), sorted(by_key)
    assert by_key[f"{slug}-layouts"]["type"] == "table"
    evals_md = str(by_key[f"{slug}-evals"]["data"])
    assert "gate" in evals_md and "mean KLD" in evals_md and "same top token" in evals_md
    assert "kld_mean_ci_high" in evals_md and "top1_agreement_ci_low" in evals_md
    assert "data:image/png;base64," in str(by_key[f"{slug}-latency"]["data"])
