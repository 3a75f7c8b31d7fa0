"""One change for gevent workers: redis-py's idle-connection probe uses the real poll().

Before lending out a pooled connection, redis-py checks that it holds no stray data with a
poll() of timeout 0 (`_socket_can_read` in redis/_parsers/hiredis.py). In a gevent worker
poll() is gevent's, which starts watchers and switches to the hub even when it cannot
wait: py-spy found a good share of a gevent worker running sleep jobs there
(docs/performance.md), for a check that never blocks. A zero-timeout poll() of the kernel
cannot stall the hub, so that probe gets the original call; a probe that may wait still
goes through gevent.
"""

from __future__ import annotations

import select
import socket
from typing import Any

from gevent import monkey
from redis._parsers import hiredis

_original_poll = monkey.get_original("select", "poll")
_gevent_probe = hiredis._socket_can_read


def _socket_can_read(sock: socket.socket, timeout: float | None) -> bool:
    if timeout != 0 or getattr(sock, "pending", None) is not None:
        return _gevent_probe(sock, timeout)  # may wait, or TLS: redis-py's own way
    poller: Any = _original_poll()
    poller.register(sock, select.POLLIN)
    return bool(poller.poll(0))


def install() -> None:
    """Use the zero-timeout probe; call only in a gevent-patched process."""
    hiredis._socket_can_read = _socket_can_read
