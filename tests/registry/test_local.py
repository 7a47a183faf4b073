"""The embedded default (SQLite + artifacts under ONRAMP_HOME), run logging, gates, the CLI."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from onramp.cli import app
from registry.client import CANDIDATE, PREVIOUS, PRODUCTION, Registry
from registry.errors import IntegrityError, ModelNotFoundError, PromotionError

NAME = "huggingfacetb--smollm2-135m-instruct"  # registered: the full repo id


def test_onboarding_run_and_embedded_defaults(onramp_home, make_engine):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    reg = Registry()  # settings: sqlite:///$ONRAMP_HOME/mlflow.db, artifacts in $ONRAMP_HOME/mlartifacts
    assert reg.tracking_uri == f"sqlite:///{onramp_home / 'mlflow.db'}"
    with reg.run("onboard HuggingFaceTB/SmolLM2-135M-Instruct", params={"repo": "HuggingFaceTB/SmolLM2-135M-Instruct",
                                                                        "revision": "abc123"}) as run:
        run.log_metrics({"latency_p50_ms": 41.5, "tokens_per_s": 700.0})
        run.log_dict({"exact_match": 0.1}, "reports/quality.json")
        fig, ax = plt.subplots()
        ax.plot([1, 2, 3], [40, 45, 60])
        run.log_figure(fig, "plots/latency.png")
        plt.close(fig)
        engine = make_engine("e")
        run.log_artifact(engine / "manifest.json", "manifests")
        version = reg.register(engine, run_id=run.run_id, gate_passed=True, metrics={"ppl_ratio": 1.02})
    assert version == "1"

    parent = reg.client.get_run(run.run_id)
    assert parent.info.status == "FINISHED"
    assert parent.data.params == {"repo": "HuggingFaceTB/SmolLM2-135M-Instruct", "revision": "abc123"}
    assert parent.data.metrics == {"latency_p50_ms": 41.5, "tokens_per_s": 700.0}
    assert {a.path for a in reg.client.list_artifacts(run.run_id, "plots")} == {"plots/latency.png"}
    assert {a.path for a in reg.client.list_artifacts(run.run_id, "manifests")} == {"manifests/manifest.json"}
    assert (onramp_home / "mlartifacts").is_dir()
    png = list((onramp_home / "mlartifacts").rglob("latency.png"))
    assert len(png) == 1 and png[0].read_bytes()[:4] == b"\x89PNG"

    mv = reg.client.get_model_version(NAME, version)
    child = reg.client.get_run(mv.run_id)
    assert child.data.tags["mlflow.parentRunId"] == run.run_id
    assert child.data.params["backend"] == "openvino" and child.data.params["layout"] == "cpu-tp1-pp1-bf16-int8"
    assert child.data.metrics == {"ppl_ratio": 1.02}
    # engine files stored under ONRAMP_HOME, fetched into the cache under ONRAMP_HOME, verified
    path = reg.fetch(NAME, CANDIDATE)
    assert onramp_home in path.parents and (path / "manifest.json").is_file()


def test_failed_run_is_marked_failed(make_engine):
    reg = Registry()
    with pytest.raises(RuntimeError), reg.run("onboard broken") as run:
        raise RuntimeError("build crashed")
    assert reg.client.get_run(run.run_id).info.status == "FAILED"


def test_gate_failed_is_not_candidate_and_not_promoted_without_force(make_engine):
    reg = Registry()
    v1 = reg.register(make_engine("good"), gate_passed=True)
    v2 = reg.register(make_engine("bad"), gate_passed=False)
    assert reg.aliases(NAME) == {CANDIDATE: v1}
    with pytest.raises(PromotionError, match="did not pass its gates") as err:
        reg.promote(NAME, v2)
    assert "--force" in str(err.value)
    assert reg.alias_version(NAME, PRODUCTION) is None
    reg.promote(NAME, v2, force=True)
    assert reg.alias_version(NAME, PRODUCTION) == v2


def test_history_rollback_twice_and_errors(make_engine):
    reg = Registry()
    versions = [reg.register(make_engine(t), gate_passed=True) for t in ("a", "b", "c")]
    with pytest.raises(PromotionError, match="no earlier production version"):
        reg.rollback(NAME)
    for v in versions:
        reg.promote(NAME, v)
    assert reg.aliases(NAME)[PREVIOUS] == "2"
    assert reg.rollback(NAME) == "2"
    assert reg.aliases(NAME)[PREVIOUS] == "1"
    assert reg.rollback(NAME) == "1"
    assert PREVIOUS not in reg.aliases(NAME)
    with pytest.raises(PromotionError):
        reg.rollback(NAME)
    with pytest.raises(ModelNotFoundError, match="no registered model 'nope'"):
        reg.fetch("nope", "production")
    with pytest.raises(ModelNotFoundError, match="has no version '9'"):
        reg.promote(NAME, 9)
    with pytest.raises(ModelNotFoundError, match="has no alias 'staging'"):
        reg.fetch(NAME, "staging")


def test_register_refuses_a_tampered_engine(make_engine):
    reg = Registry()
    engine = make_engine("t")
    (engine / "config.json").write_text('{"model_type": "evil"}\n')
    with pytest.raises(IntegrityError, match="config.json"):
        reg.register(engine, gate_passed=True)
    assert reg.list_models() == []


def test_failure_after_upload_removes_model_and_files(make_engine, onramp_home):
    from registry.errors import RegistryError

    reg = Registry()
    with pytest.raises(RegistryError, match="cannot be a registered model name"):
        reg.register(make_engine("n"), name="org/model", gate_passed=True)
    # MLflow refuses the version's tags only after the upload and the registered model exist
    with pytest.raises(RegistryError, match="MLflow refused to register") as err:
        reg.register(make_engine("y"), gate_passed=True, tags={"bad key!": "x"})
    assert "nothing was registered" in str(err.value)
    assert reg.list_models() == []
    assert not [p for p in (onramp_home / "mlartifacts").rglob("*") if p.is_file()]
    runs = reg.client.search_runs([reg.experiment_id()])
    assert [r.info.status for r in runs] == ["FAILED"]


def test_cli_models_promote_rollback(make_engine):
    reg = Registry()
    reg.register(make_engine("a"), gate_passed=True)
    reg.register(make_engine("b"), gate_passed=False)
    runner = CliRunner()

    result = runner.invoke(app, ["promote", NAME, "1"])
    assert result.exit_code == 0, result.output
    assert "production = version 1" in result.output
    result = runner.invoke(app, ["promote", NAME, "2"])
    assert result.exit_code == 1 and "did not pass its gates" in result.output
    assert "Traceback" not in result.output
    result = runner.invoke(app, ["promote", NAME, "2", "--force"])
    assert result.exit_code == 0 and "was 1" in result.output

    result = runner.invoke(app, ["models"])
    assert result.exit_code == 0, result.output
    assert NAME in result.output and "production=2" in result.output and "failed" in result.output
    result = runner.invoke(app, ["models", "--json"])
    models = json.loads(result.output)
    assert models[0]["aliases"] == {CANDIDATE: "1", PRODUCTION: "2", PREVIOUS: "1"}
    assert {v["version"]: v["tags"]["gate"] for v in models[0]["versions"]} == {"1": "passed", "2": "failed"}

    result = runner.invoke(app, ["rollback", NAME])
    assert result.exit_code == 0 and "production = version 1" in result.output
    result = runner.invoke(app, ["rollback", NAME])
    assert result.exit_code == 1 and "no earlier production version" in result.output
    result = runner.invoke(app, ["rollback", "nope"])
    assert result.exit_code == 1 and "no registered model 'nope'" in result.output


def test_cli_tracking_server_down_is_one_clear_line(monkeypatch):
    from tests.conftest import free_port

    monkeypatch.setenv("ONRAMP_MLFLOW_TRACKING_URI", f"http://127.0.0.1:{free_port()}")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    result = CliRunner().invoke(app, ["models"])
    assert result.exit_code == 1, result.output
    assert "unreachable" in result.output and "ONRAMP_MLFLOW_TRACKING_URI" in result.output
    assert "Traceback" not in result.output


def test_partial_downloads_are_never_used(make_engine):
    import os
    import time

    reg = Registry()
    engine = make_engine("p")
    version = reg.register(engine, gate_passed=True)
    final = reg.cache.path(NAME, version)
    final.parent.mkdir(parents=True)
    # a fetch killed half-way long ago, and a directory at the final path without the marker
    stale = final.parent / f".{version}.partial-old"
    (stale / "engine").mkdir(parents=True)
    old = time.time() - 2 * 3600
    os.utime(stale, (old, old))
    final.mkdir()
    (final / "config.json").write_text("{}")
    path = reg.fetch(NAME, version)
    assert path == final and (path / "config.json").read_bytes() == (engine / "config.json").read_bytes()
    assert not stale.exists()
    assert [p.name for p in final.parent.iterdir()] == [version]


def test_same_basename_under_two_orgs_are_two_models(make_engine):
    """someone/SmolLM2-135M-Instruct must not take over HuggingFaceTB/SmolLM2-135M-Instruct's production."""
    reg = Registry()
    ours = reg.register(make_engine("ours"), gate_passed=True)
    reg.promote(NAME, ours)
    theirs_name = "someone--smollm2-135m-instruct"
    theirs = reg.register(make_engine("theirs", repo="someone/SmolLM2-135M-Instruct"), gate_passed=True)
    reg.promote(theirs_name, theirs)
    assert sorted(reg.model_names()) == [NAME, theirs_name]
    assert reg.get_production(NAME).tags["hf_repo"] == "HuggingFaceTB/SmolLM2-135M-Instruct"
    assert reg.get_production(theirs_name).tags["hf_repo"] == "someone/SmolLM2-135M-Instruct"
    assert "'ours'" in (reg.fetch(NAME, PRODUCTION) / "openvino_model.xml").read_text()
    assert "'theirs'" in (reg.fetch(theirs_name, PRODUCTION) / "openvino_model.xml").read_text()


def test_registered_names_and_short_aliases():
    from registry.names import registered_name, short_aliases

    assert registered_name("HuggingFaceTB/SmolLM2-135M-Instruct", "x") == NAME
    assert registered_name(None, "smollm2-135m-instruct") == "smollm2-135m-instruct"  # a local checkpoint
    assert short_aliases([NAME, "acme--tiny"]) == {"smollm2-135m-instruct": NAME, "tiny": "acme--tiny"}
    # two orgs share the short name: neither gets it
    assert short_aliases([NAME, "someone--smollm2-135m-instruct", "acme--tiny"]) == {"tiny": "acme--tiny"}
    # a registered model named like the short name keeps it
    assert short_aliases([NAME, "smollm2-135m-instruct"]) == {}
