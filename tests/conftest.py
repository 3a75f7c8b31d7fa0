"""Shared fixtures: one real stack (Redis, API, a worker per pool) for the whole session,
and how `make test` splits the suite: most tests on two pytest-xdist workers, the tests
that compare timings with what the machine can give alone afterwards."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.stack import Stack

# Modules whose assertions compare timings with what the machine can give (speedups,
# overlap, refill delays): marked `timed`, they run in make test's second phase with
# nothing else of the suite beside them. The rest mostly waits on processes, so two
# xdist workers nearly halve the run (it must fit CI's 25 minutes).
TIMED_MODULES = frozenset(
    {
        "tests/integration/test_seed_lesson.py",
        "tests/integration/test_refill.py",
        "tests/e2e/test_experiments.py",
        "tests/e2e/test_lab_lessons.py",
        "tests/e2e/test_lab_user_workloads.py",
        "tests/e2e/test_sweep.py",
    }
)
# Every multi-host test bed uses the one subnet (services/devstack/netns.py), so the
# tests that build one run on a single xdist worker, one after another.
BED_MODULES = frozenset({"tests/e2e/test_runner_lifecycle.py"})


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        module = item.nodeid.split("::")[0]
        if module in TIMED_MODULES:
            item.add_marker(pytest.mark.timed)
        if module.startswith("tests/cluster/") or module in BED_MODULES:
            item.add_marker(pytest.mark.xdist_group("bed"))


# Concurrency of the test workers: prefork at 2 to match the 2 cores CI has.
TEST_CONCURRENCY = {"threads": 8, "prefork": 2, "gevent": 50}


@pytest.fixture(scope="session")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    with Stack(tmp_path_factory.mktemp("stack")).running(
        [*TEST_CONCURRENCY.items(), ("experiments", None)]
    ) as stack:
        yield stack
