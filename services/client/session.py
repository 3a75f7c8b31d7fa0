"""A keep-alive HTTP session that lets an idle connection go before the server does, and
reads the environment's proxy settings once instead of on every call.

A server closes a kept-alive connection after its own idle timeout (the API's: 75 s,
api/gunicorn_conf.py; a proxy's in front of it: often 60 s). A client that reuses the
connection in the same instant sends its request into a socket the server is closing: the
request is lost with "Remote end closed connection without response", and for a POST the
client cannot know whether it was taken. requests keeps pooled connections forever, so the
client must be the one that stops first, as httpx (keepalive_expiry) and Go's net/http
(IdleConnTimeout) do: a connection idle longer than IDLE_SECONDS is closed, not reused.
"""

from __future__ import annotations

import threading
import time
from typing import Any

import requests

# Well below every server's keep-alive the client may meet (the API's 75 s, a proxy's
# 60 s), and long enough that polling a job never pays a new handshake.
IDLE_SECONDS = 15.0


class ExpiringSession(requests.Session):
    """A requests.Session whose pooled connections are dropped once the session has been
    idle for `idle_seconds`, so none is reused after the server may have closed it.

    Idleness is the session's, not each connection's: the pools hand out the most recently
    returned connection first, so one that sat longer is only taken when several requests
    run at once, and then the session was not idle."""

    def __init__(self, idle_seconds: float = IDLE_SECONDS) -> None:
        super().__init__()
        self.idle_seconds = idle_seconds
        self._last_used = time.monotonic()
        self._lock = threading.Lock()

    def request(self, method: str | bytes, url: str | bytes, *args: Any, **kwargs: Any) -> Any:
        with self._lock:
            if time.monotonic() - self._last_used > self.idle_seconds:
                # Closes the connections waiting in the pools; one still carrying a
                # response is closed when it comes back. The adapters stay usable.
                for adapter in self.adapters.values():
                    adapter.close()
            self._last_used = time.monotonic()
        try:
            return super().request(method, url, *args, **kwargs)
        finally:
            self._last_used = time.monotonic()


def read_environment_once(session: requests.Session, url: str) -> tuple[str, str] | None:
    """Apply now what the environment says for `url` (HTTP(S)_PROXY and NO_PROXY, the CA
    bundle of REQUESTS_CA_BUNDLE or CURL_CA_BUNDLE), then stop requests from reading it
    again on every call; the ~/.netrc login for `url`'s host, if any, for the caller to
    send with its own requests to that URL (a session's `auth` would go to every host).

    With `trust_env`, requests walks every environment variable and looks for a netrc file
    on each request: a fifth of a `Client.submit` call to a bare server (measured,
    docs/client.md). A variable changed after the client was made is therefore not seen;
    a new client sees it."""
    found = session.merge_environment_settings(url, {}, None, None, None)
    session.proxies.update(found["proxies"])
    session.verify = found["verify"]
    session.trust_env = False
    return requests.utils.get_netrc_auth(url)
