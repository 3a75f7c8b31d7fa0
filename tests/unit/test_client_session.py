"""The client's session lets a connection idle past its limit go instead of reusing it
(services/client/session.py), against a real HTTP/1.1 server that keeps connections."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import ClassVar

import pytest

from services.client.session import ExpiringSession


class Recorder(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive
    peers: ClassVar[list[int]] = []

    def do_GET(self) -> None:
        Recorder.peers.append(self.client_address[1])  # the client's port: its connection
        self.send_response(200)
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"ok")

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def server() -> Iterator[str]:
    Recorder.peers = []
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Recorder)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}/"
    finally:
        httpd.shutdown()
        httpd.server_close()


def test_a_connection_is_reused_while_fresh_and_dropped_once_idle_too_long(server: str) -> None:
    session = ExpiringSession(idle_seconds=0.3)
    for _ in range(3):
        assert session.get(server, timeout=5).status_code == 200
    time.sleep(0.5)
    assert session.get(server, timeout=5).status_code == 200
    assert session.get(server, timeout=5).status_code == 200
    first, second, third, after_idle, next_one = Recorder.peers
    assert first == second == third, "calls in quick succession share one connection"
    assert after_idle != third, "a connection idle past the limit was reused"
    assert next_one == after_idle, "the new connection is kept alive in turn"
