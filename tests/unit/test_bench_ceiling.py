"""bench/peers/ceiling.py: the bare app is served with the API's own gunicorn command line
(only the address and the app differ), and answers what the bench sends it."""

from __future__ import annotations

import subprocess
import time

from api.__main__ import gunicorn_command
from bench.peers.ceiling import bare_argv, listening, one_connection_rate
from services.devstack.redis_server import free_port


def test_the_bare_app_runs_under_the_apis_gunicorn_command_line() -> None:
    port = free_port()
    api, bare = gunicorn_command(), bare_argv(port)
    differing = [(a, b) for a, b in zip(api, bare, strict=True) if a != b]
    assert [b for _, b in differing] == [f"127.0.0.1:{port}", "bench.peers.bare_app:create_app()"]
    server = subprocess.Popen(bare, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        for _ in range(300):  # gunicorn starting: a few seconds at most
            if listening(port) or server.poll() is not None:
                break
            time.sleep(0.1)
        assert listening(port), "the bare app never listened"
        assert one_connection_rate(port, {}, requests=50) > 0
    finally:
        server.terminate()
        server.wait(timeout=30)
