"""The soak: a stack, a steady load of every pool's jobs, faults at random, then the
drain and the checks.

The main thread starts and restarts every process (a child started from another
thread would not die with this one: services/devstack/processes.py), injects the faults
one at a time and, between them, restarts whatever else exited, as a supervisor would.
The clients run on threads of their own.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import tempfile
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import redis

from services.core import redis_keys
from services.core.api_keys import new_key
from services.devstack.chaos.aof import FINAL_STATES, read_history
from services.devstack.chaos.faults import LINK, LOCAL_KINDS, Fault, Injector, keep_history
from services.devstack.chaos.invariants import STATES, Observation, Verdict, check
from services.devstack.chaos.leaks import Leak, alive, descendants, kill, strays
from services.devstack.chaos.load import Load
from services.devstack.chaos.stacks import CLIENT_NAME, Target, make_target, soak_settings

# Records read per round trip.
CHUNK = 500


@dataclass
class SoakConfig:
    duration: float = 300.0  # seconds of load and faults (longer if a kind is still due)
    seed: int = 1
    rate: float = 10.0  # submissions per second, all pools
    cluster: bool = False  # on the multi-host test bed, with link cuts
    workers_per_pool: int | None = None  # per host on the bed; default 2 here, 1 there
    gap: tuple[float, float] = (2.0, 8.0)  # seconds between faults, drawn uniformly
    drain_timeout: float = 180.0
    folder: Path | None = None  # logs and Redis's data; default a new temporary folder
    kinds: tuple[str, ...] | None = None  # default every kind the stack allows

    def all_kinds(self) -> tuple[str, ...]:
        return self.kinds or (LOCAL_KINDS + ((LINK,) if self.cluster else ()))


@dataclass
class Unplanned:
    """A process that exited on its own (not a fault's victim) and was started again."""

    at: float
    name: str
    status: int | None
    after_fault: int | None


@dataclass
class SoakRun:
    config: SoakConfig
    folder: Path
    faults: list[Fault] = field(default_factory=list)
    unplanned: list[Unplanned] = field(default_factory=list)
    leaks: list[Leak] = field(default_factory=list)
    load_samples: list[float] = field(default_factory=list)
    began: float = 0.0
    submissions_ended: float = 0.0
    drained_at: float | None = None
    observation: Observation | None = None
    verdicts: list[Verdict] = field(default_factory=list)
    load: Load | None = None

    @property
    def ok(self) -> bool:
        return bool(self.verdicts) and all(v.ok for v in self.verdicts)

    def kinds_hit(self) -> dict[str, bool]:
        """Each kind injected: whether at least one of its faults hit."""
        found: dict[str, bool] = {}
        for fault in self.faults:
            found[fault.kind] = found.get(fault.kind, False) or fault.hit
        return found


def run_soak(config: SoakConfig, progress: Callable[[str], None] = lambda _: None) -> SoakRun:
    """Run a soak as configured; its faults, figures and verdicts (run.ok)."""
    folder = config.folder or Path(tempfile.mkdtemp(prefix="jobrunner-chaos-"))
    run = SoakRun(config, folder)
    rng = random.Random(config.seed)
    marker = f"{config.seed}-{uuid.uuid4().hex[:12]}"
    api_key = new_key()
    overrides = soak_settings(api_key, marker, config.cluster)
    target = make_target(config.cluster, folder, overrides)
    redis_pids: set[int] = set()
    load: Load | None = None
    try:
        progress(f"starting the stack in {folder}")
        target.start(config.workers_per_pool or (1 if config.cluster else 2))
        target.wait_ready(api_key, timeout=180)
        keep_history(target)
        load = Load(target.api_url, api_key, config.rate, config.seed, target.enter_client_host)
        run.load = load
        run.began = time.time()
        load.start()
        progress(f"soak: {config.duration:.0f} s at {config.rate:g} jobs/s, seed {config.seed}")
        injector = Injector(target, load, rng, run.began, run.leaks)
        soak(run, target, injector, rng, redis_pids)
        load.stop()
        run.submissions_ended = time.time()
        progress(f"drain: waiting for {len(load.accepted_ids())} accepted jobs to end")
        drain(run, target, injector)
        observation = observe(target, load.snapshot())
        run.leaks += strays(marker, lambda: expected_processes(target), "the soak, while running")
    finally:
        if load is not None:
            load.stop()
        progress("stopping the stack")
        server = target.started_redis()
        if server is not None and server.process is not None:
            redis_pids.add(server.process.pid)
        target.stop()
        run.leaks += strays(marker, set, "the stack was stopped", settle=2.0)
        left = {pid for pid in redis_pids if alive(pid)}
        run.leaks += [Leak(pid, "redis-server", "the stack was stopped") for pid in sorted(left)]
        kill(left)
        if hasattr(target, "bed_pids"):
            left = target.bed_pids()
            run.leaks += [Leak(p, "on the bed", "the stack was stopped") for p in sorted(left)]
        target.close()
    observation.history = read_history(target.aof_dir)
    observation.leaks = run.leaks
    run.observation = observation
    run.verdicts = check(observation)
    settle_faults(run)
    return run


def soak(
    run: SoakRun, target: Target, injector: Injector, rng: random.Random, redis_pids: set[int]
) -> None:
    """Faults one at a time, a random gap apart, until the duration is over and every
    kind was injected once (at most twice the duration)."""
    kinds = run.config.all_kinds()
    start = time.monotonic()
    end, hard_end = start + run.config.duration, start + 2 * run.config.duration
    deck: list[str] = []
    while True:
        supervise(run, target, rng.uniform(*run.config.gap))
        now = time.monotonic()
        missing = set(kinds) - {f.kind for f in run.faults}
        if now >= hard_end or (now >= end and not missing):
            break
        if not deck:
            deck = rng.sample(kinds, len(kinds))
        if target.redis_server.process is not None:
            redis_pids.add(target.redis_server.process.pid)
        run.faults.append(injector.inject(deck.pop(), len(run.faults) + 1))
    supervise(run, target, 0)


def supervise(run: SoakRun, target: Target, seconds: float) -> None:
    """Restart whatever exited, for `seconds` (at least once), sampling the machine's
    load."""
    deadline = time.monotonic() + seconds
    while True:
        for name, status in target.supervise():
            last = run.faults[-1].number if run.faults else None
            run.unplanned.append(Unplanned(time.time() - run.began, name, status, last))
        if not run.load_samples or len(run.load_samples) < (time.time() - run.began) / 5:
            run.load_samples.append(os.getloadavg()[0])
        if time.monotonic() >= deadline:
            return
        time.sleep(min(0.5, max(0.0, deadline - time.monotonic())))


def drain(run: SoakRun, target: Target, injector: Injector) -> None:
    """Until every job in the store (and every accepted one) is final, or the timeout."""
    assert run.load is not None
    accepted = set(run.load.accepted_ids())
    deadline = time.monotonic() + run.config.drain_timeout
    ended: set[str] = set()
    while time.monotonic() < deadline:
        stored = injector.read(lambda c: c.zrange(redis_keys.job_index(), 0, -1))
        if stored is not None:
            pending = sorted((accepted | set(stored)) - ended)
            states = injector.read(lambda c, ids=pending: read_field(c, ids, "state"))
            if states is not None:
                ended |= {job_id for job_id, state in states.items() if state in FINAL_STATES}
                if ended >= set(pending):
                    run.drained_at = time.time()
                    return
        supervise(run, target, 1.0)


def read_field(client: redis.Redis, ids: list[str], name: str) -> dict[str, str | None]:
    found: dict[str, str | None] = {}
    for i in range(0, len(ids), CHUNK):
        pipe = client.pipeline(transaction=False)
        for job_id in ids[i : i + CHUNK]:
            pipe.hget(redis_keys.job(job_id), name)
        found.update(zip(ids[i : i + CHUNK], pipe.execute(), strict=True))
    return found


def observe(target: Target, submissions: list) -> Observation:
    """The records, indexes, counters and idempotency claims, as Redis holds them now."""
    client = target.redis_client()

    def read(c: redis.Redis) -> Observation:
        ids = sorted(
            set(c.zrange(redis_keys.job_index(), 0, -1))
            | {s.job_id for s in submissions if s.job_id is not None}
        )
        records: dict[str, dict[str, str]] = {}
        indexes: dict[str, list[str]] = {}
        for i in range(0, len(ids), CHUNK):
            chunk = ids[i : i + CHUNK]
            pipe = c.pipeline(transaction=False)
            for job_id in chunk:
                pipe.hgetall(redis_keys.job(job_id))
                for state in STATES:
                    pipe.zscore(redis_keys.job_index("state", state), job_id)
            answers = pipe.execute()
            step = 1 + len(STATES)
            for n, job_id in enumerate(chunk):
                raw, *scores = answers[n * step : (n + 1) * step]
                if raw:
                    records[job_id] = raw
                indexes[job_id] = [s for s, score in zip(STATES, scores, strict=True) if score]
        claims: dict[str, str | None] = {}
        keys = [s.key for s in submissions]
        for i in range(0, len(keys), CHUNK):
            pipe = c.pipeline(transaction=False)
            for key in keys[i : i + CHUNK]:
                digest = hashlib.sha256(key.encode()).hexdigest()
                pipe.get(redis_keys.idempotency(CLIENT_NAME, digest))
            for key, raw in zip(keys[i : i + CHUNK], pipe.execute(), strict=True):
                claims[key] = json.loads(raw)["job_id"] if raw else None
        counter = int(c.hget(redis_keys.counters(), "refused_writes") or 0)
        return Observation(submissions, records, indexes, counter, claims, history=None)

    try:
        return target.call(lambda: read(client))
    finally:
        client.close()


def expected_processes(target: Target) -> set[int]:
    """The soak's live processes and everything under them."""
    return {pid for p in target.processes() if p.alive() for pid in descendants(p.pid)}


def settle_faults(run: SoakRun) -> None:
    """What became of the jobs each fault cut: ended, on a later attempt, or cancelled
    (a cancel stops a prefork job where it runs)? And which fault made a request that
    created its job fail to say so (the job was replayed to a retry)?"""
    assert run.observation is not None
    for submission in run.observation.submissions:
        if submission.replayed and len(submission.tries) > 1:
            # The last request before the replay that got no proper answer: the one
            # most likely to have made the job (one refused never reached the API).
            maker = submission.tries[-2]
            failed_at = maker.at + maker.took
            struck = [f for f in run.faults if f.struck <= failed_at]
            if struck:
                struck[-1].replayed[maker.error or maker.answer] += 1
    records = run.observation.records
    for fault in run.faults:
        for job_id, attempt in fault.held:
            raw = records.get(job_id, {})
            fault.held_refused += int(raw.get("refused_writes") or 0)
            if raw.get("state") in FINAL_STATES:
                fault.held_final += 1
                if int(raw.get("attempts") or 0) > attempt:
                    fault.held_rerun += 1
                elif raw.get("state") == "cancelled":
                    fault.held_cancelled += 1
