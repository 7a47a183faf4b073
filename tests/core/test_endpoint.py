"""onramp.endpoint.EndpointClient against a real (tiny) HTTP server speaking the OpenAI wire format."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from onramp.endpoint import EndpointClient, EndpointRefused, EndpointUnreachable, card_version
from onramp.process import free_port

KEY = "sk-test"


class _Handler(BaseHTTPRequestHandler):
    state: dict = {}

    def _send(self, status: int, body: dict) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _authorized(self) -> bool:
        if self.headers.get("authorization") == f"Bearer {KEY}":
            return True
        self._send(401, {"error": {"message": "bad key"}})
        return False

    def do_GET(self):  # noqa: N802 - http.server's name
        if self._authorized() and self.path == "/v1/models":
            self.state["polls"] = self.state.get("polls", 0) + 1
            version = "2" if self.state["polls"] >= 3 else "1"  # swaps on the third poll
            self._send(200, {"object": "list", "data": [{"id": "smol", "object": "model", "version": version}]})

    def do_POST(self):  # noqa: N802
        body = json.loads(self.rfile.read(int(self.headers["content-length"])))
        if self._authorized():
            self.state["last"] = body
            self._send(200, {"choices": [{"index": 0, "message": {"role": "assistant", "content": "Paris"}}]})

    def log_message(self, *args):
        pass


@pytest.fixture
def endpoint_url():
    _Handler.state = {}
    server = ThreadingHTTPServer(("127.0.0.1", free_port()), _Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/"
    server.shutdown()
    server.server_close()


def test_chat_sends_the_wire_format_and_returns_the_reply(endpoint_url):
    with EndpointClient(endpoint_url, KEY) as ep:
        reply = ep.chat("smol", "capital of France?", max_tokens=5, stream=False)
    assert ep.text(reply) == "Paris"
    assert _Handler.state["last"] == {"model": "smol", "messages": [{"role": "user", "content": "capital of France?"}],
                                      "max_tokens": 5, "temperature": 0.0, "stream": False}


def test_a_refusal_carries_status_and_body_and_no_answer_is_unreachable(endpoint_url):
    with pytest.raises(EndpointRefused, match="answered HTTP 401: .*bad key") as err:
        EndpointClient(endpoint_url, "sk-wrong").chat("smol", "hi", max_tokens=1)
    assert err.value.status == 401
    assert EndpointClient(endpoint_url, "sk-wrong").served_version("smol") is None
    with pytest.raises(EndpointUnreachable, match="unreachable") as err:
        EndpointClient(f"http://127.0.0.1:{free_port()}").models()
    assert "onramp serve" in str(err.value)


def test_served_version_and_wait_until_a_version_is_served(endpoint_url):
    ep = EndpointClient(endpoint_url, KEY)
    assert ep.served_version("smol") == "1" and ep.served_version("other") is None
    assert ep.wait_served("smol", 2, timeout=60, interval=0.05)
    assert not ep.wait_served("smol", "3", timeout=0.2, interval=0.05)


def test_card_version_reads_the_names_servers_use():
    assert card_version({"id": "m", "version": "4"}) == "4"
    assert card_version({"id": "m", "registry_version": 5}) == "5"
    assert card_version({"id": "m", "metadata": {"version": 6}}) == "6"
    assert card_version({"id": "m"}) is None
