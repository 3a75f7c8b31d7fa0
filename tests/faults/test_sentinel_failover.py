"""Redis with Sentinel: the primary killed under load, a replica elected in its place.

One primary, two replicas and three sentinels (services/devstack/sentinel.py), a stack
whose REDIS_URL names the sentinels, and JOB_ACCEPT_REPLICAS=1: the settings
docs/high-availability.md gives for "no accepted job is lost". While a client submits
jobs, the primary is killed with SIGKILL. The API answers 503 only while no primary is
elected, then 202 again by itself; the workers reconnect by themselves (none restarted);
every job accepted before, during and after is there on the new primary and ends.
"""

from __future__ import annotations

import itertools
import os
import re
import signal
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

import pytest
import redis
import requests

from services.broker.transport import SENTINEL_TRANSPORT_PATH
from services.core import redis_keys
from services.core.redis_clients import redis_client
from services.devstack.sentinel import SentinelGroup, role
from services.jobs.submission import NotReplicated, wait_for_replicas
from tests.stack import FINAL, Stack, bearer

# Sentinel's down-after-milliseconds and failover-timeout: together they bound how long
# there is no primary (the election happens between them). Short, as a test wants; a
# production group keeps its own (docs/high-availability.md). Not shorter: at 1 s, on a
# shared two-core machine running the rest of the suite beside this test, a run ended
# with the primary just elected demoted to a replica, which is what a second failover
# does to a new primary unheard for down-after (a SIGSTOP of 3 s shows it).
DOWN_AFTER_MS = 2_500
FAILOVER_TIMEOUT_MS = 3_000
# How long the API may answer 503 after the kill, as a multiple of those two.
WINDOW_FACTOR = 2
VISIBILITY_TIMEOUT = 5
POOLS = ("threads", "prefork", "gevent")


@dataclass
class Load:
    """A client submitting jobs without pause, from a thread: when each answer came
    (monotonic), its status (0: no answer at all) and the accepted job ids."""

    url: str
    answers: list[tuple[float, int]] = field(default_factory=list)
    accepted: list[str] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)

    def run(self) -> None:
        http = requests.Session()
        http.headers.update(bearer("submitter"))
        for pool in itertools.cycle(POOLS):
            if self.stop.is_set():
                return
            body = {"workload": "sleep", "params": {"seconds": 0.2}, "pool": pool}
            try:
                response = http.post(f"{self.url}/jobs", json=body, timeout=30)
                status = response.status_code
            except requests.RequestException:
                status = 0
            self.answers.append((time.monotonic(), status))
            if status == 202:
                self.accepted.append(response.json()["id"])
            time.sleep(0.01)

    def streak_of_202(self, since: float) -> int:
        """How many answers in a row, up to the last, were 202, counting those that came
        after `since` only."""
        statuses = [status for at, status in self.answers if at > since]
        return len(statuses) - max((i + 1 for i, s in enumerate(statuses) if s != 202), default=0)


@pytest.fixture(scope="module")
def group(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SentinelGroup]:
    group = SentinelGroup(
        tmp_path_factory.mktemp("sentinel"),
        down_after_ms=DOWN_AFTER_MS,
        failover_timeout_ms=FAILOVER_TIMEOUT_MS,
    )
    try:
        # Watched by the sentinels while the stack starts: the failover test waits for it.
        group.start(watched=False)
        yield group
    finally:
        group.stop()


@pytest.fixture(scope="module")
def ha_stack(group: SentinelGroup, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    stack = Stack(
        tmp_path_factory.mktemp("ha-stack"),
        env_overrides={
            "REDIS_SENTINEL_MASTER": group.master_name,
            "JOB_ACCEPT_REPLICAS": "1",
            "JOB_VISIBILITY_TIMEOUT": str(VISIBILITY_TIMEOUT),
            "JOB_MAX_TIME_LIMIT": str(VISIBILITY_TIMEOUT - 1),
            "JOB_SHUTDOWN_GRACE": "3",
            # Off, so a request during the failover reaches its view: the limiter counts
            # in Redis and would answer 503 first.
            "API_RATE_LIMIT": "0",
        },
    )
    try:
        stack.use_redis(group.url)
        stack.start_api()
        for pool, concurrency in (("threads", 4), ("prefork", 2), ("gevent", 20)):
            stack.start_worker(pool, concurrency)
        stack.start_worker("experiments")
        stack.wait_ready()
        yield stack
    finally:
        stack.stop()  # before the group (fixture order): workers hand jobs back through it


def test_the_stack_runs_on_the_sentinels_master(ha_stack: Stack, group: SentinelGroup) -> None:
    """Every pool, remote control (GET /pools) and the lab, through the sentinels."""
    stack = ha_stack
    jobs = [stack.submit("noop", {"value": pool}, pool=pool)["id"] for pool in POOLS]
    assert [r["state"] for r in stack.wait_for(jobs, timeout=60)] == ["succeeded"] * 3
    pools = {p["name"]: p for p in stack.http.get(f"{stack.url}/pools", timeout=30).json()["pools"]}
    assert all(pools[name]["workers"] for name in POOLS), pools
    body = {"workload": "sleep", "params": {"seconds": 0.01}, "count": 4, "pools": ["threads"]}
    answer = stack.http.post(f"{stack.url}/experiments", json=body, timeout=30)
    assert answer.status_code == 202, answer.text
    url = f"{stack.url}/experiments/{answer.json()['id']}"
    deadline = time.monotonic() + 60
    while (experiment := stack.http.get(url, timeout=30).json())["state"] not in FINAL:
        assert time.monotonic() < deadline, experiment
        time.sleep(0.2)
    assert experiment["state"] == "succeeded", experiment["error"]

    # Written on the primary the sentinels name, and on a replica already (WAIT 1).
    def holds_them(port: int) -> bool:
        client = server_client(port)
        return all(client.exists(redis_keys.job(job_id)) for job_id in jobs)

    assert holds_them(group.primary().port)
    assert any(holds_them(replica.port) for replica in group.replicas())


def server_client(port: int) -> redis.Redis:
    """A client of one node itself, not of whichever the sentinels name."""
    return redis.Redis("127.0.0.1", port, socket_timeout=2, decode_responses=True)


def test_failover_under_load_loses_no_accepted_job(ha_stack: Stack, group: SentinelGroup) -> None:
    stack = ha_stack
    api_pid = stack.api.pid if stack.api else None
    worker_pids = {w.node: w.pid for w in stack.workers}
    group.wait_watched()
    old = group.primary()
    store = stack.redis()

    load = Load(stack.url)
    client = threading.Thread(target=load.run, daemon=True)
    client.start()
    try:
        # Under load: jobs running when the primary goes.
        deadline = time.monotonic() + 30
        while len(load.accepted) < 30 or not (in_flight := running_jobs(store)):
            assert time.monotonic() < deadline, "no job was running under the load"
            time.sleep(0.05)

        killed_at = time.monotonic()
        old.stop(kill=True)
        # Far within down-after-milliseconds: no primary yet, and the API says so.
        not_ready = stack.http.get(f"{stack.url}/readyz", timeout=30)
        new = group.wait_for_new_primary(old, timeout=30)
        elected_at = time.monotonic()

        # Recovered by itself: 202s again, a good run of them, nobody restarted.
        deadline = time.monotonic() + 60
        while load.streak_of_202(since=elected_at) < 30:
            assert time.monotonic() < deadline, f"the API did not recover: {load.answers[-5:]}"
            time.sleep(0.1)
    finally:
        load.stop.set()
        client.join(timeout=60)

    # The fault hit: jobs were running, a different node is the primary now, and says so.
    assert in_flight, "no job was running when the primary was killed"
    assert not_ready.status_code == 503, not_ready.text
    assert stack.http.get(f"{stack.url}/readyz", timeout=30).status_code == 200
    # One failover, the one the test made: a second (a primary unheard for down-after
    # under load) would move the primary again and break the window promised below.
    assert group.failovers() == [(old.port, new.port)], group.failovers()
    assert new.port != old.port and role(new) == "master" and role(old) is None
    assert group.master_port() == new.port

    # The API answered only 202 and 503 (never an error, never nothing), and 503 only
    # within the failover window.
    statuses = {status for _, status in load.answers}
    assert statuses <= {202, 503}, statuses
    refused = [at for at, status in load.answers if status == 503]
    window = WINDOW_FACTOR * (DOWN_AFTER_MS + FAILOVER_TIMEOUT_MS) / 1000
    if refused:
        assert min(refused) >= killed_at
        assert max(refused) - killed_at <= window, (max(refused) - killed_at, window)

    # Nothing was restarted: the API and every worker are the processes of before.
    assert stack.api is not None and stack.api.alive() and stack.api.pid == api_pid
    assert {w.node: w.pid for w in stack.workers if w.alive()} == worker_pids

    # Every accepted job is on the new primary, and ends; and each pool takes new work.
    primary = server_client(new.port)
    missing = [j for j in load.accepted if not primary.exists(redis_keys.job(j))]
    assert not missing, f"{len(missing)} accepted jobs lost in the failover"
    after = [stack.submit("noop", {"value": pool}, pool=pool)["id"] for pool in POOLS]
    records = stack.wait_for([*load.accepted, *after], timeout=90)
    assert {r["state"] for r in records} == {"succeeded"}, {r["state"] for r in records}
    assert group.failovers() == [(old.port, new.port)], group.failovers()  # still one

    # Each worker lost its broker connection and made a new one, on our transport: on a
    # connection error kombu may move to an alternate URL with its own transport, and
    # Celery would then say "Connected to sentinel://…".
    for worker in stack.workers:
        log = worker.log_path.read_text(errors="replace")
        assert "Connection to broker lost" in log, worker.name
        consumer = re.findall(r"\] Connected to (\S+)", log)  # not pidbox's
        assert len(consumer) >= 2, (worker.name, consumer)
        connects = re.findall(r"Connected to (\S+)", log)
        assert all(uri.startswith(SENTINEL_TRANSPORT_PATH) for uri in connects), connects

    failover = elected_at - killed_at
    outage = (max(refused) - killed_at) if refused else 0.0
    print(
        f"\nprimary {old.port} killed with {len(in_flight)} jobs running: {new.port} elected "
        f"after {failover:.1f} s ({failover * 1000 / DOWN_AFTER_MS:.1f} x down-after); "
        f"API 503 for {outage:.1f} s ({len(refused)} of {len(load.answers)} answers); "
        f"accepted={len(load.accepted)} finished={len(records) - len(after)} lost=0"
    )


def running_jobs(store: redis.Redis) -> list[str]:
    """The jobs running now, from the job store's index of them."""
    return store.zrange(redis_keys.job_index("state", "running"), 0, -1)


def test_an_accept_waits_for_a_replica(ha_stack: Stack, group: SentinelGroup) -> None:
    """JOB_ACCEPT_REPLICAS=1 with every replica frozen: the primary stores the job but no
    replica confirms it, so the API does not say 202; the same Idempotency-Key, once a
    replica is back, gets the job that was stored, not a second one."""
    stack = ha_stack
    replicas = group.replicas()
    assert replicas
    body = {"workload": "noop", "params": {"value": "waited"}}
    key = {"Idempotency-Key": "sentinel-wait-1"}
    # A client whose connection wrote before the freeze, and saw a replica take it.
    earlier = redis_client(group.url, settings=stack.settings())
    earlier.set(f"{redis_keys.PREFIX}:test:earlier-write", "x", ex=60)
    assert earlier.wait(1, 5_000) >= 1
    for replica in replicas:
        assert replica.process is not None
        os.kill(replica.process.pid, signal.SIGSTOP)
    try:
        refused = stack.http.post(f"{stack.url}/jobs", json=body, headers=key, timeout=30)
        plain = stack.http.post(f"{stack.url}/jobs", json=body, timeout=30)
        # WAIT alone, on that connection, would count the frozen replicas: they hold
        # its last write. Not the fence written first.
        with pytest.raises(NotReplicated):
            wait_for_replicas(earlier, 1)
    finally:
        for replica in replicas:
            assert replica.process is not None
            os.kill(replica.process.pid, signal.SIGCONT)
    assert refused.status_code == 503, refused.text
    assert refused.headers["Retry-After"] == "1"
    assert "0 of the 1 replicas" in refused.json()["detail"]
    assert plain.status_code == 503, plain.text

    deadline = time.monotonic() + 30
    while True:
        again = stack.http.post(f"{stack.url}/jobs", json=body, headers=key, timeout=30)
        if again.status_code == 202:
            break
        assert again.status_code == 503 and time.monotonic() < deadline, again.text
        time.sleep(0.2)
    assert again.headers.get("Idempotent-Replayed") == "true"
    (done,) = stack.wait_for([again.json()["id"]], timeout=60)
    assert done["state"] == "succeeded"
