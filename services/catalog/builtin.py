"""The built-in workloads: the tutorial's two lessons (waiting, and CPU under the GIL)
and the three the tutorial misses (C code that releases the GIL, CPU and waiting mixed in
one job, memory). Registered through `@workload` like a user's own, and bounded so that
one job always ends.
"""

from __future__ import annotations

import hashlib
import time
from functools import lru_cache
from typing import Annotated, Any

from pydantic import Field

from services.catalog.http_get import HttpGetParams, check_allowed_host, http_get
from services.catalog.registry import workload
from services.core.json_numbers import WHOLE_FLOATS_AS_INT

MIB = 1024 * 1024


@workload
def noop(value: Annotated[Any, Field(description="Returned unchanged.")] = None) -> Any:
    """Returns its input; measures overhead."""
    return value


@workload
def sleep(
    seconds: Annotated[
        float, Field(ge=0, le=60, strict=True, description="How long to block in time.sleep.")
    ],
) -> float:
    """Blocking time.sleep, the I/O stand-in."""
    time.sleep(seconds)
    return seconds


@workload(name="http_get", retry_on=(ConnectionError, TimeoutError), policy=check_allowed_host)
def http_get_job(params: HttpGetParams) -> dict[str, Any]:
    """A real blocking HTTP GET."""
    return http_get(str(params.url), params.timeout)


@workload(kind="cpu")
def cpu_hash(
    rounds: Annotated[
        int,
        Field(ge=1, le=5_000_000, strict=True, description="sha256 applications, chained."),
        WHOLE_FLOATS_AS_INT,
    ],
) -> str:
    """Chained sha256, pure CPU."""
    # 32-byte inputs: too short for hashlib to release the GIL (it does from 2 KiB), so
    # the interpreter holds it throughout, as pure Python would.
    digest = b"jobrunner"
    for _ in range(rounds):
        digest = hashlib.sha256(digest).digest()
    return digest.hex()


@workload(kind="cpu")
def cpu_primes(
    below: Annotated[
        int,
        Field(ge=2, le=2_000_000, strict=True, description="Count the primes below this."),
        WHOLE_FLOATS_AS_INT,
    ],
) -> int:
    """Counts primes, pure Python."""
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


@lru_cache(maxsize=4)
def _zeros(mebibytes: int) -> bytes:
    # Made once per size and process: the job measures hashing, not allocation.
    return bytes(mebibytes * MIB)


@workload(kind="cpu", default_pool="threads")
def cpu_hash_nogil(
    mebibytes: Annotated[
        int,
        Field(ge=1, le=64, strict=True, description="Size of the buffer hashed, MiB."),
        WHOLE_FLOATS_AS_INT,
    ] = 8,
    rounds: Annotated[
        int,
        Field(ge=1, le=100, strict=True, description="Times the buffer is hashed."),
        WHOLE_FLOATS_AS_INT,
    ] = 1,
) -> str:
    """sha256 over a large buffer: CPU work in C that releases the GIL, so threads scale."""
    # hashlib drops the GIL while it hashes any buffer over 2 KiB (Modules/hashlib.h), so
    # threads of one process hash on every core, as processes would, without their cost.
    buffer = _zeros(mebibytes)
    digest = b""
    for _ in range(rounds):
        digest = hashlib.sha256(buffer).digest()
    return digest.hex()


def _spin(milliseconds: float) -> int:
    """Pure-Python work for `milliseconds` of this thread's CPU time (it holds the GIL)."""
    until = time.thread_time() + milliseconds / 1000
    spins = 0
    while time.thread_time() < until:
        spins += 1
    return spins


@workload
def mixed(
    cpu_ms: Annotated[
        float, Field(ge=0, le=10_000, strict=True, description="Pure-Python CPU time first, ms.")
    ] = 10,
    io_ms: Annotated[
        float, Field(ge=0, le=10_000, strict=True, description="Then a blocking wait, ms.")
    ] = 50,
) -> dict[str, float]:
    """CPU then a wait in one job: greenlets cannot leave the CPU part, threads can."""
    # Greenlets switch only where one waits, so under gevent a job's CPU part delays every
    # other job's wakeup; threads are preempted every 5 ms (sys.getswitchinterval()).
    _spin(cpu_ms)
    time.sleep(io_ms / 1000)
    return {"cpu_ms": cpu_ms, "io_ms": io_ms}


@workload(default_pool="threads")
def allocate(
    mebibytes: Annotated[
        int,
        Field(ge=1, le=1024, strict=True, description="Memory allocated and touched, MiB."),
        WHOLE_FLOATS_AS_INT,
    ] = 64,
    hold_ms: Annotated[
        float, Field(ge=0, le=60_000, strict=True, description="How long it is held, ms.")
    ] = 100,
) -> int:
    """Allocates and holds memory: what each pool pays for isolation, in peak RSS."""
    block = bytearray(mebibytes * MIB)
    for offset in range(0, len(block), 4096):  # touch every page, so it is resident
        block[offset] = 1
    time.sleep(hold_ms / 1000)
    return len(block)
