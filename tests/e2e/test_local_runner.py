"""`make run` without Docker: the local runner starts everything, the README's commands
work against it when pasted, a worker that dies is started again, and SIGTERM stops
every process it started."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psutil
import pytest
import requests

from services.redis_server import free_port

ROOT = Path(__file__).resolve().parents[2]


@dataclass
class LocalRun:
    process: subprocess.Popen[str]
    url: str
    workdir: Path
    output: Path

    def printed(self) -> str:
        return self.output.read_text()


def readme_block(name: str) -> str:
    """The bash block after `<!-- readme-test: NAME -->` in the README."""
    text = (ROOT / "README.md").read_text()
    match = re.search(rf"<!-- readme-test: {name} -->\s*```bash\n(.*?)```", text, re.S)
    assert match, f"README has no block marked {name}"
    return match.group(1)


@pytest.fixture(scope="module")
def local_run(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalRun]:
    workdir = tmp_path_factory.mktemp("make-run")
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k not in ("REDIS_URL", "JOBRUNNER_API_KEYS")}
    env.update(API_PORT=str(port), JOBRUNNER_RUN_DIR=str(workdir / ".run"), PYTHONUNBUFFERED="1")
    output = workdir / "make-run.out"
    process = subprocess.Popen(
        [sys.executable, "-m", "services.localstack"],
        cwd=ROOT, env=env, stdout=output.open("w"), stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    run = LocalRun(process, f"http://127.0.0.1:{port}", workdir, output)
    try:
        deadline = time.monotonic() + 120
        while "jobrunner is up at" not in run.printed():
            assert process.poll() is None, run.printed()
            assert time.monotonic() < deadline, run.printed()
            time.sleep(0.2)
        yield run
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            process.wait(timeout=60)


def auth(run: LocalRun) -> dict[str, str]:
    key = (run.workdir / ".run" / "api-key").read_text().strip()
    return {"Authorization": f"Bearer {key}"}


def test_prints_url_and_a_key_and_nothing_is_open(local_run: LocalRun) -> None:
    printed = local_run.printed()
    assert f"jobrunner is up at {local_run.url}" in printed
    key = auth(local_run)["Authorization"].removeprefix("Bearer ")
    assert key in printed
    assert oct((local_run.workdir / ".run" / "api-key").stat().st_mode)[-3:] == "600"
    anonymous = requests.post(f"{local_run.url}/jobs", json={"workload": "noop"}, timeout=10)
    assert anonymous.status_code == 401


def test_every_pool_serves_jobs(local_run: LocalRun) -> None:
    ids = []
    for pool in ("threads", "prefork", "gevent"):
        body = {"workload": "noop", "params": {"value": pool}, "pool": pool}
        answer = requests.post(
            f"{local_run.url}/jobs", json=body, headers=auth(local_run), timeout=10
        )
        assert answer.status_code == 202
        ids.append(answer.json()["id"])
    deadline = time.monotonic() + 60
    for job_id in ids:
        while True:
            record = requests.get(
                f"{local_run.url}/jobs/{job_id}", headers=auth(local_run), timeout=10
            ).json()
            if record["state"] == "succeeded":
                break
            assert time.monotonic() < deadline, record
            time.sleep(0.1)


def test_readme_commands_work_when_pasted(local_run: LocalRun) -> None:
    script = readme_block("api-tour").replace(
        "127.0.0.1:8000", local_run.url.removeprefix("http://")
    )
    result = subprocess.run(
        ["bash", "-euo", "pipefail", "-c", script],
        cwd=local_run.workdir, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert '"workload":"sleep"' in out and '"state":"queued"' in out
    assert '"workload":"cpu_hash"' in out
    assert '"pools"' in out and '"workloads"' in out and '"openapi": "3.1' in out
    assert "Unauthorized" not in out and '"status": 5' not in out


def test_readme_lab_commands_work_when_pasted(local_run: LocalRun) -> None:
    script = readme_block("lab").replace("127.0.0.1:8000", local_run.url.removeprefix("http://"))
    result = subprocess.run(
        ["bash", "-euo", "pipefail", "-c", script],
        cwd=local_run.workdir, capture_output=True, text=True, timeout=180,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert '"verdict"' in result.stdout and '"efficiency"' in result.stdout
    assert b"<svg" in (local_run.workdir / "chart.svg").read_bytes()[:500]


def test_a_worker_that_dies_is_started_again(local_run: LocalRun) -> None:
    runner = psutil.Process(local_run.process.pid)
    gevent = next(p for p in runner.children() if "gevent" in " ".join(p.cmdline()))
    gevent.kill()
    deadline = time.monotonic() + 60
    while "restart  gevent-1" not in local_run.printed():
        assert time.monotonic() < deadline, local_run.printed()
        time.sleep(0.2)
    # The new worker serves the pool.
    body = {"workload": "noop", "params": {"value": 1}, "pool": "gevent"}
    job = requests.post(f"{local_run.url}/jobs", json=body, headers=auth(local_run), timeout=10)
    job_url = f"{local_run.url}/jobs/{job.json()['id']}"
    while requests.get(job_url, headers=auth(local_run), timeout=10).json()["state"] != "succeeded":
        assert time.monotonic() < deadline
        time.sleep(0.1)


def test_sigterm_stops_every_process_it_started(local_run: LocalRun) -> None:
    runner = psutil.Process(local_run.process.pid)
    started = runner.children(recursive=True)
    assert len(started) >= 5  # redis, api, three workers (and their pool processes)
    local_run.process.send_signal(signal.SIGTERM)
    assert local_run.process.wait(timeout=60) == 0
    _gone, alive = psutil.wait_procs(started, timeout=10)
    assert not alive, [p.info for p in alive]
    assert "stopped" in local_run.printed()
