"""Errors as `application/problem+json` (RFC 9457). No stack trace ever reaches a client."""

from __future__ import annotations

import logging
from typing import Any, TypeVar

import redis
from flask import Flask, Response, json
from kombu.exceptions import OperationalError
from pydantic import BaseModel, ValidationError
from werkzeug.exceptions import HTTPException

from services.core.redis_clients import storage_refusal
from services.jobs.submission import NotReplicated

log = logging.getLogger(__name__)

PROBLEM_JSON = "application/problem+json"
T = TypeVar("T")


class FieldError(BaseModel):
    field: str
    message: str


class ProblemBody(BaseModel):
    """The body of every error response."""

    type: str
    title: str
    status: int
    detail: str
    errors: list[FieldError] | None = None


class Problem(Exception):
    """Raised anywhere in a request to answer with a problem document."""

    def __init__(
        self,
        status: int,
        title: str,
        detail: str,
        errors: list[FieldError] | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(detail)
        self.status, self.title, self.detail = status, title, detail
        self.errors, self.headers = errors, headers or {}

    def response(self) -> Response:
        slug = self.title.lower().replace(" ", "-")
        body = ProblemBody(
            type=f"urn:jobrunner:problem:{slug}",
            title=self.title,
            status=self.status,
            detail=self.detail,
            errors=self.errors,
        )
        payload = body.model_dump(exclude_none=True)
        return Response(
            json.dumps(payload), self.status, mimetype=PROBLEM_JSON, headers=self.headers
        )


def found(value: T | None, detail: str) -> T:
    """`value`, or a 404 problem saying what was not found (`detail`)."""
    if value is None:
        raise Problem(404, "Not Found", detail)
    return value


def broker_problem(exc: Exception | None = None) -> Problem:
    """Redis did not take a submission: a 503 saying nothing was accepted, or a 507 when
    Redis is full (it takes jobs again once there is room)."""
    full = storage_refusal(exc)
    if full is not None:
        return redis_full_problem(full)
    if isinstance(exc, NotReplicated):  # stored on the primary, unconfirmed: say so
        return Problem(503, "Service Unavailable", str(exc), headers={"Retry-After": "1"})
    return Problem(
        503, "Service Unavailable", "Redis did not take the job; nothing was queued",
        headers={"Retry-After": "1"},
    )  # fmt: skip


def redis_full_problem(full: str) -> Problem:
    """A 507: Redis is up but refuses writes, its memory or its disk full."""
    why = (
        "Redis is full (maxmemory reached, noeviction)"
        if full == "memory"
        else "Redis cannot write its append-only file (its disk is full)"
    )
    return Problem(
        507, "Insufficient Storage",
        f"{why}: nothing was stored; it takes jobs again once there is room (finished "
        "jobs expire after JOB_RESULT_TTL)",
        headers={"Retry-After": "10"},
    )  # fmt: skip


def validation_problem(exc: ValidationError, prefix: str = "") -> Problem:
    """A 422 naming each failing field (dotted path) and why it failed."""
    errors = []
    for item in exc.errors(include_url=False):
        path = ".".join(str(part) for part in (prefix, *item["loc"]) if part != "")
        errors.append(FieldError(field=path or "body", message=item["msg"]))
    detail = "; ".join(f"{e.field}: {e.message}" for e in errors)
    return Problem(422, "Validation failed", detail, errors)


def install_error_handlers(app: Flask) -> None:
    @app.errorhandler(Problem)
    def _problem(exc: Problem) -> Response:
        return exc.response()

    @app.errorhandler(HTTPException)
    def _http(exc: HTTPException) -> Response:
        code = exc.code or 500
        detail = exc.description or exc.name
        if code == 413:
            limit = app.config.get("MAX_CONTENT_LENGTH")
            detail = f"the request body is larger than JOB_MAX_BODY_BYTES ({limit} bytes)"
        response = Problem(code, exc.name, detail).response()
        if code == 405 and exc.get_response().headers.get("Allow"):
            response.headers["Allow"] = exc.get_response().headers["Allow"]
        return response

    # Redis reached through Celery (GET /pools inspects the workers by a broadcast on the
    # broker) fails with kombu's OperationalError, not redis-py's: the same outage.
    @app.errorhandler(redis.RedisError)
    @app.errorhandler(OperationalError)
    def _redis_down(exc: Exception) -> Response:
        full = storage_refusal(exc)
        if full is not None:
            log.warning("Redis refuses writes (%s full): %s", full, exc)
            return redis_full_problem(full).response()
        log.warning("Redis unavailable: %s", exc)
        return Problem(
            503,
            "Service Unavailable",
            "the job store (Redis) is not reachable; try again",
            headers={"Retry-After": "1"},
        ).response()

    @app.errorhandler(Exception)
    def _unexpected(exc: Exception) -> Response:
        log.exception("unhandled error")
        return Problem(
            500, "Internal Server Error", "an unexpected error; see the API log"
        ).response()


def problem_responses(*codes: int) -> dict[str, Any]:
    """Spectree response entries documenting problem bodies for these status codes."""
    return {f"HTTP_{code}": ProblemBody for code in codes}
