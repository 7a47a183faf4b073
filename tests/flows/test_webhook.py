"""POST /hooks/huggingface: secret check, payload parsing, and the event on a real Prefect API."""

from __future__ import annotations

import time

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from flows.events import EVENT
from flows.watch import load_seen, state_path
from flows.webhook import router
from onramp.settings import load_settings
from tests.flows.conftest import read_events

SECRET = "s3cret-for-tests"


def _payload(repo: str = "acme/tiny-chat", sha: str = "a" * 40, **event) -> dict:
    return {
        "event": {"action": "update", "scope": "repo.content", **event},
        "repo": {"type": "model", "name": repo, "id": "abc", "private": False, "headSha": sha,
                 "url": {"web": f"https://huggingface.co/{repo}", "api": f"https://huggingface.co/api/models/{repo}"}},
        "webhook": {"id": "123", "version": 3},
    }


@pytest.fixture
def client(monkeypatch):
    monkeypatch.setenv("ONRAMP_WEBHOOK_SECRET", SECRET)
    monkeypatch.setenv("ONRAMP_WATCH_ORGS", "acme")
    monkeypatch.setenv("ONRAMP_WATCH_REPOS", "HuggingFaceTB/SmolLM2-135M-Instruct")
    app = FastAPI()
    app.include_router(router)
    app.state.settings = load_settings()
    return TestClient(app)


def test_bad_or_missing_secret_is_401(client):
    for headers in ({}, {"X-Webhook-Secret": "wrong"}, {"X-Webhook-Secret": SECRET + "x"}):
        resp = client.post("/hooks/huggingface", json=_payload(), headers=headers)
        assert resp.status_code == 401, resp.text
        assert "X-Webhook-Secret" in resp.json()["error"]["message"]


def test_unconfigured_secret_is_503():
    app = FastAPI()
    app.include_router(router)
    app.state.settings = load_settings()
    resp = TestClient(app).post("/hooks/huggingface", json=_payload(), headers={"X-Webhook-Secret": "x"})
    assert resp.status_code == 503
    assert "ONRAMP_WEBHOOK_SECRET" in resp.json()["error"]["message"]


def test_malformed_payload_is_422(client):
    resp = client.post("/hooks/huggingface", content=b"{not json", headers={"X-Webhook-Secret": SECRET})
    assert resp.status_code == 422
    resp = client.post("/hooks/huggingface", json={"repo": {"type": "model"}}, headers={"X-Webhook-Secret": SECRET})
    assert resp.status_code == 422
    assert "event" in resp.json()["error"]["message"]


@pytest.mark.parametrize("change", [
    {"event": {"action": "update", "scope": "discussion"}},
    {"event": {"action": "delete", "scope": "repo.content"}},
    {"repo_type": "dataset"},
])
def test_other_events_are_ignored(client, change):
    body = _payload()
    if "event" in change:
        body["event"] = change["event"]
    else:
        body["repo"]["type"] = change["repo_type"]
    resp = client.post("/hooks/huggingface", json=body, headers={"X-Webhook-Secret": SECRET})
    assert resp.status_code == 200 and resp.json()["status"] == "ignored"


def test_good_webhook_emits_the_revision_event(prefect_server, client):
    repo, sha = f"acme/hooked-{time.monotonic_ns() % 10**8}", "b" * 40
    started = time.time() - 1
    resp = client.post("/hooks/huggingface", json=_payload(repo, sha), headers={"X-Webhook-Secret": SECRET})
    assert resp.status_code == 202, resp.text
    assert resp.json()["sha"] == sha
    events = [e for e in read_events(EVENT, since=started) if e["payload"]["repo"] == repo]
    assert len(events) == 1
    assert events[0]["payload"] == {"repo": repo, "sha": sha, "previous": None, "source": "webhook"}
    assert events[0]["id"] == resp.json()["event_id"]
    assert load_seen(state_path(load_settings()))[repo] == sha


def test_updated_refs_pick_main(prefect_server, client):
    body = _payload("acme/refs", "c" * 40)
    body["updatedRefs"] = [{"ref": "refs/heads/dev", "oldSha": "0" * 40, "newSha": "d" * 40}]
    resp = client.post("/hooks/huggingface", json=body, headers={"X-Webhook-Secret": SECRET})
    assert resp.status_code == 200 and resp.json()["reason"] == "main was not updated"


def test_repos_off_the_watch_list_are_ignored(prefect_server, client, caplog):
    caplog.set_level("INFO", logger="flows.webhook")
    started = time.time() - 1
    for repo in ("someone/SmolLM2-135M-Instruct", "acmeX/model", "huggingfacetb/other-model"):
        resp = client.post("/hooks/huggingface", json=_payload(repo, "e" * 40), headers={"X-Webhook-Secret": SECRET})
        assert resp.status_code == 200, resp.text
        assert resp.json() == {"status": "ignored", "reason": "not on the watch list"}
        assert f"ignored {repo}: not on the watch list" in caplog.text
    # on the list (a repo id, compared case-insensitively as the Hub does): accepted
    watched = "huggingfacetb/smollm2-135m-instruct"
    resp = client.post("/hooks/huggingface", json=_payload(watched, "e" * 40), headers={"X-Webhook-Secret": SECRET})
    assert resp.status_code == 202, resp.text
    events = read_events(EVENT, since=started)
    assert [e["payload"]["repo"] for e in events if e["payload"]["sha"] == "e" * 40] == [watched]
    assert load_seen(state_path(load_settings())) == {watched: "e" * 40}
