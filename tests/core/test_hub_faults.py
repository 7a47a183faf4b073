"""The Hub going away mid-download, on the real loopback mirror (olah) behind a proxy that cuts it."""

from __future__ import annotations

import hashlib
import logging
import time

import pytest

from onramp.hub import HubError, HubUnavailableError, pull, revision_date
from onramp.mirror import publish
from tests.netfaults import FaultProxy

REPO = "onramp-faults/tiny-llama"


def _sha(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture
def cut_hub(hub_mirror, tiny_llama):
    sha = publish(REPO, tiny_llama, hub_mirror.mirror_dir)
    proxy = FaultProxy(hub_mirror.port)
    yield proxy, sha
    proxy.close()


def test_hub_cut_mid_download_is_retried_and_the_pull_completes(cut_hub, tiny_llama, tmp_path, caplog):
    proxy, sha = cut_hub
    caplog.set_level(logging.WARNING, logger="onramp.hub")
    proxy.cut_after(5 * 1024 * 1024, for_s=1.5)  # 5 MB into the 16 MB snapshot
    path, got = pull(REPO, "main", endpoint=proxy.url, cache_dir=tmp_path / "hub", attempts=4, retry_wait=1.0)
    assert got == sha and proxy.outages == 1
    assert any("failed (attempt 1/4)" in r.getMessage() for r in caplog.records)
    assert _sha(path / "model.safetensors") == _sha(tiny_llama / "model.safetensors")
    assert _sha(path / "tokenizer.json") == _sha(tiny_llama / "tokenizer.json")


def test_hub_down_for_good_fails_naming_it_and_the_next_pull_recovers(cut_hub, tiny_llama, tmp_path):
    proxy, sha = cut_hub
    proxy.cut_after(5 * 1024 * 1024, for_s=600)
    started = time.monotonic()
    with pytest.raises(HubUnavailableError) as err:
        pull(REPO, "main", endpoint=proxy.url, cache_dir=tmp_path / "hub", attempts=3, retry_wait=0.5)
    assert proxy.url in str(err.value) and "after 3 attempts" in str(err.value) and "HF_ENDPOINT" in str(err.value)
    assert time.monotonic() - started < 120
    assert not list((tmp_path / "hub").rglob("snapshots/*/model.safetensors"))  # nothing half-made to build from

    proxy.restore()
    path, got = pull(REPO, "main", endpoint=proxy.url, cache_dir=tmp_path / "hub", attempts=3, retry_wait=0.5)
    assert got == sha and _sha(path / "model.safetensors") == _sha(tiny_llama / "model.safetensors")


def test_a_missing_repo_is_not_retried_and_the_commit_date_orders_revisions(hub_mirror, cut_hub, tiny_llama,
                                                                            tmp_path):
    proxy, sha1 = cut_hub
    started = time.monotonic()
    with pytest.raises(HubError, match="not found") as err:
        pull("nobody/nothing", "main", endpoint=proxy.url, cache_dir=tmp_path / "hub", attempts=4, retry_wait=5.0)
    assert not isinstance(err.value, HubUnavailableError) and time.monotonic() - started < 5
    time.sleep(1.1)  # commit dates have one-second resolution: the next commit must be later
    (tmp_path / "ck").mkdir()
    for f in tiny_llama.iterdir():
        (tmp_path / "ck" / f.name).write_bytes(f.read_bytes())
    (tmp_path / "ck" / "README.md").write_text("second revision\n")
    sha2 = publish(REPO, tmp_path / "ck", hub_mirror.mirror_dir)
    assert revision_date(REPO, sha1, hub_mirror.url) < revision_date(REPO, sha2, hub_mirror.url)
