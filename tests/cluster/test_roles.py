"""`make run ROLE=…` on separate hosts: the local runner starts one component per machine
against a remote Redis, says a URL other hosts reach, and restarts a worker that dies.

Each host runs `python -m services.devstack` (what `make run` runs) through the bed's
command prefix, as a user would run it on each machine."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from services.devstack.cluster import REDIS_PORT
from services.devstack.launcher import Launcher
from services.devstack.netns import Bed, namespaces
from tests.cluster.conftest import require_bed
from tests.stack import api_keys_setting, bearer


def run_role(bed: Bed, host: str, folder: Path, *args: str, redis_url: str) -> subprocess.Popen:
    env = {
        **os.environ,
        "REDIS_URL": redis_url,
        "JOBRUNNER_RUN_DIR": str(folder / host),
        "JOBRUNNER_API_KEYS": api_keys_setting(),
        "API_HOST": "0.0.0.0",
    }
    log = (folder / f"{host}-runner.log").open("wb")
    argv = [*bed.command_prefix(host), sys.executable, "-m", "services.devstack", *args]
    return subprocess.Popen(argv, env=env, stdout=log, stderr=subprocess.STDOUT)


def wait_for_line(path: Path, pattern: str, runner: subprocess.Popen, timeout: float = 90) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = re.search(pattern, path.read_text(errors="replace"))
        if found:
            return found.group(0)
        assert runner.poll() is None, path.read_text(errors="replace")
        time.sleep(0.2)
    raise AssertionError(f"{pattern!r} not in {path}:\n{path.read_text(errors='replace')}")


@pytest.fixture(scope="module")
def redis_host(bed: Bed, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    launcher = Launcher(
        tmp_path_factory.mktemp("roles-redis"),
        command_prefix=bed.command_prefix("redis"),
        host_name="redis",
        reach=bed.reach("redis"),
    )
    launcher.start_redis(bind="0.0.0.0", port=REDIS_PORT)
    try:
        yield f"redis://{bed.address('redis')}:{REDIS_PORT}/0"
    finally:
        launcher.stop()


def test_each_host_runs_its_role_against_the_shared_redis(
    bed: Bed, redis_host: str, tmp_path: Path
) -> None:
    api = run_role(bed, "api", tmp_path, "--role", "api", redis_url=redis_host)
    worker = run_role(bed, "w1", tmp_path, "--role", "worker", "--pools", "gevent",
                      redis_url=redis_host)  # fmt: skip
    try:
        # The API host's own address on the bed, not 0.0.0.0 nor loopback.
        url = wait_for_line(tmp_path / "api-runner.log", r"up at (http://\S+)", api).split()[-1]
        assert url == f"http://{bed.address('api')}:8000"
        wait_for_line(tmp_path / "w1-runner.log", "workers are up", worker)
        log = (tmp_path / "w1-runner.log").read_text()
        assert "gevent-1@w1" in log and "api" not in re.findall(r"started\s+(\S+)", log)
        assert not re.search(r"started\s+(threads|prefork)", log)

        # From another host (w2), as any client: a gevent job runs on w1.
        def run_a_job() -> dict:
            http = requests.Session()
            http.headers.update(bearer("admin"))
            body = {"workload": "noop", "params": {}, "pool": "gevent"}
            job_id = http.post(f"{url}/jobs", json=body, timeout=10).json()["id"]
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                record = http.get(f"{url}/jobs/{job_id}", timeout=10).json()
                if record["state"] == "succeeded":
                    return record
                time.sleep(0.1)
            raise AssertionError(f"job never ran: {record}")

        record = bed.reach("w2")(run_a_job)
        assert (record["worker_host"], record["worker_node"]) == ("w1", "gevent-1@w1")
        assert record["worker_pid"] in bed.pids("w1")

        # A worker that dies is started again by its host's runner.
        os.kill(record["worker_pid"], signal.SIGKILL)
        wait_for_line(tmp_path / "w1-runner.log", r"restart\s+gevent-1", worker)
        assert bed.reach("w2")(run_a_job)["worker_node"] == "gevent-1@w1"
    finally:
        for runner in (worker, api):
            runner.send_signal(signal.SIGINT)
        for runner in (worker, api):
            try:
                runner.wait(timeout=30)
            except subprocess.TimeoutExpired:
                runner.kill()


def test_a_role_without_redis_url_is_refused_with_what_to_do(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k != "REDIS_URL"}
    env["JOBRUNNER_RUN_DIR"] = str(tmp_path)
    done = subprocess.run(
        [sys.executable, "-m", "services.devstack", "--role", "worker", "--pools", "gevent"],
        env=env, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert done.returncode != 0
    assert "set REDIS_URL" in done.stderr


def test_make_cluster_starts_every_host_and_leaves_nothing_behind(tmp_path: Path) -> None:
    """`make cluster` as a user runs it: up with a URL and a key, then Ctrl-C removes the
    hosts and every process on them."""
    require_bed()
    log = tmp_path / "cluster.log"
    with log.open("wb") as out:
        runner = subprocess.Popen(
            [sys.executable, "-m", "services.devstack.cluster", "--workers", "1",
             "--pools", "threads"],
            stdout=out, stderr=subprocess.STDOUT,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )  # fmt: skip
    try:
        url = wait_for_line(log, r"up at (http://\S+)", runner).split()[-1]
        namespace = re.search(r"namespace (jrc-\d+-api)", log.read_text()).group(1)  # type: ignore[union-attr]
        key = re.search(r"API key\s+(\S+)", log.read_text()).group(1)  # type: ignore[union-attr]
        # The curl it prints, as a user would paste it.
        answer = subprocess.run(
            ["ip", "netns", "exec", namespace, "curl", "-s", "-H",
             f"Authorization: Bearer {key}", f"{url}/pools"],
            capture_output=True, text=True, timeout=30,
        )  # fmt: skip
        assert '"threads-1@w1"' in answer.stdout, answer
    finally:
        runner.send_signal(signal.SIGINT)
        runner.wait(timeout=60)
    assert runner.returncode == 0, log.read_text()
    assert not [name for name in namespaces() if name.startswith(f"jrc-{runner.pid}-")]
