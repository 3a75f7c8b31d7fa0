"""The client's session lets a connection idle past its limit go instead of reusing it,
and reads the environment's proxy, CA and netrc settings once, when the client is made
(services/client/session.py), against a real HTTP/1.1 server that keeps connections."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import ClassVar

import pytest

from services.client.session import ExpiringSession
from services.client.transport import Transport


@dataclass(frozen=True)
class Seen:
    port: int  # the client's: its connection
    target: str  # the request line's, absolute when it came to the server as a proxy
    authorization: str | None


class Recorder(BaseHTTPRequestHandler):
    """Answers 200 to any GET, keeping the connection alive, and records what it saw."""

    protocol_version = "HTTP/1.1"
    seen: ClassVar[list[Seen]] = []

    def do_GET(self) -> None:
        Recorder.seen.append(
            Seen(self.client_address[1], self.path, self.headers.get("Authorization"))
        )
        self.send_response(200)
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"{}")

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def server() -> Iterator[str]:
    Recorder.seen = []
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Recorder)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}"
    finally:
        httpd.shutdown()
        httpd.server_close()


def test_a_connection_is_reused_while_fresh_and_dropped_once_idle_too_long(server: str) -> None:
    session = ExpiringSession(idle_seconds=0.3)
    for _ in range(3):
        assert session.get(f"{server}/", timeout=5).status_code == 200
    time.sleep(0.5)
    assert session.get(f"{server}/", timeout=5).status_code == 200
    assert session.get(f"{server}/", timeout=5).status_code == 200
    first, second, third, after_idle, next_one = (seen.port for seen in Recorder.seen)
    assert first == second == third, "calls in quick succession share one connection"
    assert after_idle != third, "a connection idle past the limit was reused"
    assert next_one == after_idle, "the new connection is kept alive in turn"


@pytest.fixture
def no_proxy_settings(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    """An environment without the machine's own proxy variables (urllib prefers the
    lower-case ones, so a CI machine's http_proxy would win over the test's)."""
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "NO_PROXY", "REQUESTS_CA_BUNDLE",
                 "CURL_CA_BUNDLE", "NETRC"):  # fmt: skip
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.lower(), raising=False)
    return monkeypatch


def test_the_proxy_the_environment_names_is_used_as_it_was_when_the_client_was_made(
    server: str, no_proxy_settings: pytest.MonkeyPatch
) -> None:
    env = no_proxy_settings
    env.setenv("HTTP_PROXY", server)  # the recorder stands in for a proxy
    transport = Transport("http://api.invalid:8000", "k", timeout=5, retry_for=0)
    transport.request("GET", "/jobs")
    env.delenv("HTTP_PROXY")  # read once: the client keeps its proxy
    transport.request("GET", "/jobs")
    transport.close()
    assert [seen.target for seen in Recorder.seen] == ["http://api.invalid:8000/jobs"] * 2

    env.setenv("HTTP_PROXY", server)
    env.setenv("NO_PROXY", "127.0.0.1")  # a host NO_PROXY names is reached directly
    Recorder.seen = []
    direct = Transport(server, "k", timeout=5, retry_for=0)
    direct.request("GET", "/jobs")
    direct.close()
    assert [seen.target for seen in Recorder.seen] == ["/jobs"]


def test_the_ca_bundle_the_environment_names_is_kept_and_never_looked_up_again(
    no_proxy_settings: pytest.MonkeyPatch,
) -> None:
    no_proxy_settings.setenv("REQUESTS_CA_BUNDLE", "/etc/ssl/certs/ca-certificates.crt")
    transport = Transport("https://api.invalid", "k", timeout=5, retry_for=0)
    assert transport.session.verify == "/etc/ssl/certs/ca-certificates.crt"
    assert transport.session.trust_env is False, "requests would read it all on every call"
    transport.close()


def test_a_netrc_entry_for_the_api_host_does_not_replace_the_clients_key(
    server: str, no_proxy_settings: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    netrc = tmp_path / "netrc"
    netrc.write_text("machine 127.0.0.1 login someone password secret\n")
    netrc.chmod(0o600)
    no_proxy_settings.setenv("NETRC", str(netrc))
    with_key, without_key = (Transport(server, key, timeout=5, retry_for=0) for key in ("k", None))
    with_key.request("GET", "/jobs")
    without_key.request("GET", "/jobs")
    # Only to the API's own URL: the session's other requests carry no netrc login.
    without_key.session.get(f"{server}/elsewhere", timeout=5)
    for transport in (with_key, without_key):
        transport.close()
    keyed, by_netrc, elsewhere = (seen.authorization for seen in Recorder.seen)
    assert keyed == "Bearer k"
    assert by_netrc is not None and by_netrc.startswith("Basic "), "netrc still applies"
    assert elsewhere is None
