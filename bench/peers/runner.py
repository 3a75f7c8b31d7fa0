"""The bench's side of the peers' comparison: each library's Redis, worker and producer as
processes of this machine, and one measured run of a system (jobs/s, the worker's CPU per
job, Redis commands per job, and the check of every result).

A library is one Redis and one long-lived producer (bench/peers/driver.py); a system is
a worker of that library at one concurrency (jobrunner: a pool). Workers are started per
figure and stopped after it; Redis servers and producers live for the whole step.
"""

from __future__ import annotations

import json
import os
import queue
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil

from bench.peers.driver import MARK
from bench.peers.venvs import ensure_venv
from services.devstack.compose import PROJECT_ROOT
from services.devstack.processes import ManagedProcess, die_with_launcher
from services.devstack.redis_server import RedisServer

# Every library, in the order the tables list them: jobrunner first, then stock Celery
# (the reference of issue 4), then the peers of issue 13.
PEERS = ("huey", "dramatiq", "taskiq", "arq", "rq")
LIBRARIES = ("jobrunner", "celery", *PEERS)
TITLES = {
    "jobrunner": "jobrunner", "celery": "stock Celery", "huey": "Huey", "dramatiq": "Dramatiq",
    "taskiq": "Taskiq", "arq": "arq", "rq": "RQ",
}  # fmt: skip


def parse_event(line: str) -> dict[str, Any] | None:
    """A producer's line for the bench, or None for anything else it printed."""
    if not line.startswith(MARK):
        return None
    try:
        event = json.loads(line[len(MARK) :])
    except json.JSONDecodeError:
        return None
    return event if isinstance(event, dict) and "event" in event else None


def tree_cpu_times(pid: int) -> tuple[float, float]:
    """(user, system) CPU seconds of a process and every descendant, including children
    they have already reaped (RQ forks a process per job; a prefork child may be
    replaced): what the worker has cost so far, whatever its shape."""
    try:
        root = psutil.Process(pid)
        procs = [root, *root.children(recursive=True)]
    except psutil.Error:
        return 0.0, 0.0
    user = system = 0.0
    for proc in procs:
        try:
            t = proc.cpu_times()
        except psutil.Error:
            continue
        user += t.user + t.children_user
        system += t.system + t.children_system
    return user, system


def tree_cpu_seconds(pid: int) -> float:
    return sum(tree_cpu_times(pid))


@dataclass
class Producer:
    """A library's producer process (bench/peers/driver.py), spoken to over its pipes."""

    name: str
    argv: list[str]
    env: dict[str, str]
    log_path: Path
    process: subprocess.Popen[str] | None = None
    events: queue.Queue[dict[str, Any] | None] = field(default_factory=queue.Queue)
    ready: dict[str, Any] = field(default_factory=dict)

    def start(self, timeout: float = 120) -> Producer:
        log = self.log_path.open("a")
        self.process = subprocess.Popen(
            self.argv, env=self.env, cwd=PROJECT_ROOT, stdin=subprocess.PIPE,
            stdout=subprocess.PIPE, stderr=log, text=True, bufsize=1,
            start_new_session=True, preexec_fn=die_with_launcher(signal.SIGKILL),
        )  # fmt: skip
        log.close()
        threading.Thread(target=self._read, daemon=True).start()
        self.ready = self.next_event("ready", timeout)
        return self

    def _read(self) -> None:
        assert self.process is not None and self.process.stdout is not None
        with self.log_path.open("a") as log:
            for line in self.process.stdout:
                event = parse_event(line)
                if event is None:
                    log.write(line)
                else:
                    self.events.put(event)
        self.events.put(None)  # it exited

    def next_event(self, name: str, timeout: float) -> dict[str, Any]:
        try:
            event = self.events.get(timeout=timeout)
        except queue.Empty:
            raise TimeoutError(f"{self.name}: no {name!r} in {timeout:.0f}s") from None
        if event is None:
            tail = self.log_path.read_text(errors="replace")[-2000:]
            raise RuntimeError(f"{self.name} producer exited; {self.log_path}:\n{tail}")
        if event["event"] != name:
            raise RuntimeError(f"{self.name}: expected {name!r}, got {event}")
        return event

    def send(self, command: dict[str, Any]) -> None:
        assert self.process is not None and self.process.stdin is not None
        self.process.stdin.write(json.dumps(command) + "\n")
        self.process.stdin.flush()

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        assert self.process.stdin is not None
        self.process.stdin.close()  # its loop ends on end of input
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


@dataclass
class Library:
    """One library's interpreter, Redis and producer."""

    name: str
    python: Path
    redis_url: str
    env: dict[str, str]
    producer: Producer
    redis_server: RedisServer | None = None  # None: the jobrunner stack's own

    @property
    def title(self) -> str:
        return TITLES[self.name]


@dataclass(frozen=True)
class System:
    """A worker of one library at one concurrency: what a figure's rows are."""

    library: str
    kind: str  # threads, prefork, gevent, asyncio, processes
    concurrency: int
    modes: tuple[str, ...]  # "one", "client" (jobrunner.Client), "bulk"
    options: tuple[tuple[str, Any], ...] = ()  # jobrunner: the pool
    processes: int = 1  # worker processes (the scale curve starts several)

    @property
    def key(self) -> str:
        more = f" x{self.processes}" if self.processes > 1 else ""
        return f"{self.library} {self.kind} -c{self.concurrency}{more}"

    @property
    def label(self) -> str:
        more = f" x{self.processes} processes" if self.processes > 1 else ""
        return f"{TITLES[self.library]} {self.kind} -c{self.concurrency}{more}"


@dataclass
class Sample:
    """One measured run of one system, as every repetition is listed."""

    rep: int
    system: str
    mode: str
    workload: str
    n: int
    jobs_per_s: float | None = None
    elapsed: float | None = None
    # From the first enqueue to the last returning: the producer's sending alone.
    send_seconds: float | None = None
    commands_per_job: float | None = None
    worker_cpu_ms: float | None = None  # per job
    client_cpu_ms: float | None = None  # per job: the producer (and jobrunner's API)
    verified: int = 0
    mismatches: list[Any] = field(default_factory=list)
    error: str | None = None
    by_command: dict[str, int] = field(default_factory=dict)  # the run's, not per job

    @property
    def ok(self) -> bool:
        return self.error is None and self.verified == self.n and self.jobs_per_s is not None

    def line(self) -> str:
        if self.jobs_per_s is None:
            return f"  rep {self.rep + 1} {self.system} [{self.mode}]: failed: {self.error}"
        check = f"verified {self.verified}/{self.n}"
        if self.mismatches:
            check += f" (first wrong: {self.mismatches})"
        if self.error:
            check += f"; {self.error}"
        sent = f"sent in {self.send_seconds:.2f} s, " if self.send_seconds else ""
        return (
            f"  rep {self.rep + 1} {self.system} [{self.mode}]: {self.jobs_per_s:,.0f} jobs/s, "
            f"{sent}worker CPU {self.worker_cpu_ms:.2f} ms/job, client CPU "
            f"{self.client_cpu_ms:.2f} ms/job, {self.commands_per_job:.2f} Redis cmds/job, {check}"
        )


def sample_from(
    rep: int, system: System, mode: str, workload: str, n: int,
    done: dict[str, Any], verified: dict[str, Any], worker_cpu: float, client_cpu: float,
) -> Sample:  # fmt: skip
    """A Sample from a producer's two events and the CPU seconds measured around them."""
    sample = Sample(rep, system.key, mode, workload, n)
    sample.error = done.get("error") or verified.get("error")
    if done.get("elapsed"):
        sample.elapsed = float(done["elapsed"])
        sample.jobs_per_s = n / sample.elapsed
        sample.send_seconds = float(done["send_seconds"])
        sample.commands_per_job = float(done["commands"]) / n
        sample.worker_cpu_ms = worker_cpu * 1000 / n
        sample.client_cpu_ms = (client_cpu + float(done["producer_cpu"])) * 1000 / n
        sample.by_command = dict(done.get("by_command") or {})
    sample.verified = int(verified.get("count", 0))
    sample.mismatches = list(verified.get("mismatches", []))
    return sample


class Peers:
    """Every library's Redis and producer for one step of the bench, and their workers."""

    def __init__(self, bench: Any, libraries: list[str], log: Callable[[str], None] = print):
        self.bench = bench  # bench.harness.Bench: jobrunner's stack, its Redis and API
        self.names = libraries
        self.log = log
        self.libraries: dict[str, Library] = {}
        self.workers: dict[System, list[ManagedProcess]] = {}

    # -- starting and stopping ------------------------------------------------------------

    def start(self) -> None:
        for name in self.names:
            self.libraries[name] = self._library(name)

    def _library(self, name: str) -> Library:
        workdir = self.bench.workdir
        env = {**os.environ, "PYTHONPATH": str(PROJECT_ROOT), "PYTHONUNBUFFERED": "1"}
        server = None
        if name == "jobrunner":
            python, url = Path(sys.executable), self.bench.url
            key = str(self.bench.stack.http.headers["Authorization"]).removeprefix("Bearer ")
            env |= {"JOBRUNNER_URL": self.bench.stack.url, "JOBRUNNER_API_KEY": key}
        else:
            # Its own Redis, as compose runs jobrunner's: append-only, fsync every second.
            server = RedisServer(workdir / f"redis-{name}", fsync="everysec").start()
            url = server.url
            python = (
                Path(sys.executable)
                if name == "celery"
                else ensure_venv(name, log=workdir / f"venv-{name}.log")
            )
            env |= {"PEER_REDIS_URL": url, "BENCH_REDIS_URL": url}
        producer = Producer(
            name,
            [str(python), "-m", f"bench.peers.{name}.producer", "--redis-url", url],
            env,
            workdir / f"producer-{name}.log",
        )
        library = Library(name, python, url, env, producer, server)
        try:
            producer.start()
        except Exception:
            if server is not None:
                server.stop()
            raise
        return library

    def stop(self) -> None:
        for system in list(self.workers):
            self.stop_workers(system)
        for library in self.libraries.values():
            library.producer.stop()
            if library.redis_server is not None:
                library.redis_server.stop()
                # Its append-only file holds every job of the step: hundreds of MiB.
                shutil.rmtree(library.redis_server.data_dir, ignore_errors=True)
        self.libraries.clear()

    def worker_argv(self, system: System, index: int = 0) -> tuple[list[str], dict[str, str]]:
        """The command that starts one worker process of `system`, and its environment."""
        library = self.libraries[system.library]
        python, c, env = library.python, str(system.concurrency), dict(library.env)
        match system.library:
            case "jobrunner":
                from worker.profiles import worker_command

                pool = dict(system.options)["pool"]
                node = f"jr-{pool}-{index}@bench"
                argv = worker_command(pool, system.concurrency, node, "WARNING")
                env = self.bench.stack.env
            case "celery":
                # Celery's defaults (prefetch 4, mingle, gossip, heartbeats), as bench/harness.py.
                argv = [
                    str(python), "-m", "celery", "-A", "bench.stock_celery", "worker",
                    "-P", system.kind, "-c", c, "--loglevel", "WARNING",
                    "-n", f"stock-{system.kind}-{index}@bench",
                ]  # fmt: skip
            case "huey":
                argv = [
                    str(python.parent / "huey_consumer"), "bench.peers.huey.tasks.huey",
                    "-k", "thread", "-w", c, "--quiet",
                ]  # fmt: skip
            case "dramatiq":
                argv = [str(python), "-m", "dramatiq", "bench.peers.dramatiq.tasks",
                        "--processes", "1", "--threads", c]  # fmt: skip
            case "taskiq":
                argv = [
                    str(python), "-m", "taskiq", "worker", "bench.peers.taskiq.tasks:broker",
                    "--workers", "1", "--max-async-tasks", c, "--log-level", "WARNING",
                ]  # fmt: skip
            case "arq":
                argv = [str(python), "-m", "bench.peers.arq.worker"]
                env["PEER_CONCURRENCY"] = c
            case "rq":
                argv = [
                    str(python.parent / "rq"), "worker-pool", "--num-workers", c, "--quiet",
                    "--url", library.redis_url, "default",
                ]  # fmt: skip
            case _:
                raise ValueError(system.library)
        return argv, env

    def start_workers(self, system: System) -> None:
        procs = []
        for index in range(system.processes):
            argv, env = self.worker_argv(system, index)
            name = f"worker-{system.key.replace(' ', '_')}-{index}"
            managed = ManagedProcess(name, argv, env, self.bench.workdir / f"{name}.log")
            procs.append(self.bench.stack.start(managed))
        self.workers[system] = procs

    def stop_workers(self, system: System) -> None:
        for proc in self.workers.pop(system, []):
            self.bench.stack.stop_process(proc, grace=15)

    def wait_ready(self, system: System, timeout: float = 180) -> None:
        """Until every process of the system is up: a first small run answered, and for
        RQ every worker of the pool registered (a pool of 100 starts one by one)."""
        self.measure(-1, system, "one", "noop", 5, timeout=timeout)
        if system.library == "rq":
            import redis

            client = redis.Redis.from_url(self.libraries["rq"].redis_url)
            deadline = time.monotonic() + timeout
            while client.scard("rq:workers") < system.concurrency:
                if time.monotonic() > deadline:
                    raise TimeoutError("RQ's worker pool did not register every worker")
                time.sleep(0.2)
        if system.library == "jobrunner" and system.processes > 1:
            app = self.bench.jr_celery()
            pool = dict(system.options)["pool"]
            expected = {f"jr-{pool}-{i}@bench" for i in range(system.processes)}
            deadline = time.monotonic() + timeout
            while not expected <= {n for reply in app.control.ping(timeout=1) for n in reply}:
                if time.monotonic() > deadline:
                    raise TimeoutError(f"workers {sorted(expected)} did not all answer")

    # -- one measured run -----------------------------------------------------------------

    def measure(
        self,
        rep: int,
        system: System,
        mode: str,
        workload: str,
        n: int,
        seconds: float = 0.1,
        timeout: float | None = None,
    ) -> Sample:
        library = self.libraries[system.library]
        producer = library.producer
        timeout = timeout or 60 + n * 0.06
        options = dict(system.options)
        if mode == "client":
            options["via"] = "client"
        command = {
            "workload": workload, "n": n, "seconds": seconds, "timeout": timeout,
            "mode": "bulk" if mode == "bulk" else "one", "options": options,
        }  # fmt: skip
        workers = [p.pid for p in self.workers.get(system, [])]
        # jobrunner's API does the sending work a peer's producer does in its own process:
        # its CPU is counted with the producer's (client CPU), never with the worker's.
        api = [self.bench.stack.api.pid] if system.library == "jobrunner" else []
        worker0, api0 = sum(map(tree_cpu_seconds, workers)), sum(map(tree_cpu_seconds, api))
        producer.send(command)
        done = producer.next_event("done", timeout + 60)
        worker_cpu = sum(map(tree_cpu_seconds, workers)) - worker0
        api_cpu = sum(map(tree_cpu_seconds, api)) - api0
        verified = producer.next_event("verified", timeout + 60)
        return sample_from(rep, system, mode, workload, n, done, verified, worker_cpu, api_cpu)
