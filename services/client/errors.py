"""What the client raises: the API's answer when it says no (its problem+json fields), no
answer at all, and a job or an experiment that ended without a result."""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import requests

    from services.client.jobs import Job

# What a 401 means for a caller of this client: where the key it sent came from.
KEY_HINT = (
    " - set JOBRUNNER_API_KEY (or pass Client(api_key=...)), or run from the folder "
    "where `make run` wrote .run/api-key"
)


class ApiError(Exception):
    """The API answered with an error (or the client could not ask it): the fields of
    its application/problem+json body. `str()` is one line, fit for a terminal.

    `status` is None when no HTTP answer came (ApiUnreachable) or the error is the
    caller's, said before any request (a CLI usage error)."""

    def __init__(
        self,
        detail: str,
        *,
        status: int | None = None,
        title: str = "Error",
        type: str = "about:blank",  # the problem+json field's name
        errors: list[dict[str, str]] | None = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(detail)
        self.detail, self.status, self.title, self.type = detail, status, title, type
        self.errors: list[dict[str, str]] = errors or []
        self.retry_after = retry_after

    @classmethod
    def from_response(cls, response: requests.Response) -> ApiError:
        """The problem document of an error answer; a body that is not one (a proxy's
        HTML page) is kept as its first 200 characters."""
        retry_after = parse_retry_after(response.headers.get("Retry-After"))
        try:
            problem: Any = response.json()
        except ValueError:
            problem = None
        if not isinstance(problem, dict):
            text = " ".join(response.text.split())[:200]
            return cls(
                text or response.reason or "",
                status=response.status_code,
                title=f"HTTP {response.status_code}",
                retry_after=retry_after,
            )
        detail = str(problem.get("detail", ""))
        if response.status_code == 401:
            detail += KEY_HINT
        return cls(
            detail,
            status=response.status_code,
            title=str(problem.get("title", "Error")),
            type=str(problem.get("type", "about:blank")),
            errors=[e for e in problem.get("errors") or [] if isinstance(e, dict)],
            retry_after=retry_after,
        )

    def __str__(self) -> str:
        if self.status is None:
            return self.detail
        return f"{self.title} ({self.status}): {self.detail}"

    @property
    def fields(self) -> list[str]:
        """The failing fields a 422 names (`params.seconds`, `jobs.3.pool`)."""
        return [e.get("field", "") for e in self.errors]


class ApiUnreachable(ApiError):
    """No HTTP answer: nothing listens at the URL, or it did not answer in time."""

    def __init__(self, url: str, reason: str) -> None:
        super().__init__(
            f"no jobrunner API at {url} ({reason}) - start one with `make run`, or point "
            "JOBRUNNER_URL (the CLI's --api, Client(url=...)) at yours"
        )
        self.url = url


class BatchRejected(ApiError):
    """submit_many sends 1,000 jobs a request, each request all or nothing: one was
    refused. The jobs before it were accepted (`accepted`); it and those after were not.
    Failing fields are numbered as in the list given (`jobs.1003.params.seconds`)."""

    def __init__(self, cause: ApiError, start: int, end: int, accepted: list[Job]) -> None:
        super().__init__(
            renumber(cause.detail, start),
            status=cause.status,
            title=cause.title,
            type=cause.type,
            errors=[{**e, "field": renumber(e.get("field", ""), start)} for e in cause.errors],
            retry_after=cause.retry_after,
        )
        self.start, self.end, self.accepted = start, end, accepted

    def __str__(self) -> str:
        return (
            f"jobs {self.start}..{self.end}: {super().__str__()} "
            f"({len(self.accepted)} accepted before)"
        )


_ITEM = re.compile(r"\bjobs\.(\d+)\.")


def renumber(text: str, start: int) -> str:
    """`jobs.3.` of a request that began at item `start` of the caller's list, as its
    index in that list."""
    return _ITEM.sub(lambda m: f"jobs.{int(m.group(1)) + start}.", text)


def parse_retry_after(value: str | None) -> float | None:
    """Retry-After in seconds (the API sends seconds; an HTTP date is not honoured)."""
    try:
        return max(0.0, float(value)) if value else None
    except ValueError:
        return None


class JobFailed(Exception):
    """A job ended without a result: failed (its error's type and message) or
    cancelled (error_type "cancelled" unless the record says more)."""

    def __init__(self, job: Job) -> None:
        error = job.record.get("error") or {}
        state = job.state
        self.job = job
        self.error_type: str = error.get("type") or state
        self.message: str = error.get("message") or f"the job was {state}"
        super().__init__(
            f"job {job.id} ({job.record.get('workload')} on {job.record.get('pool')}) "
            f"{state}: {self.error_type}: {self.message}"
        )


class ExperimentFailed(Exception):
    """An experiment ended `failed`; `experiment` is its last document, `error` why."""

    def __init__(self, experiment: dict[str, Any]) -> None:
        self.experiment = experiment
        self.error: str = experiment.get("error") or "no reason given"
        super().__init__(f"experiment {experiment.get('id')} failed: {self.error}")
