"""The http_get workload: a real blocking HTTP GET, bounded three ways.

Only hosts on JOB_HTTP_ALLOWED_HOSTS (checked at submission and again in the worker), at
most HTTP_MAX_BODY_BYTES of a body, and one total deadline for the whole exchange, which
a server dripping a byte at a time cannot stretch.
"""

from __future__ import annotations

import functools
import http.client
import io
import re
import socket
import time
from typing import Any
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, HttpUrl, field_validator

from services.catalog.errors import WorkloadError
from services.core.settings import get_settings

# http_get reads at most this much of a body, so a large response cannot fill a worker.
HTTP_MAX_BODY_BYTES = 1_048_576


# A URL as RFC 3986 writes one (what the schema's `format: uri` means): an authority, then
# a path, a query and a fragment of the characters each may hold, `%` only as an escape.
# Anything else is refused, not quietly escaped: what is fetched is what was sent.
_PCHAR = r"(?:[A-Za-z0-9\-._~!$&'()*+,;=:@]|%[0-9A-Fa-f]{2})"
URI_REST = rf"(?:/{_PCHAR}*)*(?:\?(?:{_PCHAR}|[/?])*)?(?:#(?:{_PCHAR}|[/?])*)?"
_AUTHORITY = r"(?:[A-Za-z0-9\-._~!$&'()*+,;=:@\[\]]|%[0-9A-Fa-f]{2})*"
URI = rf"[A-Za-z][A-Za-z0-9+.\-]*://{_AUTHORITY}{URI_REST}"


def allowed_url_pattern() -> str:
    """A regular expression of the URLs whose host is on JOB_HTTP_ALLOWED_HOSTS: the
    OpenAPI document then allows only URLs the API takes (check_allowed_host decides)."""
    hosts = [
        f"\\[{re.escape(host)}\\]" if ":" in host else re.escape(host)
        for host in get_settings().job_http_allowed_hosts
    ]
    port = (
        r"(?::(?:[0-9]{1,4}|[1-5][0-9]{4}|6[0-4][0-9]{3}|65[0-4][0-9]{2}|655[0-2][0-9]|6553[0-5]))?"
    )
    return rf"^[hH][tT][tT][pP][sS]?://(?:{'|'.join(hosts)}){port}{URI_REST}$"


class HttpGetParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    url: HttpUrl = Field(
        ...,
        description="http(s) URL whose host is in JOB_HTTP_ALLOWED_HOSTS.",
        json_schema_extra={"pattern": allowed_url_pattern()},
    )

    @field_validator("url", mode="before")
    @classmethod
    def _only_uri_characters(cls, value: Any) -> Any:
        if isinstance(value, str) and not re.fullmatch(URI, value):
            raise ValueError(
                "not a URI as RFC 3986 writes one: only the characters each part may "
                "hold (escape others as %XX), and one # at most"
            )
        return value

    timeout: float = Field(
        10, gt=0, le=30, strict=True, description="Seconds for connect and for the whole read."
    )


def http_host_allowed(url: str) -> bool:
    host = (urlsplit(url).hostname or "").lower()
    return host in get_settings().job_http_allowed_hosts


def http_get(url: str, timeout: float = 10) -> dict[str, Any]:
    # Checked again here, not only at submission: the worker is the last line of defence
    # against a message that did not come through the API.
    if not http_host_allowed(url):
        raise WorkloadError(f"host of {url!r} is not in JOB_HTTP_ALLOWED_HOSTS")
    started = time.perf_counter()
    try:
        status, body = _get_before(url, time.monotonic() + timeout)
    except TimeoutError as exc:  # socket.timeout too; before OSError, of which it is one
        raise TimeoutError(f"GET {url} took longer than {timeout} s") from exc
    except (OSError, http.client.HTTPException) as exc:
        raise ConnectionError(f"GET {url}: {exc}") from exc
    return {
        "status": status,
        "bytes": min(len(body), HTTP_MAX_BODY_BYTES),
        "truncated": len(body) > HTTP_MAX_BODY_BYTES,
        "elapsed_ms": round((time.perf_counter() - started) * 1000, 3),
    }


def _get_before(url: str, deadline: float) -> tuple[int, bytes]:
    """GET `url`, done by `deadline` (time.monotonic()) or TimeoutError: its status and
    at most HTTP_MAX_BODY_BYTES + 1 bytes of its body (the extra byte tells truncation).

    http.client rather than requests, because a total deadline needs every read of the
    socket — status line, headers and body alike — to wait only for the time left, and
    requests has no hook before the headers. http.client follows no redirect (one could
    lead off the allow-list), and asks for no compression (the cap counts bytes sent).
    """
    parts = urlsplit(url)
    secure = parts.scheme == "https"
    connection_class = http.client.HTTPSConnection if secure else http.client.HTTPConnection
    # The port always given: http.client would read the end of a bare IPv6 address as one.
    port = parts.port or (443 if secure else 80)
    connection = connection_class(parts.hostname or "", port, timeout=_time_left(deadline))
    connection.response_class = functools.partial(_DeadlineResponse, deadline=deadline)
    target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    try:
        connection.request("GET", target, headers={"Accept-Encoding": "identity"})
        with connection.getresponse() as response:
            return response.status, response.read(HTTP_MAX_BODY_BYTES + 1)
    finally:
        connection.close()


def _time_left(deadline: float) -> float:
    left = deadline - time.monotonic()
    if left <= 0:
        raise TimeoutError("no time left before the deadline")
    return left


class _DeadlineReader(io.RawIOBase):
    """The socket's own reader, with each read waiting only for the time left before
    `deadline`: a server dripping one byte at a time cannot stretch a response past it,
    as it could a timeout that restarts on every byte."""

    def __init__(self, raw: io.RawIOBase, sock: socket.socket, deadline: float) -> None:
        super().__init__()
        self._raw, self._sock, self._deadline = raw, sock, deadline

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int | None:
        self._sock.settimeout(_time_left(self._deadline))
        return self._raw.readinto(buffer)

    def close(self) -> None:
        # The raw reader holds the socket open for the response, once http.client has
        # closed the connection's own reference (a response that ends the connection).
        self._raw.close()
        super().close()


class _DeadlineResponse(http.client.HTTPResponse):
    """http.client's response, reading through a _DeadlineReader."""

    def __init__(self, sock: socket.socket, *args: Any, deadline: float, **kwargs: Any) -> None:
        super().__init__(sock, *args, **kwargs)
        self.fp = io.BufferedReader(_DeadlineReader(self.fp.detach(), sock, deadline))


def check_allowed_host(params: HttpGetParams) -> None:
    """What configuration, not the schema, forbids: a host off the allow-list."""
    if not http_host_allowed(str(params.url)):
        raise WorkloadError(
            f"host {params.url.host!r} is not allowed; allowed hosts: "
            + ", ".join(get_settings().job_http_allowed_hosts),
            field="url",
        )
