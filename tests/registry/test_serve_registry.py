"""`onramp serve --registry` follows the production alias of the real engine: promote, rollback."""

from __future__ import annotations

from onramp.reference import PARIS_QUESTION
import subprocess
import time
from pathlib import Path

import httpx
import pytest

from builders.manifest import read_manifest
from registry.client import Registry
from serving.process import run_onramp_serve


def _served_version(url: str, name: str, proc: subprocess.Popen, log: Path) -> str | None:
    if proc.poll() is not None:
        raise AssertionError(f"onramp serve exited {proc.returncode}: {log.read_text()[-3000:]}")
    try:
        r = httpx.get(f"{url}/v1/models", timeout=5)
    except httpx.HTTPError:
        return None
    for model in r.json().get("data", []) if r.status_code == 200 else []:
        if model.get("id") == name:
            return str(model.get("version"))
    return None


def _wait_for(url, name, version, proc, log, timeout=240.0) -> None:
    deadline = time.monotonic() + timeout
    while (got := _served_version(url, name, proc, log)) != version:
        assert time.monotonic() < deadline, f"{name} still at {got}, not {version}: {log.read_text()[-2000:]}"
        time.sleep(0.5)


@pytest.mark.slow
def test_serve_registry_swaps_on_promote_and_rollback(ov_int8_engine, onramp_home, tmp_path):
    import openai
    from openai import OpenAI

    manifest = read_manifest(ov_int8_engine)
    name, short = "huggingfacetb--smollm2-135m-instruct", manifest.name  # the full repo id; the short alias
    assert manifest.source.repo == "HuggingFaceTB/SmolLM2-135M-Instruct" and short == "smollm2-135m-instruct"
    reg = Registry()
    v1 = reg.register(ov_int8_engine, gate_passed=True)
    v2 = reg.register(ov_int8_engine, gate_passed=True)  # a re-registration: a new version, same files
    reg.promote(name, v1)

    with run_onramp_serve(["--registry", "--no-auth", "--default-max-tokens", "16"],
                          log=tmp_path / "serve.log") as server:
        url, proc, log = server.url, server.proc, server.log
        _wait_for(url, name, v1, proc, log)
        client = OpenAI(base_url=f"{url}/v1", api_key="unused")
        reply = client.chat.completions.create(
            model=name, messages=[{"role": "user", "content": PARIS_QUESTION}], max_tokens=12,
            temperature=0)
        assert "Paris" in reply.choices[0].message.content
        # the short name is an alias while no other registered model shares it
        cards = {m["id"]: m for m in httpx.get(f"{url}/v1/models", timeout=10).json()["data"]}
        assert cards[short]["root"] == name and cards[short]["version"] == v1
        reply = client.chat.completions.create(model=short, messages=[{"role": "user", "content": "Hi"}],
                                               max_tokens=2)
        assert reply.choices[0].finish_reason in ("length", "stop")

        reg.promote(name, v2)
        _wait_for(url, name, v2, proc, log)
        assert reg.rollback(name) == v1
        _wait_for(url, name, v1, proc, log)  # serving enters an engine only after its warm-up

        # another org's model of the same name: two registered models, and the short alias goes away
        other = "someone--smollm2-135m-instruct"
        assert reg.register(ov_int8_engine, name=other, gate_passed=True) == "1"
        deadline = time.monotonic() + 120
        while short in {m["id"] for m in httpx.get(f"{url}/v1/models", timeout=10).json()["data"]}:
            assert time.monotonic() < deadline, "the ambiguous short alias is still served"
            time.sleep(0.5)
        with pytest.raises(openai.NotFoundError):
            client.chat.completions.create(model=short, messages=[{"role": "user", "content": "Hi"}], max_tokens=2)
        assert reg.alias_version(name, "production") == v1 and _served_version(url, name, proc, log) == v1
