"""The faults a soak injects, one at a time, each aimed where it does harm: a worker
killed while it runs jobs, the prefork pool process running one, the API, Redis, a
worker host's link. Each is undone as its supervisor would undo it (the process started
again, the link healed), and says what it hit.
"""

from __future__ import annotations

import os
import random
import signal
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import psutil
import redis
import requests

from services.core import redis_keys
from services.devstack.chaos.leaks import Leak, descendants, wait_gone
from services.devstack.chaos.load import NO_ANSWER, Load
from services.devstack.chaos.stacks import VISIBILITY_TIMEOUT, Target
from services.devstack.processes import ManagedProcess

LOCAL_KINDS = ("worker:threads", "worker:prefork", "worker:gevent", "prefork-child", "api", "redis")
LINK = "link"
LABELS = {
    "worker:threads": "kill -9 a threads worker",
    "worker:prefork": "kill -9 a prefork worker",
    "worker:gevent": "kill -9 a gevent worker",
    "prefork-child": "kill -9 a prefork pool process",
    "api": "kill -9 the API (gunicorn master)",
    "redis": "kill -9 Redis, start it again",
    LINK: "cut a worker host's link",
}
# How long a fault waits for its target to be busy (a worker with jobs running) before
# it strikes anyway.
AIM_SECONDS = 8.0
# Long enough for the cut-off host's leases to lapse and another host to take over.
LINK_SECONDS = 2 * VISIBILITY_TIMEOUT + 2
# How long a killed process's children may take to follow it: prefork's pool processes
# and gunicorn's workers (api/gunicorn_conf.py) die with their parent at once.
ORPHAN_SECONDS = 10.0


@dataclass
class Fault:
    number: int
    kind: str
    at: float = 0.0  # seconds since the soak began
    struck: float = 0.0  # epoch seconds
    target: str = ""
    held: list[tuple[str, int]] = field(default_factory=list)  # (job, attempt) it cut
    queued: int = 0  # jobs waiting in Redis when it was killed
    down_for: float | None = None  # until restarted or healed
    back_after: float | None = None  # until the API answered ready again
    requests: Counter[str] = field(default_factory=Counter)  # tries meanwhile, by answer
    cut_in_flight: int = 0  # requests the API was answering when it died
    notes: list[str] = field(default_factory=list)
    held_final: int = 0  # of `held`, how many ended once drained ...
    held_rerun: int = 0  # ... how many of those on a later attempt
    held_cancelled: int = 0  # ... and how many by a cancel, on the same attempt
    held_refused: int = 0  # late writes of their cut-off runs, refused by the fence
    replayed: Counter[str] = field(default_factory=Counter)  # see engine.settle_faults

    @property
    def hit(self) -> bool:
        """Whether it did harm: jobs running where it struck, requests that found the
        API gone, Redis down under submissions with jobs in it."""
        if self.kind == "api":
            return self.requests[NO_ANSWER] > 0
        if self.kind == "redis":
            return sum(self.requests.values()) > 0 and self.queued + len(self.held) > 0
        return bool(self.held)

    def what_it_hit(self) -> str:
        parts = []
        if self.held:
            parts.append(
                f"{len(self.held)} running → {self.held_final} ended, "
                f"{self.held_rerun} on a later attempt"
                + (f", {self.held_cancelled} cancelled" if self.held_cancelled else "")
                + (f", {self.held_refused} late writes refused" if self.held_refused else "")
            )
        if self.kind == "redis":
            parts.append(f"{self.queued} queued")
        if self.requests:
            answers = ", ".join(f"{n}x {a}" for a, n in sorted(self.requests.items()))
            parts.append(f"requests meanwhile: {answers}")
        if self.cut_in_flight:
            parts.append(f"{self.cut_in_flight} cut mid-request")
        if self.replayed:
            made = ", ".join(f"{n} after {why}" for why, n in sorted(self.replayed.items()))
            parts.append(
                f"{sum(self.replayed.values())} jobs made by requests that got "
                f"no answer, replayed to a retry ({made})"
            )
        return "; ".join(parts + self.notes) or "nothing"


class Injector:
    """Strikes `target` while `load` runs; `began` is the soak's start (epoch)."""

    def __init__(
        self, target: Target, load: Load, rng: random.Random, began: float, leaks: list[Leak]
    ) -> None:
        self.target = target
        self.load = load
        self.rng = rng
        self.began = began
        self.leaks = leaks
        self.client = target.redis_client()

    # -- reading the store -------------------------------------------------------------

    def read(self, fn: Callable[[redis.Redis], Any], default: Any = None) -> Any:
        """`fn(client)` where the client is; `default` if Redis does not answer."""
        for _ in range(2):  # the first call after a Redis restart may find a dead socket
            try:
                return self.target.call(lambda: fn(self.client))
            except redis.RedisError:
                continue
        return default

    def running(self) -> list[dict[str, Any]]:
        """The jobs running now: id, node, host, pid, attempts."""

        def fetch(client: redis.Redis) -> list[dict[str, Any]]:
            ids = client.zrange(redis_keys.job_index("state", "running"), 0, -1)
            pipe = client.pipeline(transaction=False)
            for job_id in ids:
                pipe.hmget(
                    redis_keys.job(job_id), "state", "worker_node", "worker_host", "worker_pid",
                    "attempts",
                )  # fmt: skip
            found = []
            for job_id, (state, node, host, pid, attempts) in zip(ids, pipe.execute(), strict=True):
                if state == "running":
                    found.append({
                        "id": job_id, "node": node, "host": host,
                        "pid": int(pid or 0), "attempts": int(attempts or 0),
                    })  # fmt: skip
            return found

        return self.read(fetch, [])

    def api_ready(self) -> bool:
        url = f"{self.target.api_url}/readyz"
        try:
            return self.target.call(lambda: requests.get(url, timeout=2).status_code == 200)
        except requests.RequestException:
            return False

    def wait_api_ready(self, timeout: float = 60.0) -> float | None:
        """Seconds until the API answered ready, from the fault; None if it did not."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.api_ready():
                return time.time() - self._struck
            time.sleep(0.2)
        return None

    # -- striking ----------------------------------------------------------------------

    def inject(self, kind: str, number: int) -> Fault:
        fault = Fault(number, kind)
        if kind.startswith("worker:"):
            self.kill_worker(fault, kind.split(":")[1])
        elif kind == "prefork-child":
            self.kill_prefork_child(fault)
        elif kind == "api":
            self.kill_api(fault)
        elif kind == "redis":
            self.restart_redis(fault)
        elif kind == LINK:
            self.cut_link(fault)
        else:
            raise ValueError(f"unknown fault {kind!r}")
        return fault

    def _strike(self, fault: Fault) -> None:
        self._struck = fault.struck = time.time()
        fault.at = fault.struck - self.began

    def _aim(self, choose: Callable[[list[dict[str, Any]]], Any]) -> Any:
        """`choose(running jobs)` until it names a busy target, or AIM_SECONDS passed
        (then whatever it names, busy or not)."""
        deadline = time.monotonic() + AIM_SECONDS
        while True:
            choice = choose(self.running())
            if choice is not None and (choice[1] or time.monotonic() > deadline):
                return choice[0]
            if choice is None and time.monotonic() > deadline:
                return None
            time.sleep(0.2)

    def _kill_tree(self, managed: ManagedProcess, fault: Fault, what: str) -> None:
        """SIGKILL `managed` (only it: what it started must follow on its own)."""
        tree = descendants(managed.pid) - {managed.pid}
        self._strike(fault)
        os.kill(managed.pid, signal.SIGKILL)
        assert managed.process is not None
        managed.process.wait()
        self.leaks += wait_gone(tree, ORPHAN_SECONDS, f"the kill of {what}")

    def kill_worker(self, fault: Fault, pool: str) -> None:
        def busiest(running: list[dict[str, Any]]) -> tuple[ManagedProcess, int] | None:
            live = [w for w in self.target.workers if w.pool == pool and w.alive()]
            if not live:
                return None
            per_node = Counter(job["node"] for job in running)
            victim = max(live, key=lambda w: per_node[w.node])
            return victim, per_node[victim.node]

        victim = self._aim(busiest)
        if victim is None:
            fault.notes.append(f"no live {pool} worker")
            return
        fault.target = victim.node or victim.name
        self._kill_tree(victim, fault, fault.target)
        # What it held: jobs still running under it (a dead worker ends nothing more).
        fault.held = [(j["id"], j["attempts"]) for j in self.running() if j["node"] == victim.node]
        time.sleep(self.rng.uniform(1.0, 3.0))
        self.target.restart(victim)
        fault.down_for = time.time() - fault.struck

    def kill_prefork_child(self, fault: Fault) -> None:
        def running_child(running: list[dict[str, Any]]) -> tuple[tuple[int, str], int] | None:
            parents = {w.pid: w for w in self.target.workers if w.pool == "prefork" and w.alive()}
            for job in running:
                try:
                    parent = psutil.Process(job["pid"]).ppid()
                except psutil.Error:
                    continue
                if parent in parents:
                    return (job["pid"], parents[parent].node or "?"), 1
            for pid, worker in parents.items():
                children = descendants(pid) - {pid}
                if children:
                    return (min(children), worker.node or "?"), 0
            return None

        chosen = self._aim(running_child)
        if chosen is None:
            fault.notes.append("no prefork pool process")
            return
        pid, node = chosen
        fault.target = f"pid {pid} of {node}"
        self._strike(fault)
        os.kill(pid, signal.SIGKILL)
        fault.held = [(j["id"], j["attempts"]) for j in self.running() if j["pid"] == pid]
        fault.down_for = 0.0  # its worker starts another at once

    def kill_api(self, fault: Fault) -> None:
        api = self.target.api
        fault.target = f"gunicorn pid {api.pid}"
        self._kill_tree(api, fault, "the API")
        time.sleep(self.rng.uniform(0.5, 2.0))
        self.target.restart(api)
        fault.down_for = time.time() - fault.struck
        fault.back_after = self.wait_api_ready()
        end = fault.struck + (fault.back_after or fault.down_for)
        fault.requests = self.load.tries_between(fault.struck, end)
        fault.cut_in_flight = sum(
            1
            for s in self.load.snapshot()
            for t in list(s.tries)
            if t.answer == NO_ANSWER and t.at < fault.struck < t.at + t.took
        )

    def restart_redis(self, fault: Fault) -> None:
        server = self.target.redis_server
        fault.target = f"redis-server pid {server.process.pid if server.process else '?'}"
        fault.queued = self.read(lambda c: c.zcard(redis_keys.job_index("state", "queued")), 0)
        running = self.running()
        self._strike(fault)
        server.stop(kill=True)
        fault.held = [(j["id"], j["attempts"]) for j in running]
        time.sleep(self.rng.uniform(1.0, 3.0))
        server.start()
        keep_history(self.target)
        fault.down_for = time.time() - fault.struck
        fault.back_after = self.wait_api_ready()
        end = fault.struck + (fault.back_after or fault.down_for)
        fault.requests = self.load.tries_between(fault.struck, end)

    def cut_link(self, fault: Fault) -> None:
        def busiest(running: list[dict[str, Any]]) -> tuple[str, int]:
            per_host = Counter(job["host"] for job in running)
            host = max(self.target.link_hosts, key=lambda h: per_host[h])
            return host, per_host[host]

        host = self._aim(busiest)
        fault.target = f"host {host}"
        self._strike(fault)
        self.target.cut(host)
        try:
            fault.held = [(j["id"], j["attempts"]) for j in self.running() if j["host"] == host]
            time.sleep(LINK_SECONDS)
        finally:
            self.target.heal(host)
        fault.down_for = time.time() - fault.struck


def keep_history(target: Target) -> None:
    """No automatic rewrite of the append-only file: it would replace the history the
    soak reads back by a snapshot (aof.py). Set again after every start of Redis."""
    client = target.redis_client()
    try:
        target.call(lambda: client.config_set("auto-aof-rewrite-percentage", 0))
    finally:
        client.close()
