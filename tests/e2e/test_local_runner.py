"""`make run` without Docker: the local runner starts everything, the commands of the
README and the docs work against it when pasted, a worker that dies is started again,
and SIGTERM stops every process it started."""

from __future__ import annotations

import json
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
import redis
import requests

from services.core import redis_keys
from services.devstack.redis_server import RedisServer, free_port

ROOT = Path(__file__).resolve().parents[2]
# Short, so the Ctrl-C test sees a prefork job outlast it and be handed back.
SHUTDOWN_GRACE = 2


@dataclass
class LocalRun:
    process: subprocess.Popen[str]
    url: str
    workdir: Path
    output: Path

    def printed(self) -> str:
        return self.output.read_text()


DOC_PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
DOC_TEST = re.compile(r"<!-- doc-test: ([\w-]+) -->\s*```bash\n(.*?)```", re.S)


def doc_blocks() -> dict[str, str]:
    """Every bash block marked `<!-- doc-test: NAME -->` in the README and the docs."""
    blocks: dict[str, str] = {}
    for page in DOC_PAGES:
        for name, block in DOC_TEST.findall(page.read_text()):
            assert name not in blocks, f"two doc-test blocks named {name}"
            blocks[name] = block
    return blocks


def test_every_marked_block_is_run_by_a_test() -> None:
    """A block marked for testing that no test pastes would be a promise nobody checks."""
    tested = {"api-tour", "lab", "first-job", "first-comparison"}
    assert set(doc_blocks()) == tested


@pytest.fixture(scope="module")
def local_run(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalRun]:
    workdir = tmp_path_factory.mktemp("make-run")
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k not in ("REDIS_URL", "JOBRUNNER_API_KEYS")}
    env.update(
        API_PORT=str(port), JOBRUNNER_RUN_DIR=str(workdir / ".run"), PYTHONUNBUFFERED="1",
        JOB_SHUTDOWN_GRACE=str(SHUTDOWN_GRACE),
    )  # fmt: skip
    output = workdir / "make-run.out"
    # A process group of its own, led by the runner, as a terminal's foreground job is:
    # Ctrl-C there signals the whole group.
    process = subprocess.Popen(
        [sys.executable, "-m", "services.devstack"],
        cwd=ROOT, env=env, stdout=output.open("w"), stderr=subprocess.STDOUT, text=True,
        start_new_session=True,
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


def json_documents(text: str) -> list[dict]:
    """The JSON documents curl printed one after another, without separators."""
    decoder, documents, at, text = json.JSONDecoder(), [], 0, text.strip()
    while at < len(text):
        document, at = decoder.raw_decode(text, at)
        documents.append(document)
        while at < len(text) and text[at].isspace():
            at += 1
    return documents


def run_pasted(run: LocalRun, block: str, timeout: float) -> str:
    """A marked block of the docs as a user pastes it, against this run; but with
    `curl -f`, so any 4xx or 5xx answer fails the script instead of being printed and
    passed over."""
    script = doc_blocks()[block].replace("127.0.0.1:8000", run.url.removeprefix("http://"))
    assert "curl -s " in script
    script = script.replace("curl -s ", "curl -sf ")
    result = subprocess.run(
        ["bash", "-euo", "pipefail", "-c", script],
        cwd=run.workdir, capture_output=True, text=True, timeout=timeout,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr + result.stdout
    return result.stdout


def test_readme_first_job_works_when_pasted(local_run: LocalRun) -> None:
    out = run_pasted(local_run, "first-job", timeout=60)
    [record] = json_documents(out)
    assert record["workload"] == "sleep" and record["state"] == "succeeded", record
    assert record["worker_node"] and record["attempts"] == 1


def test_readme_first_comparison_works_when_pasted(local_run: LocalRun) -> None:
    out = run_pasted(local_run, "first-comparison", timeout=180)
    state, *verdict = out.strip().splitlines()
    assert state == "succeeded", out
    # The verdict names the pools it compared, with figures.
    assert verdict and "jobs/s" in verdict[0], out
    assert all(pool in out for pool in ("threads", "prefork", "gevent")), out


def test_api_tour_works_when_pasted(local_run: LocalRun) -> None:
    out = run_pasted(local_run, "api-tour", timeout=120)
    assert '"workload":"sleep"' in out and '"state":"queued"' in out
    assert '"pools"' in out and '"workloads"' in out and '"openapi": "3.1' in out
    # The tour's cpu_hash job ran to its end, and the tour printed it so.
    listed = requests.get(
        f"{local_run.url}/jobs", params={"workload": "cpu_hash"}, headers=auth(local_run),
        timeout=10,
    ).json()["jobs"]  # fmt: skip
    assert [job["state"] for job in listed] == ["succeeded"], listed
    printed = [doc for doc in json_documents(out) if doc.get("id") == listed[0]["id"]]
    assert [doc["state"] for doc in printed] == ["succeeded"]
    # The tour's cancel stopped its long job.
    cancelled = requests.get(
        f"{local_run.url}/jobs", params={"state": "cancelled"}, headers=auth(local_run),
        timeout=10,
    ).json()["jobs"]  # fmt: skip
    assert [job["workload"] for job in cancelled] == ["sleep"]


def test_lab_commands_work_when_pasted(local_run: LocalRun) -> None:
    out = run_pasted(local_run, "lab", timeout=180)
    assert '"state":"succeeded"' in out
    assert '"verdict"' in out and '"efficiency"' in out
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


def submit(run: LocalRun, workload: str, params: dict, pool: str) -> str:
    body = {"workload": workload, "params": params, "pool": pool}
    answer = requests.post(f"{run.url}/jobs", json=body, headers=auth(run), timeout=10)
    assert answer.status_code == 202, answer.text
    return answer.json()["id"]


def wait_running(run: LocalRun, job_ids: list[str], timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    for job_id in job_ids:
        url = f"{run.url}/jobs/{job_id}"
        while requests.get(url, headers=auth(run), timeout=10).json()["state"] != "running":
            assert time.monotonic() < deadline, job_id
            time.sleep(0.1)


def test_ctrl_c_keeps_redis_up_until_the_workers_are_done(local_run: LocalRun) -> None:
    """Ctrl-C signals the runner's whole process group. Redis must outlive the workers'
    shutdown: a job that ends meanwhile has its outcome stored, and one past the grace
    goes back to the queue, then every process the runner started is gone."""
    short = submit(local_run, "sleep", {"seconds": SHUTDOWN_GRACE + 2}, "threads")
    long = submit(local_run, "sleep", {"seconds": 60}, "prefork")
    wait_running(local_run, [short, long])
    started = psutil.Process(local_run.process.pid).children(recursive=True)
    assert len(started) >= 5  # redis, api, three workers (and their pool processes)

    os.killpg(local_run.process.pid, signal.SIGINT)  # what the terminal does on Ctrl-C
    assert local_run.process.wait(timeout=60) == 0
    _gone, alive = psutil.wait_procs(started, timeout=10)
    assert not alive, [p.info for p in alive]
    assert "stopped" in local_run.printed()

    data = local_run.workdir / ".run" / "redis"
    assert "SIGINT" not in (data / "redis.log").read_text()  # stopped by the runner, last
    server = RedisServer(data).start()  # the same append-only data, read back
    try:
        client = redis.Redis.from_url(server.url, decode_responses=True)
        assert client.hget(redis_keys.job(short), "state") == "succeeded"
        assert client.hget(redis_keys.job(long), "state") != "succeeded"
        queued = [m for q in client.scan_iter(_type="list") for m in client.lrange(q, 0, -1)]
        assert any(long in message for message in queued), "the prefork job was not handed back"
    finally:
        server.stop()
