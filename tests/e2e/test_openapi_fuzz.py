"""Schemathesis against /openapi.json: no 5xx, and every answer matches the document.

A stack of its own without workers: the generated jobs (a minute of sleep, say) only
queue up, and never hold up the pools the other tests measure.

The module runs on one xdist worker, on one stack. /lab/delay's run spends a minute
waiting for the two delays at its bound (29.999 and 30 s, the coverage phase's cases), so
it starts with the stack and runs beside the others, which keep the processor busy;
its test collects it.
"""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.stack import TEST_KEYS, Stack

pytestmark = pytest.mark.xdist_group("openapi")

RUN_TIMEOUT = 400
LAB_DELAY_OPTIONS = (
    # Every check, with a response-time bound just above the 30 s the endpoint may wait,
    # and a request timeout above that.
    "--include-path", "/lab/delay", "--max-examples", "3",
    "--max-response-time", "32", "--request-timeout", "35",
)  # fmt: skip


@dataclass
class FuzzedApi:
    stack: Stack
    lab_delay_run: subprocess.Popen[bytes]
    lab_delay_started: float  # monotonic: its RUN_TIMEOUT counts from here

    @property
    def lab_delay_log(self) -> Path:
        # A file, not a pipe: nobody reads the run until its test, and a full pipe
        # would stop it.
        return self.stack.workdir / "lab-delay-schemathesis.log"


@pytest.fixture(scope="module")
def api_only(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FuzzedApi]:
    stack = Stack(tmp_path_factory.mktemp("fuzz"), env_overrides={"API_RATE_LIMIT": "0"})
    lab_delay_run = None
    try:
        stack.start_redis()
        stack.start_api()
        stack.wait_ready()
        with (stack.workdir / "lab-delay-schemathesis.log").open("wb") as log:
            lab_delay_run = subprocess.Popen(
                schemathesis_command(stack, *LAB_DELAY_OPTIONS),
                stdout=log, stderr=subprocess.STDOUT,
            )  # fmt: skip
        yield FuzzedApi(stack, lab_delay_run, time.monotonic())
    finally:
        if lab_delay_run is not None and lab_delay_run.poll() is None:
            lab_delay_run.kill()  # its test was not run
            lab_delay_run.wait()
        stack.stop()


def schemathesis_command(stack: Stack, *options: str) -> list[str]:
    st = Path(sys.executable).with_name("st")
    return [
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
    ]  # fmt: skip


def schemathesis(api: FuzzedApi, *options: str) -> None:
    result = subprocess.run(
        schemathesis_command(api.stack, *options),
        capture_output=True, text=True, timeout=RUN_TIMEOUT,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-2000:]


@pytest.mark.timeout(420)
def test_api_conforms_to_its_openapi_document(api_only: FuzzedApi) -> None:
    """Every operation: no 5xx, answers as documented, and schema-violating requests
    refused. Submissions are also refused for what only configuration and the pools
    decide (a time limit on a pool that cannot kill, above JOB_MAX_TIME_LIMIT, a backoff
    outliving the visibility timeout), which a schema cannot say: positive checks are
    off here, and on in the test below for everything else."""
    schemathesis(api_only, "--exclude-checks", "positive_data_acceptance",
                 "--exclude-path", "/lab/delay", "--max-examples", "10")  # fmt: skip


@pytest.mark.timeout(420)
def test_what_the_document_allows_is_accepted(api_only: FuzzedApi) -> None:
    """Positive checks on every operation but job submission: the schema is as strict
    as the validation (an experiment's params per workload, at least one target, two
    ids to compare, http_get's allowed hosts), so a request it allows is taken."""
    schemathesis(api_only, "--include-path-regex", "^/(experiments|workloads|pools|scaling"
                 "|healthz|readyz|jobs/[{])", "--max-examples", "15")  # fmt: skip


@pytest.mark.timeout(420)
def test_lab_delay_conforms_within_its_bound(api_only: FuzzedApi) -> None:
    """/lab/delay waits up to 30 s by design: every check, with a response-time bound
    just above that (the run started with the stack; see the module's docstring)."""
    left = RUN_TIMEOUT - (time.monotonic() - api_only.lab_delay_started)
    returncode = api_only.lab_delay_run.wait(timeout=max(left, 0.1))
    assert returncode == 0, api_only.lab_delay_log.read_text(errors="replace")[-8000:]
