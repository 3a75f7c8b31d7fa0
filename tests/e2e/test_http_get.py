"""http_get against a real HTTP server of the test's own: a total time cap however the
server paces its bytes, the 1 MiB body cap, and no redirects followed."""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from services.catalog.http_get import HTTP_MAX_BODY_BYTES
from tests.stack import Stack

DRIP_PAUSE = 0.3  # seconds between two bytes of a dripping answer
DRIP_BYTES = 60  # so a dripped answer takes DRIP_BYTES * DRIP_PAUSE = 18 s in full


class Handler(BaseHTTPRequestHandler):
    """Answers by path; every path asked for is noted in `server.seen`."""

    server: RecordingServer

    def do_GET(self) -> None:
        self.server.seen.append(self.path)
        route = {
            "/drip-body": self.drip_body,
            "/drip-headers": self.drip_headers,
            "/big": self.big,
            "/redirect": self.redirect,
        }.get(self.path, self.plain)
        with contextlib.suppress(OSError):  # the client gave up, as it should
            route()

    def drip(self, data: bytes) -> None:
        for i in range(len(data)):
            self.wfile.write(data[i : i + 1])
            self.wfile.flush()
            time.sleep(DRIP_PAUSE)

    def drip_body(self) -> None:
        self.send_response(200)
        self.send_header("Content-Length", str(DRIP_BYTES))
        self.end_headers()
        self.drip(b"x" * DRIP_BYTES)

    def drip_headers(self) -> None:
        self.drip(b"HTTP/1.1 200 OK\r\nX-Slow: " + b"y" * DRIP_BYTES + b"\r\n\r\n")

    def big(self) -> None:
        body = b"z" * (2 * HTTP_MAX_BODY_BYTES)
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def redirect(self) -> None:
        self.send_response(302)
        self.send_header("Location", "/target")
        self.send_header("Content-Length", "0")
        self.end_headers()

    def plain(self) -> None:
        self.send_response(200)
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"ok")

    def log_message(self, format: str, *args: object) -> None:
        pass  # quiet: the test reads `seen`, not a log


class RecordingServer(ThreadingHTTPServer):
    daemon_threads = True
    seen: list[str]


@pytest.fixture(scope="module")
def server() -> Iterator[RecordingServer]:
    """On 127.0.0.1, which JOB_HTTP_ALLOWED_HOSTS allows by default."""
    httpd = RecordingServer(("127.0.0.1", 0), Handler)
    httpd.seen = []
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield httpd
    finally:
        httpd.shutdown()
        httpd.server_close()


def url(server: RecordingServer, path: str) -> str:
    return f"http://127.0.0.1:{server.server_address[1]}{path}"


def run_http_get(stack: Stack, pool: str, target: str, timeout: float = 10) -> dict:
    record = stack.submit("http_get", {"url": target, "timeout": timeout}, pool=pool)
    (done,) = stack.wait_for([record["id"]], timeout=60)
    return done


@pytest.mark.parametrize("pool", ["threads", "prefork", "gevent"])
@pytest.mark.parametrize("path", ["/drip-body", "/drip-headers"])
def test_a_dripping_server_cannot_hold_a_job_past_its_timeout(
    stack: Stack, server: RecordingServer, pool: str, path: str
) -> None:
    done = run_http_get(stack, pool, url(server, path), timeout=1)
    assert done["state"] == "failed", done
    assert done["error"]["type"] == "TimeoutError", done["error"]
    # Near its 1 s timeout, not the 18 s the server would take to drip its answer.
    took = done["finished_at"] - done["started_at"]
    assert took < DRIP_BYTES * DRIP_PAUSE / 4, took


def test_a_body_is_read_up_to_one_mib(stack: Stack, server: RecordingServer) -> None:
    done = run_http_get(stack, "threads", url(server, "/big"))
    assert done["state"] == "succeeded", done
    assert done["result"]["status"] == 200
    assert done["result"]["bytes"] == HTTP_MAX_BODY_BYTES
    assert done["result"]["truncated"] is True


def test_a_redirect_is_not_followed(stack: Stack, server: RecordingServer) -> None:
    done = run_http_get(stack, "gevent", url(server, "/redirect"))
    assert done["state"] == "succeeded", done
    assert done["result"]["status"] == 302
    assert done["result"]["bytes"] == 0 and done["result"]["truncated"] is False
    assert "/redirect" in server.seen and "/target" not in server.seen
