"""Schemathesis against /openapi.json: no 5xx, and every answer matches the document.

A stack of its own without workers: the generated jobs (a minute of sleep, say) only
queue up, and never hold up the pools the other tests measure.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.stack import TEST_KEYS, Stack


@pytest.fixture(scope="module")
def api_only(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    stack = Stack(tmp_path_factory.mktemp("fuzz"), env_overrides={"API_RATE_LIMIT": "0"})
    try:
        stack.start_redis()
        stack.start_api()
        stack.wait_ready()
        yield stack
    finally:
        stack.stop()


def schemathesis(stack: Stack, *options: str, timeout: float = 400) -> None:
    st = Path(sys.executable).with_name("st")
    result = subprocess.run(
        [
            str(st), "run", f"{stack.url}/openapi.json",
            "--header", f"Authorization: Bearer {TEST_KEYS['admin'][1]}",
            "--checks", "all",
            "--phases", "examples,coverage,fuzzing",
            "--seed", "20261124",
            # One worker: hypothesis describes its filters by parsing their source with
            # `ast`, which on CPython 3.11.7 fails in two threads at once ("AST
            # constructor recursion depth mismatch").
            "--workers", "1",
            *options,
        ],
        capture_output=True, text=True, timeout=timeout,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-2000:]


@pytest.mark.timeout(420)
def test_api_conforms_to_its_openapi_document(api_only: Stack) -> None:
    """Every operation: no 5xx, answers as documented, and schema-violating requests
    refused. Submissions are also refused for what only configuration and the pools
    decide (a time limit on a pool that cannot kill, above JOB_MAX_TIME_LIMIT, a backoff
    outliving the visibility timeout), which a schema cannot say: positive checks are
    off here, and on in the test below for everything else."""
    schemathesis(api_only, "--exclude-checks", "positive_data_acceptance",
                 "--exclude-path", "/lab/delay", "--max-examples", "10")  # fmt: skip


@pytest.mark.timeout(420)
def test_what_the_document_allows_is_accepted(api_only: Stack) -> None:
    """Positive checks on every operation but job submission: the schema is as strict
    as the validation (an experiment's params per workload, at least one target, two
    ids to compare, http_get's allowed hosts), so a request it allows is taken."""
    schemathesis(api_only, "--include-path-regex", "^/(experiments|workloads|pools|scaling"
                 "|healthz|readyz|jobs/[{])", "--max-examples", "15")  # fmt: skip


@pytest.mark.timeout(420)
def test_lab_delay_conforms_within_its_bound(api_only: Stack) -> None:
    """/lab/delay waits up to 30 s by design: every check, with a response-time bound
    just above that and a request timeout above it."""
    schemathesis(api_only, "--include-path", "/lab/delay", "--max-examples", "3",
                 "--max-response-time", "32", "--request-timeout", "35", timeout=400)  # fmt: skip
