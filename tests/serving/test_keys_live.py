"""`onramp keys revoke` and `onramp keys create` take effect on a running server (the real
`onramp serve` process over the int8 OpenVINO engine), without a restart."""

from __future__ import annotations

import time

import httpx
from typer.testing import CliRunner

from onramp.cli import app

runner = CliRunner()


def _status(url: str, key: str) -> int:
    return httpx.get(f"{url}/v1/models", headers={"Authorization": f"Bearer {key}"}, timeout=30).status_code


def _wait_status(url: str, key: str, want: int, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while (got := _status(url, key)) != want:
        assert time.monotonic() < deadline, f"the key still gets {got}, not {want}, after {timeout:.0f} s"
        time.sleep(0.1)


def test_revoked_key_is_refused_and_new_key_accepted_without_restart(server):
    keys_file = server.process.log.parent / "keys.json"  # the session server's keys file
    created = runner.invoke(app, ["keys", "create", "short-lived", "--keys-file", str(keys_file)])
    assert created.exit_code == 0, created.output
    key = created.stdout.strip().splitlines()[-1]
    _wait_status(server.url, key, 200)  # a new key works without a restart
    pid = server.process.proc.pid

    revoked = runner.invoke(app, ["keys", "revoke", "short-lived", "--keys-file", str(keys_file)])
    assert revoked.exit_code == 0, revoked.output
    _wait_status(server.url, key, 401)
    resp = httpx.post(f"{server.url}/v1/chat/completions", headers={"Authorization": f"Bearer {key}"},
                      json={"model": "mistral-7b-instruct", "messages": [{"role": "user", "content": "hi"}]})
    assert resp.status_code == 401 and resp.json()["error"]["code"] == "invalid_api_key"
    assert _status(server.url, server.key) == 200  # the other keys still work
    assert _status(server.url, server.admin_key) == 200
    assert server.process.proc.pid == pid and server.process.proc.poll() is None  # same process, no restart
    assert key not in server.log_text()
