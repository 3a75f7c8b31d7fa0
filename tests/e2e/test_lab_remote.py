"""The lab across hosts: each worker reports on itself (worker/self_report.py), so a pool
whose workers the lab cannot see still has its memory, its CPU and the cores of its own
hosts in the report.

"Another host" here is a worker in namespaces of its own (`unshare`): its own host name
(UTS) and its own process ids, with /proc mounted for them. The pid it reports names
nothing of it on the lab's side, and its host name is not the lab's: what a worker on
another machine looks like to the lab, while Redis stays on loopback.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import psutil
import pytest

from services.broker.celery_app import make_celery
from services.broker.inspection import self_reports
from services.catalog.pools import POOLS
from services.core.settings import Settings
from services.devstack.processes import ManagedProcess
from tests.e2e.test_experiments import run_experiment
from tests.stack import TEST_KEYS, Stack

CORES = os.cpu_count() or 1
# A worker in its own UTS and pid namespaces, /proc its own; --kill-child ends the worker
# should its unshare be killed (a test that died leaves nothing running).
UNSHARE = ["unshare", "--pid", "--fork", "--mount-proc", "--uts", "--kill-child=SIGTERM", "--"]
SET_HOSTNAME = 'hostname "$0" && exec "$@"'


def namespaces_work() -> bool:
    try:
        probe = subprocess.run([*UNSHARE, "true"], capture_output=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return probe.returncode == 0


@pytest.fixture(scope="module")
def bare_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """Redis, the API and the experiment worker; each test brings the pool workers it
    needs, on this host or on "other hosts"."""
    if not namespaces_work():
        if os.environ.get("CI"):
            pytest.fail("unshare --pid --uts is needed (root on Linux), and failed here")
        pytest.skip("unshare --pid --uts does not work here (root on Linux needed)")
    stack = Stack(tmp_path_factory.mktemp("lab-remote"))
    try:
        stack.start_redis()
        stack.start_api()
        stack.start_worker("experiments")
        stack.wait_ready()
        yield stack
    finally:
        stack.stop()


class Fleet:
    """Pool workers started by a test, on this host or each in namespaces of its own
    under a host name of its choosing; all answer Celery's ping before it goes on."""

    def __init__(self, stack: Stack) -> None:
        self.stack = stack
        self.local: list[ManagedProcess] = []
        self.remote: list[ManagedProcess] = []
        self.hosts: dict[str, str] = {}  # node -> the host name it was given

    def on_this_host(self, pool: str, concurrency: int) -> str:
        worker = self.stack.start_worker(pool, concurrency)
        self.local.append(worker)
        assert worker.node is not None
        self.hosts[worker.node] = socket.gethostname()
        return worker.node

    def elsewhere(self, pool: str, concurrency: int, host: str) -> str:
        number = 1 + sum(node.startswith(f"{pool}-") for node in self.hosts)
        node = f"{pool}-{number}@{host}"
        command = [*self.stack.commands[f"worker-{pool}"], "--name", node]
        argv = [*UNSHARE, "sh", "-c", SET_HOSTNAME, host, *command]
        argv += ["--concurrency", str(concurrency)]
        self.remote.append(self.stack.start_program(f"remote-{pool}-{number}", argv))
        self.hosts[node] = host
        return node

    def wait_ready(self) -> None:
        assert self.stack.redis_url is not None
        celery = make_celery(Settings(redis_url=self.stack.redis_url))

        def answering() -> set[str]:
            return {node for reply in celery.control.ping(timeout=0.5) for node in reply}

        self.stack.wait_until(
            lambda: set(self.hosts) <= answering(), 90, f"workers {sorted(self.hosts)}",
            [*self.local, *self.remote],
        )  # fmt: skip

    def stop(self) -> None:
        for worker in self.local:
            self.stack.stop_worker(worker)
        # unshare holds SIGTERM back from the worker it forked: the worker (its only
        # child, started by this test) gets it directly, then unshare exits with it.
        for managed in self.remote:
            for child in psutil.Process(managed.pid).children():
                child.send_signal(signal.SIGTERM)
        for managed in self.remote:
            self.stack.stop_process(managed)
        self.local, self.remote, self.hosts = [], [], {}


@contextmanager
def fleet(stack: Stack) -> Iterator[Fleet]:
    started = Fleet(stack)
    try:
        yield started
    finally:
        started.stop()


def test_a_worker_reports_its_host_pid_cores_and_memory(stack: Stack) -> None:
    """The test stack's workers, on this host, each as this host sees it."""
    assert stack.redis_url is not None
    celery = make_celery(Settings(redis_url=stack.redis_url))
    workers = {w.node: w for w in stack.workers if w.pool in POOLS}
    reports = self_reports(celery, list(workers), timeout=10)
    assert set(reports) == set(workers)
    for node, report in reports.items():
        worker = workers[node]
        assert (report.node, report.host) == (node, socket.gethostname())
        # `python -m worker` execs Celery: the pid the launcher started is the worker.
        assert report.pid == worker.pid
        assert (report.cores, report.concurrency) == (CORES, worker.concurrency)
        assert report.cpu_seconds > 0 and report.rtt_ms_to_redis and report.rtt_ms_to_redis > 0
        # Its memory is its process tree's, as this host reads it (not the lab's or the
        # test's process), within what moves between the two reads.
        tree = [psutil.Process(worker.pid), *psutil.Process(worker.pid).children(recursive=True)]
        assert report.processes == len(tree), node
        seen_here = sum(process.memory_info().rss for process in tree)
        assert 0.8 < report.rss_bytes / seen_here < 1.25, (report, seen_here)
    prefork = next(r for r in reports.values() if r.node.startswith("prefork-"))
    # The main process and its pool's two children.
    assert prefork.processes == 3


def test_pools_shows_where_each_worker_runs(stack: Stack) -> None:
    pools = stack.http.get(f"{stack.url}/pools", timeout=10).json()["pools"]
    started = {w.node: w.pid for w in stack.workers}
    listed = [w for pool in pools for w in pool["workers"]]
    assert {w["node"] for w in listed} <= set(started) and listed
    for worker in listed:
        assert worker["host"] == socket.gethostname()
        assert worker["pid"] == started[worker["node"]]
        assert worker["cores"] == CORES and worker["rtt_ms_to_redis"] > 0


def test_a_pool_on_other_hosts_is_measured_from_its_workers_own_reports(
    bare_stack: Stack,
) -> None:
    with fleet(bare_stack) as workers:
        workers.elsewhere("threads", 4, "lab-remote-1")
        workers.elsewhere("prefork", 2, "lab-remote-1")
        workers.elsewhere("prefork", 2, "lab-remote-2")
        workers.elsewhere("gevent", 20, "lab-remote-2")
        workers.wait_ready()

        pools = bare_stack.http.get(f"{bare_stack.url}/pools", timeout=10).json()["pools"]
        listed = {w["node"]: w for pool in pools for w in pool["workers"]}
        assert set(listed) == set(workers.hosts)
        for node, worker in listed.items():
            assert worker["host"] == workers.hosts[node]
            # Each is pid 1 (or so) of its own namespace: the lab cannot see it by that pid.
            assert not seen_here(node, worker["pid"]), worker

        body = {
            "workload": "cpu_hash", "params": {"rounds": 150_000}, "count": 8,
            "pools": ["threads", "prefork", "gevent"], "local": [], "concurrency": 2,
        }  # fmt: skip
        experiment, _ = run_experiment(bare_stack, body, timeout=180)
        after = self_reports(
            make_celery(Settings(redis_url=bare_stack.redis_url or "")), list(listed), 10
        )

    report = experiment["report"]
    topology = report["topology"]
    hosts = {h["host"]: h for h in topology["hosts"]}
    assert set(hosts) == {socket.gethostname(), "lab-remote-1", "lab-remote-2"}
    assert hosts["lab-remote-1"]["nodes"] == ["prefork-1@lab-remote-1", "threads-1@lab-remote-1"]
    assert hosts["lab-remote-2"]["nodes"] == ["gevent-1@lab-remote-2", "prefork-2@lab-remote-2"]
    for host in hosts.values():
        assert host["cores"] == CORES and host["rtt_ms_to_redis"] > 0
    assert "3 hosts" in topology["where"]
    for pool, pool_workers in topology["workers"].items():
        for worker in pool_workers:
            assert worker["host"] == workers_host(worker["node"]), (pool, worker)

    targets = {t["target"]: t for t in report["targets"]}
    for name, target in targets.items():
        assert target["errors"] == 0, target
        # Memory and CPU from the workers' own measurement: the lab saw none of them.
        assert target["peak_rss_bytes"] > 0 and target["pool_cpu_seconds"] > 0, target
        # The peak is of the workers' processes: about what they say they hold now.
        holding = sum(after[w["node"]].rss_bytes for w in topology["workers"][name])
        assert 0.7 < target["peak_rss_bytes"] / holding < 1.5, (name, target, holding)
    threads, prefork, gevent = targets["threads"], targets["prefork"], targets["gevent"]
    # Two prefork workers of a main process and two children each: six processes, where
    # the threads pool has one.
    assert prefork["peak_rss_bytes"] > 3 * threads["peak_rss_bytes"], targets
    # The jobs ran in prefork's children: their CPU is in the workers' count.
    jobs_cpu = prefork["cpu_seconds_per_job"] * prefork["count"]
    assert prefork["pool_cpu_seconds"] >= 0.8 * jobs_cpu, prefork
    # Greenlets have no CPU of their own: gevent's per job is its workers' count shared out.
    assert gevent["cpu_seconds_per_job"] * gevent["count"] == pytest.approx(
        gevent["pool_cpu_seconds"], rel=1e-3
    )

    # The CPU ideal bound counts the cores of the pool's own hosts, each up to the
    # pool's slots there: prefork has 2 on each of two hosts.
    assert (prefork["cores"], prefork["usable_cores"]) == (2 * CORES, 2 * min(2, CORES))
    assert (threads["cores"], threads["usable_cores"]) == (CORES, min(4, CORES))
    assert prefork["ideal_makespan_s"] == pytest.approx(
        8 * report["job_seconds"] / prefork["usable_cores"], rel=1e-3
    )
    print(f"\non {topology['where']}:")
    for name, target in targets.items():
        print(
            f"  {name}: peak RSS {target['peak_rss_bytes'] / 2**20:.0f} MiB, pool CPU "
            f"{target['pool_cpu_seconds']:.3f} s, {target['usable_cores']} of "
            f"{target['cores']} cores, efficiency {target['efficiency']:.0%}"
        )


def seen_here(node: str, pid: int | None) -> bool:
    """Whether `pid`, on this side, is a process whose command line names `node`."""
    try:
        return pid is not None and node in " ".join(psutil.Process(pid).cmdline())
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return False


def workers_host(node: str) -> str:
    return node.partition("@")[2]


def test_compare_puts_a_local_run_and_a_cluster_run_side_by_side(
    bare_stack: Stack, tmp_path: Path
) -> None:
    """The same workload on the gevent pool: first one worker on this host, then two on
    other hosts, with the same Redis and API; compared, each says where it ran."""
    body = {
        "workload": "sleep", "params": {"seconds": 0.05}, "count": 40, "pools": ["gevent"],
        "local": [], "concurrency": 2,
    }  # fmt: skip
    with fleet(bare_stack) as workers:
        workers.on_this_host("gevent", 20)
        workers.wait_ready()
        local, _ = run_experiment(bare_stack, body)
    with fleet(bare_stack) as workers:
        workers.elsewhere("gevent", 20, "lab-remote-1")
        workers.elsewhere("gevent", 20, "lab-remote-2")
        workers.wait_ready()
        cluster, _ = run_experiment(bare_stack, body)

    ids = f"{local['id']},{cluster['id']}"
    comparison = bare_stack.http.get(
        f"{bare_stack.url}/experiments/compare", params={"ids": ids}, timeout=10
    ).json()
    runs = comparison["runs"]
    assert [r["id"] for r in runs] == [local["id"], cluster["id"]]
    assert [len(r["hosts"]) for r in runs] == [1, 3]
    here = socket.gethostname()
    assert runs[0]["where"].startswith(f"{here} ({CORES} cores, ")
    assert runs[1]["where"].startswith("3 hosts: ") and "lab-remote-2" in runs[1]["where"]
    (gevent,) = comparison["rows"]
    assert set(gevent["throughput_per_s"]) == set(gevent["peak_rss_bytes"]) == set(ids.split(","))
    assert all(v > 0 for v in gevent["throughput_per_s"].values())
    # Two workers' memory against one's.
    assert gevent["peak_rss_bytes"][cluster["id"]] > 1.5 * gevent["peak_rss_bytes"][local["id"]]

    # The CLI's rendering says the same.
    env = {**os.environ, "JOBRUNNER_API_KEY": TEST_KEYS["admin"][1], "COLUMNS": "250"}
    shown = subprocess.run(
        [sys.executable, "-m", "services.cli", "compare-runs", local["id"], cluster["id"],
         "--api", bare_stack.url],
        capture_output=True, text=True, timeout=120, env=env, cwd=tmp_path,
    )  # fmt: skip
    assert shown.returncode == 0, shown.stderr
    assert runs[0]["where"] in shown.stdout and "3 hosts: " in shown.stdout, shown.stdout
