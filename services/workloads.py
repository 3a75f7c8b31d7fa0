"""The workload catalog: plain functions with a pydantic model for their parameters.

A workload knows nothing of Celery or Flask, so every pool and every local executor runs
the very same code. Each parameter is bounded so that one job always ends.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal
from urllib.parse import urlsplit

import requests
from pydantic import BaseModel, ConfigDict, Field, HttpUrl

from services.settings import get_settings

WorkloadKind = Literal["io", "cpu"]

# http_get reads at most this much of a body, so a large response cannot fill a worker.
HTTP_MAX_BODY_BYTES = 1_048_576


class NoopParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    value: Any = Field(None, description="Returned unchanged.")


class SleepParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    seconds: float = Field(
        ..., ge=0, le=60, strict=True, description="How long to block in time.sleep."
    )


class HttpGetParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    url: HttpUrl = Field(..., description="http(s) URL whose host is in JOB_HTTP_ALLOWED_HOSTS.")
    timeout: float = Field(
        10, gt=0, le=30, strict=True, description="Seconds for connect and for the whole read."
    )


class CpuHashParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    rounds: int = Field(
        ..., ge=1, le=5_000_000, strict=True, description="sha256 applications, chained."
    )


class CpuPrimesParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    below: int = Field(
        ..., ge=2, le=2_000_000, strict=True, description="Count the primes below this."
    )


class WorkloadError(Exception):
    """A workload refused or failed its input; its message is safe to show a client."""


def noop(value: Any = None) -> Any:
    return value


def sleep(seconds: float) -> float:
    time.sleep(seconds)
    return seconds


def http_host_allowed(url: str) -> bool:
    host = (urlsplit(url).hostname or "").lower()
    return host in get_settings().job_http_allowed_hosts


def http_get(url: str, timeout: float = 10) -> dict[str, Any]:
    # Checked again here, not only at submission: the worker is the last line of defence
    # against a message that did not come through the API.
    if not http_host_allowed(url):
        raise WorkloadError(f"host of {url!r} is not in JOB_HTTP_ALLOWED_HOSTS")
    started = time.perf_counter()
    deadline = started + timeout
    body = b""
    # No redirects: a redirect could lead off the allow-list. The body is read in chunks
    # against one deadline, so a server dripping bytes cannot hold the job past `timeout`.
    with requests.get(url, timeout=timeout, allow_redirects=False, stream=True) as response:
        for chunk in response.iter_content(chunk_size=65_536):
            body += chunk
            if len(body) > HTTP_MAX_BODY_BYTES:
                break
            if time.perf_counter() > deadline:
                raise requests.Timeout(f"reading {url} took longer than {timeout} s")
    return {
        "status": response.status_code,
        "bytes": min(len(body), HTTP_MAX_BODY_BYTES),
        "truncated": len(body) > HTTP_MAX_BODY_BYTES,
        "elapsed_ms": round((time.perf_counter() - started) * 1000, 3),
    }


def cpu_hash(rounds: int) -> str:
    digest = b"jobrunner"
    for _ in range(rounds):
        digest = hashlib.sha256(digest).digest()
    return digest.hex()


def cpu_primes(below: int) -> int:
    # Trial division by the primes found so far: pure Python, holds the GIL throughout.
    primes: list[int] = []
    for candidate in range(2, below):
        limit = int(candidate**0.5)
        for prime in primes:
            if prime > limit:
                primes.append(candidate)
                break
            if candidate % prime == 0:
                break
        else:
            primes.append(candidate)
    return len(primes)


@dataclass(frozen=True)
class Workload:
    name: str
    kind: WorkloadKind
    params: type[BaseModel]
    function: Callable[..., Any]
    description: str
    # Failures worth another attempt (the network blinked), as opposed to bad input.
    retryable: tuple[type[BaseException], ...] = ()

    def validate(self, params: dict[str, Any]) -> BaseModel:
        """Parse params into the workload's model (pydantic.ValidationError) and check
        the operator's policy on them (WorkloadError)."""
        parsed = self.params.model_validate(params)
        self.check_policy(parsed)
        return parsed

    def check_policy(self, parsed: BaseModel) -> None:
        """What configuration, not the schema, forbids: a host off the allow-list."""
        if isinstance(parsed, HttpGetParams) and not http_host_allowed(str(parsed.url)):
            raise WorkloadError(
                f"host {parsed.url.host!r} is not allowed; allowed hosts: "
                + ", ".join(get_settings().job_http_allowed_hosts)
            )

    def run(self, params: dict[str, Any]) -> Any:
        """Run with already validated, JSON-shaped params."""
        parsed = self.params.model_validate(params)
        return self.function(**parsed.model_dump(mode="json"))


CATALOG: dict[str, Workload] = {
    w.name: w
    for w in (
        Workload("noop", "io", NoopParams, noop, "Returns its input; measures overhead."),
        Workload("sleep", "io", SleepParams, sleep, "Blocking time.sleep, the I/O stand-in."),
        Workload(
            "http_get",
            "io",
            HttpGetParams,
            http_get,
            "A real blocking HTTP GET.",
            retryable=(requests.ConnectionError, requests.Timeout),
        ),
        Workload("cpu_hash", "cpu", CpuHashParams, cpu_hash, "Chained sha256, pure CPU."),
        Workload("cpu_primes", "cpu", CpuPrimesParams, cpu_primes, "Counts primes, pure Python."),
    )
}


def get_workload(name: str) -> Workload:
    """The catalog entry named `name`; KeyError when there is none."""
    return CATALOG[name]
