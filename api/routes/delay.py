"""/lab/delay: answers after N ms, so http_get jobs do real network I/O on a laptop.

It is public: workers call it from http_get jobs, which carry no credentials. Giving the
workers an API key instead would put a usable secret in every worker's environment (the
API holds only hashes), sent along to whatever URL a job names. What keeps a public
endpoint that sleeps up to 30 s from starving the API is a cap on the delays each API
process holds at once — in all, and per client address — checked in the process, with no
Redis round trip; past it the answer comes at once, with Retry-After.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager

from flask import Blueprint, Response, request
from pydantic import ValidationError
from spectree import Response as SpecResponse

from api.errors import Problem, problem_responses, validation_problem
from api.models import DelayAnswer, DelayQuery
from api.openapi import spec

blueprint = Blueprint("delay", __name__)

# Of the 32 threads of an API process (api/__main__.py), delays may hold at most half:
# the other half always serve the API. One client gets at most half of those.
LAB_DELAY_SLOTS = 16
LAB_DELAY_SLOTS_PER_CLIENT = 8


class DelaySlots:
    """The delays one API process holds, in all and per client, under one lock."""

    def __init__(self, total: int, per_client: int) -> None:
        self.total, self.per_client = total, per_client
        self._held: Counter[str] = Counter()
        self._lock = threading.Lock()

    @contextmanager
    def hold(self, client: str) -> Iterator[None]:
        """A slot for `client` while the block runs; 429 when the client holds its share,
        503 when every slot is taken."""
        with self._lock:
            if self._held[client] >= self.per_client:
                raise busy(429, "Too Many Requests", f"{self.per_client} delays per client")
            if self._held.total() >= self.total:
                raise busy(503, "Service Unavailable", f"{self.total} delays in all")
            self._held[client] += 1
        try:
            yield
        finally:
            with self._lock:
                self._held[client] -= 1
                if not self._held[client]:
                    del self._held[client]


def busy(status: int, title: str, limit: str) -> Problem:
    return Problem(
        status, title, f"/lab/delay holds at most {limit} at once per API process",
        headers={"Retry-After": "1"},
    )  # fmt: skip


slots = DelaySlots(LAB_DELAY_SLOTS, LAB_DELAY_SLOTS_PER_CLIENT)


@blueprint.get("/lab/delay")
@spec.validate(
    query=DelayQuery,
    resp=SpecResponse(HTTP_200=DelayAnswer, **problem_responses(422, 429, 503)),
    tags=["lab"],
    skip_validation=True,
)
def delay() -> Response:
    """Wait `ms` milliseconds, then answer; refused at once (429, 503) past the caps on
    delays held at once."""
    try:
        query = DelayQuery.model_validate(request.args.to_dict())
    except ValidationError as exc:
        raise validation_problem(exc) from None
    with slots.hold(request.remote_addr or "unknown"):
        time.sleep(query.ms / 1000)
    return Response(DelayAnswer(waited_ms=query.ms).model_dump_json(), mimetype="application/json")
