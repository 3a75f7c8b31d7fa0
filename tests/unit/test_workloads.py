"""Workloads are plain functions: their results and their bounds, without any server."""

from __future__ import annotations

import hashlib

import pytest
from pydantic import ValidationError

from services.catalog.builtin import cpu_hash, cpu_primes
from services.catalog.pools import POOLS
from services.catalog.workloads import CATALOG, WorkloadError, get_workload
from services.core.vocabulary import POOL_NAMES


def test_cpu_primes_counts_primes() -> None:
    assert cpu_primes(2) == 0
    assert cpu_primes(3) == 1
    assert cpu_primes(100) == 25
    assert cpu_primes(10_000) == 1229


def test_cpu_hash_chains_sha256() -> None:
    expected = hashlib.sha256(hashlib.sha256(b"jobrunner").digest()).digest().hex()
    assert cpu_hash(2) == expected


@pytest.mark.parametrize(
    ("workload", "params"),
    [
        ("sleep", {"seconds": -1}),
        ("sleep", {"seconds": 61}),
        ("cpu_hash", {"rounds": 0}),
        ("cpu_hash", {"rounds": 5_000_001}),
        ("cpu_primes", {"below": 1}),
        ("http_get", {"url": "ftp://127.0.0.1/"}),
        ("http_get", {"url": "http://127.0.0.1/", "timeout": 31}),
        ("noop", {"surprise": True}),
    ],
)
def test_out_of_bounds_params_are_rejected(workload: str, params: dict) -> None:
    with pytest.raises(ValidationError):
        get_workload(workload).validate(params)


def test_http_get_only_reaches_allowed_hosts() -> None:
    workload = get_workload("http_get")
    workload.validate({"url": "http://localhost:8000/lab/delay?ms=1"})
    with pytest.raises(WorkloadError, match="not allowed"):
        workload.validate({"url": "http://10.0.0.1/"})
    # The worker checks again, in case a message did not come through the API.
    with pytest.raises(WorkloadError):
        workload.run({"url": "http://10.0.0.1/"})


def test_catalog_kinds() -> None:
    kinds = {name: w.kind for name, w in CATALOG.items()}
    assert kinds == {
        "noop": "io",
        "sleep": "io",
        "http_get": "io",
        "cpu_hash": "cpu",
        "cpu_primes": "cpu",
        "cpu_hash_nogil": "cpu",
        "mixed": "io",
        "allocate": "io",
    }


def test_every_pool_name_has_a_profile() -> None:
    """The vocabulary names the pools (for the CLI and the launcher); the catalog profiles
    them: the two lists are one."""
    assert tuple(POOLS) == POOL_NAMES
