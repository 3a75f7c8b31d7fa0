"""The peers' bench (issue 13) counts, checks and compares what it says it does: the
producers' conversation, the check of every result, the Redis commands a run costs, the
worker CPU of a process tree, the best peer, the targets, the scale chart and the
profile's summary. No timing is asserted: the bench reports figures, tests check logic."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import psutil
import pytest
import redis

from bench.peers import chart, driver, profile, scale, venvs
from bench.peers.figures import (
    BULK,
    CLIENT,
    NOOP_TITLE,
    ONE,
    SLEEP100_TITLE,
    Figure,
    FigureRun,
    best_peer,
    budgeted_n,
    commands_table,
    jobrunner_system,
    libraries_from,
    rotated,
    summary_table,
    target_rows,
)
from bench.peers.runner import MARK, Sample, System, parse_event, sample_from, tree_cpu_seconds
from bench.report import table

# -- the producers' side (bench/peers/driver.py) ----------------------------------------------


class SelfServingProducer:
    """A "library" whose worker is its producer: each send is one SET of the job's result
    at its key, so a run costs exactly one Redis command a job. `wrong` jobs read back a
    value other than the one stored."""

    bulk_path = ""
    poll_command = "exists"

    def __init__(self, url: str, wrong: frozenset[int] = frozenset()) -> None:
        self.client = redis.Redis.from_url(url)
        self.client.ping()  # connected before any run: a connection's handshake is not a job's
        self.wrong = wrong
        self.run = 0

    def send(
        self, workload: str, args: list[Any], bulk: bool, options: dict[str, Any]
    ) -> list[Any]:
        self.run += 1
        handles = [f"result:{self.run}:{i}" for i in range(len(args))]
        for key, a in zip(handles, args, strict=True):
            self.client.set(key, json.dumps(a[0]))
        return handles

    def result_keys(self, handles: list[Any]) -> list[str] | None:
        return handles

    def count_done(self, client: redis.Redis, handles: list[Any]) -> int:
        raise NotImplementedError

    def results(self, handles: list[Any]) -> list[Any]:
        values = [json.loads(v) for v in self.client.mget(handles)]
        return [-1 if i in self.wrong else v for i, v in enumerate(values)]


def events(text: str) -> list[dict[str, Any]]:
    return [e for e in map(parse_event, text.splitlines()) if e is not None]


def test_a_run_counts_the_systems_commands_not_the_benchs_and_checks_every_value(
    redis_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    client = redis.Redis.from_url(redis_url)
    producer = SelfServingProducer(redis_url, wrong=frozenset({7, 150}))
    n = 200  # more than one chunk of result keys to wait for
    driver.run(producer, client, {"workload": "noop", "n": n, "mode": "one", "timeout": 30})
    done, verified = events(capsys.readouterr().out)
    assert done["event"] == "done" and done["error"] is None and done["completed"] == n
    # One SET a job; the INFOs around the run and the bench's EXISTS polls are left out.
    assert done["commands"] == n and done["by_command"] == {"set": n}
    assert done["polls"] >= n // driver.CHUNK
    assert verified == {
        "event": "verified", "count": n - 2, "expected": n,
        "mismatches": [[7, "-1"], [150, "-1"]], "error": None,
    }  # fmt: skip


def test_a_library_without_a_bulk_path_is_not_run_in_bulk(
    redis_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    client = redis.Redis.from_url(redis_url)
    keys = client.dbsize()
    driver.run(SelfServingProducer(redis_url), client, {"workload": "noop", "n": 5, "mode": "bulk"})
    done, verified = events(capsys.readouterr().out)
    assert done["error"] == verified["error"] == "no bulk path"
    assert client.dbsize() == keys  # nothing was sent


def test_jobs_carry_values_that_a_wrong_or_missing_result_cannot_match() -> None:
    assert driver.job_args("noop", 3, 0.1) == [[0], [1], [2]]
    assert driver.expected_values("sleep", 2, 0.1) == [0.1, 0.1]
    checked = driver.compare([0, 1, driver.MISSING], [0, 1, 2, 3])
    assert checked == {"count": 2, "expected": 4, "mismatches": [(2, "MISSING")]}
    with pytest.raises(ValueError):
        driver.job_args("cpu_hash", 1, 0.1)


def test_only_marked_lines_are_the_benchs() -> None:
    assert parse_event(MARK + '{"event": "ready", "bulk_path": ""}') == {
        "event": "ready", "bulk_path": "",
    }  # fmt: skip
    assert parse_event("Huey consumer started with 8 threads") is None
    assert parse_event(MARK + "{not json") is None
    assert parse_event(MARK + '{"no": "event"}') is None


# -- measuring a run --------------------------------------------------------------------------


def test_a_sample_is_per_job_and_ok_only_when_every_result_checked() -> None:
    system = System("huey", "threads", 8, (ONE, BULK))
    done = {
        "elapsed": 2.0,
        "send_seconds": 1.5,
        "commands": 5_000,
        "producer_cpu": 0.5,
        "error": None,
    }
    verified = {"count": 1_000, "mismatches": [], "error": None}
    sample = sample_from(0, system, ONE, "noop", 1_000, done, verified, 0.4, 0.1)
    assert sample.jobs_per_s == 500 and sample.commands_per_job == 5 and sample.send_seconds == 1.5
    assert sample.worker_cpu_ms == pytest.approx(0.4) and sample.client_cpu_ms == pytest.approx(0.6)
    assert sample.ok
    short = sample_from(0, system, ONE, "noop", 1_000, done, {**verified, "count": 999}, 0.4, 0)
    assert not short.ok and "verified 999/1000" in short.line()
    failed = sample_from(0, system, ONE, "noop", 10, {"error": "boom"}, {"count": 0}, 0, 0)
    assert not failed.ok and failed.jobs_per_s is None and "failed: boom" in failed.line()


BURNER = textwrap.dedent(
    """
    import os, sys, time
    pid = os.fork()
    if pid == 0:
        while time.process_time() < 0.3:
            pass
        os._exit(0)
    os.waitpid(pid, 0)
    print("reaped", flush=True)
    sys.stdin.read()
    """
)


def test_worker_cpu_counts_the_children_a_worker_has_reaped() -> None:
    # RQ forks a process a job and reaps it: its CPU is the worker's all the same.
    proc = subprocess.Popen(
        [sys.executable, "-c", BURNER], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "reaped"
        own = psutil.Process(proc.pid).cpu_times()
        # The child burned 0.3 s; the kernel counts in clock ticks.
        assert own.children_user + own.children_system >= 0.25
        assert tree_cpu_seconds(proc.pid) >= 0.25
    finally:
        proc.communicate("")
    assert tree_cpu_seconds(proc.pid) == 0.0  # gone: nothing to count


# -- comparing ------------------------------------------------------------------------------


def sample(system: System, mode: str, rate: float, rep: int = 0, **more: Any) -> Sample:
    s = Sample(rep, system.key, mode, "noop", 100, jobs_per_s=rate, verified=100)
    s.commands_per_job = more.get("cmds", 10.0)
    s.worker_cpu_ms = more.get("cpu", 1.0)
    s.client_cpu_ms = 0.1
    return s


JR = jobrunner_system("threads", 8, (ONE, CLIENT, BULK))
CELERY = System("celery", "threads", 8, (ONE, BULK))
HUEY = System("huey", "threads", 8, (ONE, BULK))
ARQ = System("arq", "asyncio", 8, (ONE,))
NOOP = Figure("noop", "no-op", "noop", {False: 100, True: 100}, (JR, CELERY, HUEY, ARQ))


def noop_run() -> FigureRun:
    run = FigureRun(NOOP, n_used={s.key: 100 for s in NOOP.systems})
    for rep in range(3):
        run.samples += [
            sample(JR, ONE, 900 + rep, rep, cmds=12.0, cpu=0.4),
            sample(JR, CLIENT, 600, rep),
            sample(JR, BULK, 3_000, rep, cmds=9.0, cpu=0.6),
            sample(CELERY, ONE, 700, rep, cmds=17.0),
            sample(CELERY, BULK, 650, rep, cmds=17.0),
            sample(HUEY, ONE, 1_000 + rep * 100, rep),
            sample(HUEY, BULK, 1_500, rep),
            sample(ARQ, ONE, 2_500, rep),  # quickest of all one by one, and no bulk path
        ]
    run.samples.append(sample(HUEY, ONE, 99_000, -1))  # a warm-up: never counted
    bad = sample(ARQ, ONE, 50_000, 1)
    bad.verified = 99  # a run with a wrong result: never counted
    run.samples.append(bad)
    return run


def test_the_best_peer_is_the_quickest_checked_median_and_never_jobrunner() -> None:
    run = noop_run()
    best = best_peer(run, ONE)
    assert best is not None and best[0] is ARQ and best[1] == [2_500] * 3
    # In bulk, arq (no bulk path) stands with its one-by-one runs and still leads.
    bulk = best_peer(run, BULK)
    assert bulk is not None and bulk[0] is ARQ
    run.samples = [s for s in run.samples if s.system != ARQ.key]  # then Huey's bulk path
    bulk = best_peer(run, BULK)
    assert bulk is not None and bulk[0] is HUEY and bulk[1] == [1_500] * 3


def test_the_targets_read_as_the_issue_words_them() -> None:
    rows = {r.figure: r for r in target_rows(noop_run())}
    one = rows["no-op one by one, jobrunner threads -c8 vs best peer"]
    assert (one.target, one.ratio(), one.met()) == (">= 1.0x", pytest.approx(901 / 2_500), False)
    assert "arq asyncio -c8" in one.note
    bulk = rows["no-op bulk, jobrunner threads -c8 vs best peer"]
    assert bulk.target == ">= 1.5x" and bulk.ratio() == pytest.approx(3_000 / 2_500)
    assert not bulk.met()
    cpu = rows["worker CPU per no-op job, jobrunner threads, one by one"]
    assert (cpu.target, cpu.met()) == ("<= 0.5 ms", True)
    assert rows["worker CPU per no-op job, jobrunner threads, bulk"].met() is False
    cmds = rows["Redis commands per no-op job, jobrunner threads vs stock Celery, bulk"]
    assert cmds.target == "<= 0.6x" and cmds.ratio() == pytest.approx(9 / 17) and cmds.met()
    assert (
        rows["Redis commands per no-op job, jobrunner threads vs stock Celery, one by one"].met()
        is False
    )  # 12 / 17 = 0.71
    text = table(list(rows.values()))
    assert (
        "| no-op bulk, jobrunner threads -c8 vs best peer [jobs/s] | 2,500 | 3,000 | 1.20x" in text
    )


def test_the_commands_table_breaks_jobrunners_and_celerys_count_down() -> None:
    run = noop_run()
    for s in run.samples:
        if s.system == JR.key and s.mode == ONE:
            s.by_command = {"evalsha": 100, "zadd": 400, "brpop": 3}
        elif s.system == CELERY.key:
            s.by_command = {"lpush": 100, "brpop": 100, "set": 100}
    text = commands_table(run)
    assert text.splitlines()[0] == (
        "| command | jobrunner threads -c8 one | jobrunner threads -c8 bulk "
        "| celery threads -c8 one | celery threads -c8 bulk |"
    )
    assert "| zadd | 4.00 | 0.00 | 0.00 | 0.00 |" in text
    assert "| brpop |" not in text.replace("| brpop | 0.03", "")  # under the floor for jr
    assert "| **all** | 5.03 | 0.00 | 3.00 | 3.00 |" in text


def test_sleep_targets_are_shares_of_the_ideal() -> None:
    gevent = jobrunner_system("gevent", 100, (ONE, BULK))
    dramatiq = System("dramatiq", "threads", 100, (ONE, BULK))
    fig = Figure("sleep100", "sleep", "sleep", {False: 2_000, True: 600}, (gevent, dramatiq))
    run = FigureRun(fig, n_used={gevent.key: 2_000, dramatiq.key: 2_000})
    run.samples = [sample(gevent, ONE, 880), sample(gevent, BULK, 950), sample(dramatiq, ONE, 930)]
    rows = {r.figure: r for r in target_rows(run)}
    one = rows["2,000 x sleep(0.1), jobrunner gevent -c100, one by one, share of ideal"]
    assert one.stock == [1_000.0] and one.ratio() == pytest.approx(0.88) and not one.met()
    assert "best peer Dramatiq threads -c100: 93 %" in one.note
    assert rows["2,000 x sleep(0.1), jobrunner gevent -c100, bulk, share of ideal"].met()
    assert "| 88 % |" in summary_table(run)


def test_the_table_says_how_far_each_producers_sending_alone_lets_a_run_go() -> None:
    gevent = jobrunner_system("gevent", 100, (ONE, BULK))
    huey = System("huey", "threads", 100, (ONE,))
    fig = Figure("sleep100", "sleep", "sleep", {False: 2_000, True: 600}, (gevent, huey))
    # 2,000 jobs at an ideal 1,000/s take 2 s; sent in 2.4 s, the last sleeps until 2.5 s.
    assert fig.sending_allows(gevent, 2_000, 2.4) == pytest.approx(0.8)
    assert fig.sending_allows(huey, 2_000, 0.5) == 1.0, "a quick producer caps nothing"
    run = FigureRun(fig, n_used={gevent.key: 2_000, huey.key: 2_000})
    one, bulk, peer = (sample(gevent, ONE, 780), sample(gevent, BULK, 900), sample(huey, ONE, 940))
    for s, sent in ((one, 2.4), (bulk, 0.2), (peer, 0.8)):
        s.n, s.verified, s.send_seconds = 2_000, 2_000, sent
    run.samples = [one, bulk, peer]
    rows = {r.split("|")[2].strip(): r for r in summary_table(run).splitlines()[2:]}
    assert "| 78 % | 833 | 80 % |" in rows["one by one: POST /jobs"]
    assert "| 90 % | 10,000 | 100 % |" in rows["bulk: POST /jobs/batch, 1,000 a request"]
    assert "| 94 % | 2,500 | 100 % |" in rows["one by one: task(...)"]
    assert "sent in 2.40 s" in one.line()
    noops = noop_run()
    for s in noops.samples:
        s.send_seconds = 0.05  # 100 jobs
    row = next(r for r in summary_table(noops).splitlines() if "POST /jobs/batch" in r)
    assert "| - | 2,000 | - |" in row, "no share of an ideal without one"


def test_every_system_starts_first_once_and_slow_ones_get_fewer_jobs() -> None:
    systems = [JR, CELERY, HUEY]
    assert [rotated(systems, r)[0] for r in range(3)] == systems
    assert rotated([], 5) == []
    probe = Sample(-1, "rq", ONE, "noop", 200, jobs_per_s=13.0)
    assert budgeted_n(5_000, probe, 60, 200) == 700  # 13 jobs/s x 60 s, in hundreds
    assert (
        budgeted_n(5_000, Sample(-1, "x", ONE, "noop", 200, jobs_per_s=2_000.0), 60, 200) == 5_000
    )
    assert budgeted_n(5_000, Sample(-1, "x", ONE, "noop", 200, jobs_per_s=1.0), 60, 200) == 200


def test_peers_are_chosen_by_name() -> None:
    assert libraries_from("") == ["jobrunner", "celery", "huey", "dramatiq", "taskiq", "arq", "rq"]
    assert libraries_from("rq, huey") == ["jobrunner", "celery", "huey", "rq"]
    with pytest.raises(ValueError, match="unknown peers"):
        libraries_from("sidekiq")


def test_each_set_of_pins_has_its_own_environment(tmp_path: Path) -> None:
    folder = venvs.venv_dir("huey", tmp_path)
    assert folder.parent == tmp_path / "venvs" and folder.name.startswith("huey-3.5.4-")
    assert venvs.venv_dir("rq", tmp_path).name.startswith("rq-3.0.0-")
    original = venvs.PINS["huey"]
    try:
        venvs.PINS["huey"] = (*original, "extra==1.0")
        assert venvs.venv_dir("huey", tmp_path) != folder
    finally:
        venvs.PINS["huey"] = original


# -- the scale curve and the profile ----------------------------------------------------------


def test_the_scale_chart_draws_the_curves_and_the_peers_best_points(tmp_path: Path) -> None:
    points = []
    for procs, rate in ((1, 1_000.0), (2, 1_700.0), (4, 1_900.0)):
        p = scale.Point("gevent", procs, 100, "noop")
        p.samples = [Sample(0, "x", BULK, "noop", 100, jobs_per_s=rate, verified=100)]
        points.append(p)
    slept = scale.Point("gevent", 1, 100, "sleep")
    slept.samples = [Sample(0, "x", BULK, "sleep", 2_000, jobs_per_s=900.0, verified=2_000)]
    lost = scale.Point("threads", 1, 500, "sleep", error="TimeoutError: slow")
    points += [slept, lost]
    best = {"noop one": scale.BestPeer("Huey threads -c8", 2_200.0, 8),
            "sleep one": scale.BestPeer("Dramatiq threads -c100", 930.0, 100)}  # fmt: skip
    drawn = scale.chart(points, best, tmp_path / "scale.png", "test")
    assert drawn.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    text = scale.table(points)
    assert "| gevent | 1 | 100 | sleep(0.1) | 900 | 90 % | 1/1 |" in text
    assert "| threads | 1 | 500 | sleep(0.1) | - (TimeoutError: slow) | - | 0/0 |" in text
    assert scale.sleep_jobs(100, quick=False) == 2_000  # an ideal makespan of 2 s
    assert [p.concurrency for p in scale.points_to_run(("prefork",)) if p.workload == "sleep"] == [
        8,
        32,
    ]


ROOT = profile.PROJECT_ROOT
SITE = "/v/lib/python3.11/site-packages"
RAW = "\n".join([
    f'process 10:"celery worker";run ({ROOT}/worker/tasks.py:40);'
    f"transition ({ROOT}/services/jobs/store.py:90);"
    f"execute_command ({SITE}/redis/client.py:600) 30",
    f"run ({ROOT}/worker/tasks.py:40);dumps (/usr/lib/python3.11/json/__init__.py:231) 10",
    f"_poll ({SITE}/kombu/utils/eventio.py:80) 60",
    "garbage line without a count",
])  # fmt: skip


def test_the_profile_sums_samples_by_owner_and_function() -> None:
    stacks = profile.parse_raw(RAW)
    assert sum(stacks.values()) == 100 and len(stacks) == 3
    summary = profile.summarize(stacks)
    assert summary.samples == 100
    assert dict(summary.by_area) == {"kombu": 0.6, "redis": 0.3, "stdlib json": 0.1}
    assert summary.by_function[0] == ("_poll (kombu/utils/eventio.py)", 0.6)
    inclusive = dict(summary.own_inclusive)
    assert inclusive == {"run (worker/tasks.py)": 0.4, "transition (services/jobs/store.py)": 0.3}
    text = profile.markdown("gevent", summary, user_ms=0.5, system_ms=0.2)
    assert "| kombu | 60.0 % | 0.300 |" in text and "(100 samples)" in text
    assert "0.500 ms user + 0.200 ms system" in text


def test_the_peers_chart_is_drawn_from_the_runs_own_tables(tmp_path: Path) -> None:
    gevent = jobrunner_system("gevent", 100, (ONE, BULK))
    dramatiq = System("dramatiq", "threads", 100, (ONE, BULK))
    sleep100 = Figure("sleep100", "sleep", "sleep", {False: 2_000, True: 600}, (gevent, dramatiq))
    slept = FigureRun(sleep100, n_used={gevent.key: 2_000, dramatiq.key: 2_000})
    slept.samples = [
        sample(gevent, ONE, 880), sample(gevent, BULK, 950), sample(dramatiq, ONE, 930)
    ]  # fmt: skip
    # As bench/peers/steps.py writes a run's record, other sections in between.
    record = (
        f"### {NOOP_TITLE}\n\n{summary_table(noop_run())}\n\nEvery repetition:\n\n```\n```\n\n"
        f"### {SLEEP100_TITLE}\n\n{summary_table(slept)}\n"
    )
    noop = chart.read_bars(record, NOOP_TITLE, "jobs/s (median)")
    assert chart.Bar("jobrunner threads -c8", "one by one", 901.0) in noop  # POST /jobs...
    assert all(bar.value != 600 for bar in noop)  # ...not Client.submit, as the targets
    assert chart.Bar("jobrunner threads -c8", "bulk", 3_000.0) in noop
    # The target lines: arq, without a bulk path, stands in bulk with its one-by-one runs.
    assert chart.best_peer(noop, "one by one") == 2_500 == chart.best_peer(noop, "bulk")
    shares = chart.read_bars(record, SLEEP100_TITLE, "% of ideal")
    assert shares == [
        chart.Bar("jobrunner gevent -c100", "one by one", 88.0),
        chart.Bar("jobrunner gevent -c100", "bulk", 95.0),
        chart.Bar("Dramatiq threads -c100", "one by one", 93.0),
    ]
    drawn = chart.draw_run(record, tmp_path / "peers.png", "test")
    assert drawn.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # A record of many runs, newest first: --run picks an older one by its heading.
    older = record.replace("| 901 |", "| 700 |", 1)
    (tmp_path / "all.md").write_text(f"## Run at 22:19\n\n{record}\n## Run at 21:19\n\n{older}")
    picked = chart.run_section((tmp_path / "all.md").read_text(), "21:19")
    assert chart.Bar("jobrunner threads -c8", "one by one", 700.0) in chart.read_bars(
        picked, NOOP_TITLE, "jobs/s (median)"
    )
    chart.main([str(tmp_path / "all.md"), str(tmp_path / "old.png"), "--run", "21:19"])
    assert (tmp_path / "old.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # A record without the peers' tables is refused by name, on the command line too.
    (tmp_path / "run.md").write_text(record.split(f"### {SLEEP100_TITLE}")[0])
    with pytest.raises(chart.NoPeersTable, match=r"sleep\(0\.1\) at concurrency 100"):
        chart.draw_run((tmp_path / "run.md").read_text(), tmp_path / "x.png", "test")
    with pytest.raises(SystemExit) as refused:
        chart.main([str(tmp_path / "run.md"), str(tmp_path / "x.png")])
    assert refused.value.code == 2 and not (tmp_path / "x.png").exists()
