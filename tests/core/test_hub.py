"""onramp.hub's bounds on the loopback mirror (olah): file count, size, remote code, timeouts."""

from __future__ import annotations

import json
import shutil
import socket
import threading
import time

import pytest

from onramp.hub import HubError, pull, resolve_revision
from onramp.mirror import publish


def _repo(hub_mirror, checkpoint, org: str = "hubtest") -> str:
    repo = f"{org}/tiny-{time.monotonic_ns() % 10**10}"
    publish(repo, checkpoint, hub_mirror.mirror_dir)
    return repo


def _downloaded(cache) -> list[str]:
    return sorted(p.name for p in cache.rglob("*") if p.is_file() and "snapshots" in p.parts)


def test_a_pull_within_the_limits_works(hub_mirror, tiny_llama, tmp_path):
    repo = _repo(hub_mirror, tiny_llama)
    path, sha = pull(repo, "main", endpoint=hub_mirror.url, cache_dir=tmp_path / "hub")
    assert len(sha) == 40 and (path / "model.safetensors").is_file() and (path / "tokenizer.json").is_file()


def test_too_many_files_is_refused_naming_the_setting(hub_mirror, tiny_llama, tmp_path, monkeypatch):
    repo = _repo(hub_mirror, tiny_llama)
    monkeypatch.setenv("ONRAMP_HUB_MAX_FILES", "3")
    with pytest.raises(HubError, match=r"has 6 files to download, more than the limit of 3.*ONRAMP_HUB_MAX_FILES"):
        pull(repo, "main", endpoint=hub_mirror.url, cache_dir=tmp_path / "hub")
    assert _downloaded(tmp_path / "hub") == []


def test_too_large_is_refused_before_downloading(hub_mirror, tiny_llama, tmp_path, monkeypatch):
    repo = _repo(hub_mirror, tiny_llama)  # ~16 MB: a 12.9 MB model.safetensors and a 3.5 MB tokenizer.json
    monkeypatch.setenv("ONRAMP_HUB_MAX_DOWNLOAD_GB", "0.01")
    with pytest.raises(HubError, match=r"0\.016 GB to download, more than the limit of 0\.01 GB.*"
                                       r"hub_max_download_gb \(ONRAMP_HUB_MAX_DOWNLOAD_GB\)"):
        pull(repo, "main", endpoint=hub_mirror.url, cache_dir=tmp_path / "hub")
    assert _downloaded(tmp_path / "hub") == []


@pytest.mark.parametrize("config_file", ["config.json", "tokenizer_config.json"])
def test_auto_map_is_refused_before_the_weights_come(hub_mirror, tiny_llama, tmp_path, config_file):
    ckpt = tmp_path / "remote-code"
    shutil.copytree(tiny_llama, ckpt)
    data = json.loads((ckpt / config_file).read_text())
    data["auto_map"] = {"AutoTokenizer": ["tokenization_evil.EvilTokenizer", None]}
    (ckpt / config_file).write_text(json.dumps(data))
    repo = _repo(hub_mirror, ckpt)
    with pytest.raises(HubError, match=f"{config_file} of {repo} asks for remote code"):
        pull(repo, "main", endpoint=hub_mirror.url, cache_dir=tmp_path / "hub")
    assert "model.safetensors" not in _downloaded(tmp_path / "hub")


def test_a_hub_that_never_answers_times_out(monkeypatch):
    """A server that accepts the connection and then says nothing: the metadata call gives up."""
    monkeypatch.setenv("ONRAMP_HUB_TIMEOUT_S", "1")
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        endpoint = f"http://127.0.0.1:{silent.getsockname()[1]}"
        outcome: list[BaseException | str] = []

        def call() -> None:
            try:
                outcome.append(resolve_revision("acme/model", "main", endpoint))
            except BaseException as exc:  # noqa: BLE001 - asserted below
                outcome.append(exc)

        worker = threading.Thread(target=call, daemon=True)
        worker.start()
        worker.join(timeout=120)  # generous: the timeout is 1 s; without one this never returns
        assert not worker.is_alive(), "resolve_revision is still waiting for a silent Hub"
    assert isinstance(outcome[0], HubError) and "cannot reach" in str(outcome[0]), outcome
