"""`onramp keys` and `onramp serve`'s argument errors (the real server runs in test_e2e_openvino.py)."""

from __future__ import annotations

import json

from typer.testing import CliRunner

from onramp.cli import app

runner = CliRunner()


def test_keys_create_list_revoke(onramp_home):
    out = runner.invoke(app, ["keys", "create", "ci", "--admin"])
    assert out.exit_code == 0, out.output
    raw = out.stdout.strip().splitlines()[-1]
    assert raw.startswith("onr-")
    stored = json.loads((onramp_home / "keys.json").read_text())
    assert stored[0]["name"] == "ci" and raw not in json.dumps(stored)
    listed = runner.invoke(app, ["keys", "list"]).stdout.strip().splitlines()
    assert listed[0].split("\t")[:4] == ["name", "scopes", "rpm", "tpm"]
    assert listed[1:] == ["ci\tuser,admin\t-\t-\t0\t0\t0"]
    again = runner.invoke(app, ["keys", "create", "ci"])
    assert again.exit_code == 1 and "already exists" in again.output
    assert runner.invoke(app, ["keys", "revoke", "ci"]).exit_code == 0
    assert runner.invoke(app, ["keys", "list"]).stdout.strip().splitlines()[1:] == []


def test_serve_argument_errors_are_one_line(tmp_path):
    cases = [
        (["serve"], "nothing to serve"),
        (["serve", "--engine", "no-equals-sign"], "NAME=ENGINE_DIR"),
        (["serve", "--engine", f"m={tmp_path}"], "no manifest.json"),
        (["serve", "--engine", f"m={tmp_path}", "--no-auth", "--keys-file", str(tmp_path / "k.json")],
         "contradict"),
    ]
    for args, expected in cases:
        out = runner.invoke(app, args)
        assert out.exit_code == 1, (args, out.output)
        assert expected in out.output and "Traceback" not in out.output


def test_serve_refuses_to_start_without_keys(tmp_path, monkeypatch):
    monkeypatch.delenv("ONRAMP_API_KEYS", raising=False)
    engine = tmp_path / "engine"
    engine.mkdir()
    (engine / "manifest.json").write_text("{}")
    out = runner.invoke(app, ["serve", "--engine", f"m={engine}"])
    assert out.exit_code == 1 and "no API keys" in out.output and "onramp keys create" in out.output
