"""One HTTP exchange with the API: the base URL and the key on a keep-alive session, an
error answer turned into ApiError, and a 429 or 503 that says Retry-After asked again
when that is safe."""

from __future__ import annotations

import re
import time
from typing import Any

import requests

from services.client.errors import ApiError, ApiUnreachable
from services.client.session import ExpiringSession, read_environment_once

# Methods a server may receive twice with the effect of once: a 503 is retried for them.
# A POST only with an Idempotency-Key, for a 503 may come after Redis took the job.
REPLAYABLE_METHODS = frozenset({"GET", "HEAD", "OPTIONS", "DELETE"})

_ERRNO = re.compile(r"\[Errno -?\d+\] ([^'\")]+)")


class Transport:
    """Requests to the API at `url`, sending `api_key` as a bearer token."""

    def __init__(self, url: str, api_key: str | None, timeout: float, retry_for: float) -> None:
        self.url = url.rstrip("/")
        self.timeout, self.retry_for = timeout, retry_for
        # One session: its connection pool keeps the TCP connection open between calls,
        # so polling a job costs a request, not a handshake; one left idle is let go
        # before the server closes it (services/client/session.py).
        self.session = ExpiringSession()
        self.session.headers["User-Agent"] = "jobrunner-client"
        if api_key:
            self.session.headers["Authorization"] = f"Bearer {api_key}"
        netrc_login = read_environment_once(self.session, self.url)
        # A netrc login only without a key: with requests' own reading, a netrc entry for
        # the API's host replaced the bearer key with basic auth, which the API refuses.
        self._auth = None if api_key else netrc_login

    def request(
        self,
        method: str,
        path: str,
        *,
        timeout: float | None = None,
        retry_for: float | None = None,
        **kwargs: Any,
    ) -> requests.Response:
        """The 2xx answer to `method path` (kwargs as requests takes them: json, params,
        headers); ApiError for an error answer, ApiUnreachable for none.

        A 429 (refused before any work) and a 503 to a replayable request are sent again
        after their Retry-After while `retry_for` seconds last (the client's default
        when None; 0: never)."""
        method = method.upper()
        budget = self.retry_for if retry_for is None else retry_for
        deadline = time.monotonic() + budget
        headers = kwargs.get("headers") or {}
        replayable = method in REPLAYABLE_METHODS or "Idempotency-Key" in headers
        while True:
            response = self.send(method, path, timeout or self.timeout, **kwargs)
            if response.status_code < 400:
                return response
            error = ApiError.from_response(response)
            again = error.retry_after is not None and (
                error.status == 429 or (error.status == 503 and replayable)
            )
            if not again or time.monotonic() + (error.retry_after or 0) > deadline:
                raise error
            time.sleep(error.retry_after or 0)

    def send(self, method: str, path: str, timeout: float, **kwargs: Any) -> requests.Response:
        try:
            kwargs.setdefault("auth", self._auth)
            return self.session.request(method, self.url + path, timeout=timeout, **kwargs)
        except requests.Timeout:
            raise ApiUnreachable(self.url, f"no answer within {timeout:g} s") from None
        except requests.ConnectionError as exc:
            found = _ERRNO.search(str(exc))
            raise ApiUnreachable(
                self.url, found.group(1).strip() if found else "connection failed"
            ) from None

    def close(self) -> None:
        self.session.close()
