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

from pydantic import BaseModel, ConfigDict, Field

from services.catalog.errors import WorkloadError
from services.catalog.http_get import HttpGetParams, check_allowed_host, http_get
from services.core.vocabulary import WorkloadKind

__all__ = ["CATALOG", "Workload", "WorkloadError", "WorkloadName", "get_workload"]


class NoopParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    value: Any = Field(None, description="Returned unchanged.")


class SleepParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    seconds: float = Field(
        ..., ge=0, le=60, strict=True, description="How long to block in time.sleep."
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


def noop(value: Any = None) -> Any:
    return value


def sleep(seconds: float) -> float:
    time.sleep(seconds)
    return seconds


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
        if isinstance(parsed, HttpGetParams):
            check_allowed_host(parsed)

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
            retryable=(ConnectionError, TimeoutError),
        ),
        Workload("cpu_hash", "cpu", CpuHashParams, cpu_hash, "Chained sha256, pure CPU."),
        Workload("cpu_primes", "cpu", CpuPrimesParams, cpu_primes, "Counts primes, pure Python."),
    )
}


# The catalog's names as a type, so a model's 422 lists the allowed values by itself.
WorkloadName = Literal[tuple(CATALOG)]  # type: ignore[valid-type]


def get_workload(name: str) -> Workload:
    """The catalog entry named `name`; KeyError when there is none."""
    return CATALOG[name]
