"""The API keeps an idle connection open far longer than a client does
(api/gunicorn_conf.py), so a client reusing one never meets a server closing it."""

from __future__ import annotations

import http.client
import time
from urllib.parse import urlsplit

from tests.stack import Stack

# Past gunicorn's default keep-alive (2 s) and the poll of its gthread loop (1 s).
IDLE = 3.5


def test_an_idle_connection_outlives_gunicorns_default_keep_alive(stack: Stack) -> None:
    address = urlsplit(stack.url)
    connection = http.client.HTTPConnection(address.hostname, address.port, timeout=10)
    try:
        connection.request("GET", "/healthz")
        assert connection.getresponse().read() is not None
        socket_before = connection.sock
        time.sleep(IDLE)
        connection.request("GET", "/healthz")  # raises if the server closed it meanwhile
        response = connection.getresponse()
        assert response.status == 200 and response.read()
        assert connection.sock is socket_before, "the connection was opened anew"
    finally:
        connection.close()
