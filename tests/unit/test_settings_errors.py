"""A bad setting stops each program a user starts (make run, `python -m api`, `python -m
worker`) with one line per problem, naming the variable and what would work, not with a
traceback and pydantic's report."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from pydantic import ValidationError

from services.core.settings import Settings, setting_problems

ROOT = Path(__file__).resolve().parents[2]

# Every program a user starts, as make run, compose and the launcher start it.
ENTRY_POINTS = {
    "make run": ["-m", "services.devstack"],
    "api": ["-m", "api"],
    "worker": ["-m", "worker", "--pool", "threads"],
}

# What pydantic's own report looks like; none of it may reach the user.
REPORT_MARKS = ("Traceback", "validation error", "errors.pydantic.dev", "[type=")


def start_with(entry: str, tmp_path: Path, **variables: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("JOB_", "API_", "WORKER_"))}
    env.pop("REDIS_URL", None)
    env.update(JOBRUNNER_RUN_DIR=str(tmp_path / ".run"), **variables)
    return subprocess.run(
        [sys.executable, *ENTRY_POINTS[entry]],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=60,
    )  # fmt: skip


def assert_short_and_plain(result: subprocess.CompletedProcess[str], lines: int) -> list[str]:
    said = result.stderr.strip().splitlines()
    assert result.returncode != 0, result
    assert len(said) == lines, result.stderr
    for mark in REPORT_MARKS:
        assert mark not in result.stderr, result.stderr
    return said


@pytest.mark.parametrize("entry", sorted(ENTRY_POINTS))
def test_a_lower_visibility_timeout_alone_says_what_to_set(entry: str, tmp_path: Path) -> None:
    result = start_with(entry, tmp_path, JOB_VISIBILITY_TIMEOUT="15")
    [line] = assert_short_and_plain(result, lines=1)
    assert "JOB_MAX_TIME_LIMIT (300)" in line and "JOB_VISIBILITY_TIMEOUT (15)" in line
    assert "JOB_MAX_TIME_LIMIT=14" in line  # a value that works
    # Nothing was started: the run folder holds no Redis data.
    assert not (tmp_path / ".run" / "redis").exists()


@pytest.mark.parametrize("entry", sorted(ENTRY_POINTS))
def test_each_bad_variable_gets_a_line_naming_it(entry: str, tmp_path: Path) -> None:
    result = start_with(entry, tmp_path, API_PORT="eighty", WORKER_LOGLEVEL="loud")
    said = assert_short_and_plain(result, lines=2)
    assert any(line.startswith("invalid setting: API_PORT=eighty:") for line in said), said
    assert any("WORKER_LOGLEVEL=LOUD:" in line and "'INFO'" in line for line in said), said


def test_a_value_that_may_be_a_secret_is_not_repeated() -> None:
    with pytest.raises(ValidationError) as raised:
        Settings(redis_url=987654321, api_port=0)
    said = setting_problems(raised.value)
    assert len(said) == 2, said
    [redis_line] = [line for line in said if line.startswith("REDIS_URL")]
    assert "987654321" not in redis_line
    assert any(line.startswith("API_PORT=0:") for line in said), said


@pytest.mark.parametrize("entry", sorted(ENTRY_POINTS))
def test_a_malformed_sentinel_url_is_one_line_without_its_password(
    entry: str, tmp_path: Path
) -> None:
    result = start_with(entry, tmp_path, REDIS_URL="sentinel://:s3cret@h1:26379;sentinel://h2:no")
    [line] = assert_short_and_plain(result, lines=1)
    assert line.startswith("invalid setting: REDIS_URL: sentinel://h2… is not a sentinel"), line
    assert "s3cret" not in result.stderr + result.stdout
