"""A submitted job as the client holds it: its last known record, and what can be asked
of it (refresh, wait, result, cancel)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any
from urllib.parse import quote

from services.client.errors import JobFailed
from services.client.polling import poll
from services.client.transport import Transport
from services.core.vocabulary import FINAL_JOB_STATES

FINAL = frozenset(str(state) for state in FINAL_JOB_STATES)


class Job:
    """A job of the API. `record` is its record (GET /jobs/<id>) as last read; `state`,
    `id` and the rest come from it, fresh after refresh(), wait() or cancel()."""

    def __init__(self, transport: Transport, record: dict[str, Any]) -> None:
        self._transport = transport
        self.record = record

    @property
    def id(self) -> str:
        return self.record["id"]

    @property
    def state(self) -> str:
        """queued, running, succeeded, failed or cancelled."""
        return self.record["state"]

    @property
    def done(self) -> bool:
        """In a final state: succeeded, failed or cancelled."""
        return self.state in FINAL

    @property
    def path(self) -> str:
        return f"/jobs/{quote(self.id, safe='')}"

    def refresh(self, timeout: float | None = None) -> Job:
        """Read the record again (one GET)."""
        self.record = self._transport.request("GET", self.path, timeout=timeout).json()
        return self

    def wait(
        self, timeout: float | None = 60.0, progress: Callable[[Job], None] | None = None
    ) -> Job:
        """Until the job is final (None: however long it takes); TimeoutError naming the
        job and its last state after `timeout` seconds. Polls every 20 ms at first, then
        up to every 0.5 s, and past an API that restarts (no answer, 503). `progress`
        is called with the job after each poll."""
        if self.done:
            return self

        def fetch(request_timeout: float | None) -> Job:
            return self.refresh(timeout=request_timeout)

        def describe(_: Job | None) -> str:
            return f"{self!r} still {self.state}"

        return poll(fetch, lambda job: job.done, timeout, describe, progress)

    def result(self, timeout: float | None = 60.0) -> Any:
        """The job's result once it is final; JobFailed (its error's type and message)
        if it failed or was cancelled, TimeoutError as wait()."""
        self.wait(timeout)
        if self.state != "succeeded":
            raise JobFailed(self)
        return self.record.get("result")

    def cancel(self) -> Job:
        """Cancel (DELETE /jobs/<id>, an `admin` key): a queued job never runs; a running
        prefork job is stopped. ApiError 409 for one already finished, or running on a
        pool that cannot stop it (then it is marked cancel_requested and runs to its end)."""
        self.record = self._transport.request("DELETE", self.path).json()
        return self

    def __repr__(self) -> str:
        return (
            f"<Job {self.id} {self.record.get('workload')} on {self.record.get('pool')}: "
            f"{self.record.get('state')}>"
        )
