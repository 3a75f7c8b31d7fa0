"""Asking again until something is final: often at first (most jobs are short), then every
half second; past an API restart (no answer, 503) until the caller's timeout."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import TypeVar

from services.client.errors import ApiError, ApiUnreachable

T = TypeVar("T")

FIRST_INTERVAL = 0.02
LAST_INTERVAL = 0.5
GROWTH = 1.5
# Answers a restarting API or a proxy in front of it gives: the thing polled still exists.
TRANSIENT_STATUSES = frozenset({429, 502, 503, 504})
# A poll's own HTTP timeout is what is left of the caller's, but never below this: the
# last poll before the deadline still gets its answer.
MIN_REQUEST_TIMEOUT = 1.0


def intervals() -> Iterator[float]:
    """20 ms, 30 ms, 45 ms … up to 0.5 s, then 0.5 s for ever."""
    interval = FIRST_INTERVAL
    while True:
        yield interval
        interval = min(LAST_INTERVAL, interval * GROWTH)


def is_transient(error: ApiError) -> bool:
    return isinstance(error, ApiUnreachable) or error.status in TRANSIENT_STATUSES


def poll(
    fetch: Callable[[float | None], T],
    finished: Callable[[T], bool],
    timeout: float | None,
    describe: Callable[[T | None], str],
    progress: Callable[[T], None] | None = None,
) -> T:
    """fetch(request_timeout) until finished(answer); TimeoutError saying describe(last
    answer) and the last transient error once `timeout` seconds have passed (None: wait
    for ever). An error that is not transient (404, 401) is raised at once."""
    deadline = None if timeout is None else time.monotonic() + timeout
    pauses = intervals()
    last: T | None = None
    while True:
        left = None if deadline is None else deadline - time.monotonic()
        pause = next(pauses)
        problem: ApiError | None = None
        try:
            last = fetch(None if left is None else max(MIN_REQUEST_TIMEOUT, left))
        except ApiError as error:
            if not is_transient(error):
                raise
            problem = error
            pause = max(pause, error.retry_after or 0)
        else:
            if progress is not None:
                progress(last)
            if finished(last):
                return last
        if deadline is not None:
            left = deadline - time.monotonic()
            if left <= 0:
                said = describe(last) + (f"; last poll: {problem}" if problem else "")
                raise TimeoutError(f"{said} after {timeout:g} s")
            pause = min(pause, left)
        time.sleep(pause)
