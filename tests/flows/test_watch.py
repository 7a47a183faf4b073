"""The watcher against the real loopback mirror (olah) and a real Prefect API."""

from __future__ import annotations

import time

import pytest

from flows.errors import WatchError
from flows.events import EVENT
from flows.watch import (
    WatchList,
    find_new_revisions,
    hub_org_lister,
    load_seen,
    mark_seen,
    mirror_org_lister,
    state_path,
)
from onramp.mirror import publish
from onramp.settings import load_settings
from tests.flows.conftest import read_events


@pytest.fixture
def mirror_repo(hub_mirror, tiny_llama):
    """A fresh repo on the mirror with one revision; returns (repo_id, sha)."""
    repo = f"watchtest/model-{time.monotonic_ns() % 10**10}"
    return repo, publish(repo, tiny_llama, hub_mirror.mirror_dir)


def test_new_repo_then_nothing_then_new_revision(hub_mirror, tiny_llama, mirror_repo):
    repo, sha1 = mirror_repo
    watch_list = WatchList(repos=[repo])
    new = find_new_revisions(watch_list, {}, endpoint=hub_mirror.url)
    assert [(r.repo, r.sha, r.previous) for r in new] == [(repo, sha1, None)]
    assert find_new_revisions(watch_list, {repo: sha1}, endpoint=hub_mirror.url) == []
    sha2 = publish(repo, tiny_llama, hub_mirror.mirror_dir, "second")
    assert sha2 != sha1
    new = find_new_revisions(watch_list, {repo: sha1}, endpoint=hub_mirror.url)
    assert [(r.repo, r.sha, r.previous) for r in new] == [(repo, sha2, sha1)]


def test_orgs_are_listed_and_a_missing_repo_does_not_stop_the_others(hub_mirror, mirror_repo, caplog):
    repo, sha = mirror_repo
    org = repo.split("/")[0]
    watch_list = WatchList(repos=["nobody/missing-model"], orgs=[org])
    new = find_new_revisions(watch_list, {}, endpoint=hub_mirror.url,
                             list_org=mirror_org_lister(hub_mirror.mirror_dir))
    assert (repo, sha) in [(r.repo, r.sha) for r in new]
    assert "nobody/missing-model" not in [r.repo for r in new]
    assert "nobody/missing-model" in caplog.text


def test_an_org_listing_cannot_widen_the_watch_list(hub_mirror, mirror_repo, tiny_llama, caplog):
    repo, sha = mirror_repo
    org = repo.split("/")[0]
    stranger = f"someone/{repo.split('/')[1]}"  # the same name under another owner
    publish(stranger, tiny_llama, hub_mirror.mirror_dir)
    new = find_new_revisions(WatchList(orgs=[org]), {}, endpoint=hub_mirror.url,
                             list_org=lambda _: [repo, stranger])
    assert [(r.repo, r.sha) for r in new] == [(repo, sha)]
    assert f"ignoring {stranger} listed for org {org}: not on the watch list" in caplog.text
    assert WatchList(repos=["Acme/Model"], orgs=["Org"]).covers("acme/model")
    assert WatchList(orgs=["org"]).covers("ORG/x") and not WatchList(orgs=["org"]).covers("org2/x")


def test_nothing_reachable_is_an_error(hub_mirror):
    with pytest.raises(WatchError, match="could not poll any"):
        find_new_revisions(WatchList(repos=["nobody/missing-model"]), {}, endpoint=hub_mirror.url)
    # olah offline cannot list models: the Hub lister says so in one line
    with pytest.raises(WatchError, match="cannot list the models of someorg"):
        hub_org_lister(hub_mirror.url)("someorg")


def test_seen_state_roundtrip_and_corruption(onramp_home):
    path = state_path(load_settings())
    assert load_seen(path) == {}
    mark_seen(path, "a/b", "1" * 40)
    mark_seen(path, "c/d", "2" * 40)
    mark_seen(path, "a/b", "3" * 40)
    assert load_seen(path) == {"a/b": "3" * 40, "c/d": "2" * 40}
    path.write_text("{not json")
    with pytest.raises(WatchError, match="delete it"):
        load_seen(path)


def test_watch_list_from_settings(monkeypatch):
    monkeypatch.setenv("ONRAMP_WATCH_REPOS", "a/b, c/d")
    monkeypatch.setenv("ONRAMP_WATCH_ORGS", "HuggingFaceTB")
    wl = WatchList.from_settings(load_settings())
    assert wl.repos == ["a/b", "c/d"] and wl.orgs == ["HuggingFaceTB"]
    monkeypatch.setenv("ONRAMP_WATCH_REPOS", "not-a-repo-id")
    with pytest.raises(WatchError, match="not ORG/NAME"):
        WatchList.from_settings(load_settings())


def test_watch_flow_emits_one_event_per_new_revision(prefect_server, hub_mirror, tiny_llama, mirror_repo,
                                                     monkeypatch):
    from flows.watch import watch

    repo, sha1 = mirror_repo
    monkeypatch.setenv("ONRAMP_HF_ENDPOINT", hub_mirror.url)
    monkeypatch.setenv("ONRAMP_MIRROR_PORT", str(hub_mirror.port))
    monkeypatch.setenv("ONRAMP_MIRROR_DIR", str(hub_mirror.mirror_dir))
    monkeypatch.setenv("ONRAMP_WATCH_REPOS", repo)
    started = time.time() - 1
    first = watch()
    assert [(r.repo, r.sha) for r in first] == [(repo, sha1)]
    assert watch() == []  # seen now: nothing new
    sha2 = publish(repo, tiny_llama, hub_mirror.mirror_dir, "second")
    assert [(r.repo, r.sha) for r in watch()] == [(repo, sha2)]
    events = [e for e in read_events(EVENT, min_count=2, since=started) if e["payload"]["repo"] == repo]
    assert sorted(e["payload"]["sha"] for e in events) == sorted([sha1, sha2])
    assert {e["resource"]["prefect.resource.id"] for e in events} == {f"huggingface.model.{repo}"}
