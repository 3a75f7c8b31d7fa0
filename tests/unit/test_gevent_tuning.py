"""The gevent worker's connection probe still tells an idle connection from one with data."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

# In a process of its own: gevent's patching must come first and must not leak.
PROBE = """
from gevent import monkey
monkey.patch_all()
import socket, time
from redis._parsers import hiredis
from worker import gevent_tuning

gevent_tuning.install()
assert hiredis._socket_can_read is gevent_tuning._socket_can_read
idle, peer = socket.socketpair()
assert hiredis._socket_can_read(idle, 0) is False
peer.sendall(b"+OK\\r\\n")
time.sleep(0.05)
assert hiredis._socket_can_read(idle, 0) is True
assert hiredis._socket_can_read(idle, 0.01) is True  # a probe that may wait: gevent's
peer.close()
idle.recv(16)
assert hiredis._socket_can_read(idle, 0) is True  # closed by the peer: not reusable
print("probe ok")
"""


def test_zero_timeout_probe_under_gevent() -> None:
    done = subprocess.run(
        [sys.executable, "-c", PROBE], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "probe ok"
