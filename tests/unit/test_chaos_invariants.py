"""The chaos soak's checks (services/devstack/chaos/) fail on what they exist to catch:
each invariant is shown a fabricated observation that breaks it, and the append-only
file reader a history with a second outcome."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from services.devstack.chaos.aof import JobHistory, commands, read_history
from services.devstack.chaos.invariants import Observation, Verdict, check
from services.devstack.chaos.leaks import Leak
from services.devstack.chaos.load import NO_ANSWER, Submission, Try


def resp(*argv: str) -> bytes:
    """One command as Redis writes it to its append-only file."""
    out = f"*{len(argv)}\r\n".encode()
    for arg in argv:
        data = arg.encode()
        out += b"$%d\r\n%s\r\n" % (len(data), data)
    return out


def job_log(job_id: str, outcomes: tuple[str, ...] = ("succeeded",), claims: int = 1) -> bytes:
    """A job's writes as its scripts log them: created, claimed, ended."""
    key = f"jobrunner:job:{job_id}"
    log = resp("HSET", key, "state", "queued", "score", "1", "spec", "{}")
    for attempt in range(1, claims + 1):
        log += resp("MULTI") + resp("HSET", key, "state", "running", "attempts", str(attempt))
        log += resp("ZADD", "jobrunner:jobs:state:running", "1", job_id) + resp("EXEC")
    for outcome in outcomes:
        log += resp("HSET", key, "state", outcome, "finished_at", "3")
    return log


def write_aof(folder: Path, data: bytes, base_seq: int = 1) -> Path:
    aof = folder / "appendonlydir"
    aof.mkdir()
    (aof / "appendonly.aof.manifest").write_text(
        f"file appendonly.aof.{base_seq}.base.rdb seq {base_seq} type b\n"
        "file appendonly.aof.1.incr.aof seq 1 type i\n"
    )
    (aof / "appendonly.aof.1.incr.aof").write_bytes(data)
    return aof


def record(state: str = "succeeded", attempts: int = 1, **extra: str) -> dict[str, str]:
    raw = {
        "state": state, "attempts": str(attempts), "spec": json.dumps({"pool": "threads"}),
        "worker_node": "threads-1@vm", "worker_host": "vm", "started_at": "2",
        "finished_at": "3",
    }  # fmt: skip
    return {**raw, **extra}


def good(tmp_path: Path, jobs: int = 3) -> Observation:
    """A soak's observation where everything holds."""
    submissions, records, indexes, claims, log = [], {}, {}, {}, b""
    for i in range(jobs):
        job_id = f"job-{i}"
        submission = Submission(i, "threads", "noop", {}, f"key-{i}", tries=[Try(0, "202", 0)])
        submission.job_id = job_id
        submissions.append(submission)
        records[job_id] = record()
        indexes[job_id] = ["succeeded"]
        claims[submission.key] = job_id
        log += job_log(job_id)
    history = read_history(write_aof(tmp_path, log))
    return Observation(submissions, records, indexes, 0, claims, history)


def failing(verdicts: list[Verdict]) -> dict[str, str]:
    return {v.name: v.detail for v in verdicts if not v.ok}


def test_a_sound_observation_passes(tmp_path: Path) -> None:
    assert failing(check(good(tmp_path))) == {}


def test_two_recorded_outcomes_fail(tmp_path: Path) -> None:
    obs = good(tmp_path)
    log = b"".join(job_log(f"job-{i}") for i in range(2))
    log += job_log("job-2", outcomes=("succeeded", "failed"))  # a second outcome
    (tmp_path / "second").mkdir()
    obs.history = read_history(write_aof(tmp_path / "second", log))
    failed = failing(check(obs))
    assert list(failed) == ["no job has two recorded outcomes (append-only file)"]
    assert "job-2 outcomes ['succeeded', 'failed']" in next(iter(failed.values()))


def test_a_run_after_the_outcome_fails(tmp_path: Path) -> None:
    obs = good(tmp_path)
    assert obs.history is not None
    obs.history.jobs["job-0"].states.append(("running", 2))  # claimed once it had ended
    obs.records["job-0"]["attempts"] = "2"
    failed = failing(check(obs))
    assert (
        "job-0 claimed 1x after it ended"
        in failed["no job has two recorded outcomes (append-only file)"]
    )


def test_a_lost_or_stuck_job_fails(tmp_path: Path) -> None:
    obs = good(tmp_path)
    del obs.records["job-0"]  # lost
    obs.records["job-1"]["state"] = "running"  # stuck
    obs.state_indexes["job-1"] = ["running"]
    failed = failing(check(obs))
    detail = failed["every 202 reached a final state"]
    assert "job-0 lost" in detail and "job-1 still running" in detail
    assert (
        "job-1 running"
        in failed["every job in the store is final (those of unanswered requests too)"]
    )


def test_attempts_that_do_not_add_up_fail(tmp_path: Path) -> None:
    obs = good(tmp_path)
    obs.records["job-0"]["attempts"] = "0"  # succeeded without a run
    obs.records["job-1"]["attempts"] = "2"  # one claim in the log
    detail = failing(check(obs))["attempts >= 1 and = the claims recorded"]
    assert "job-0 succeeded with attempts 0" in detail
    assert "job-1 attempts 2, claims [1]" in detail


def test_a_second_job_for_one_key_and_an_orphan_record_fail(tmp_path: Path) -> None:
    obs = good(tmp_path)
    obs.claims["key-1"] = "job-9"  # the key's claim names another job than its 202
    obs.records["job-9"] = record()
    obs.state_indexes["job-9"] = ["succeeded"]
    obs.records["job-8"] = record()  # a job no submission made
    obs.state_indexes["job-8"] = ["succeeded"]
    detail = failing(check(obs))[
        "one job per submission; records = accepted + unanswered-but-created"
    ]
    assert "key-1: 202 named job-1, claim job-9" in detail
    assert "job-8 belongs to no submission" in detail


def test_an_unanswered_submission_may_have_made_its_job(tmp_path: Path) -> None:
    obs = good(tmp_path)
    lost_answer = Submission(9, "gevent", "noop", {}, "key-9", tries=[Try(0, NO_ANSWER, 10)])
    obs.submissions.append(lost_answer)
    obs.claims["key-9"] = "job-9"
    obs.records["job-9"] = record()
    obs.state_indexes["job-9"] = ["succeeded"]
    assert obs.history is not None
    obs.history.jobs["job-9"] = JobHistory(created=1, states=[("running", 1), ("succeeded", None)])
    assert lost_answer.outcome == "unresolved"
    assert failing(check(obs)) == {}


def test_mixed_records_misindexed_jobs_and_uneven_counts_fail(tmp_path: Path) -> None:
    obs = good(tmp_path)
    obs.records["job-0"]["worker_host"] = "other"  # node of one run, host of another
    obs.state_indexes["job-1"] = ["running", "succeeded"]
    obs.records["job-2"]["refused_writes"] = "1"  # counted on the record, not the counter
    failed = failing(check(obs))
    assert (
        "job-0 node threads-1@vm on host other"
        in failed["each finished record holds one run's fields"]
    )
    assert (
        "job-1 succeeded indexed under ['running', 'succeeded']"
        in failed["each job is in its own state's index only"]
    )
    assert failed["late writes refused: records, counter and log agree"] == (
        "records 1, counter 0, append-only file 0"
    )


def test_a_leak_fails(tmp_path: Path) -> None:
    obs = good(tmp_path)
    obs.leaks = [Leak(4242, "python -m gunicorn", "the kill of the API")]
    assert "pid 4242" in failing(check(obs))["no process leaks"]


def test_a_rewritten_or_missing_history_is_no_proof(tmp_path: Path) -> None:
    obs = good(tmp_path)
    (tmp_path / "rewritten").mkdir()
    obs.history = read_history(write_aof(tmp_path / "rewritten", b"", base_seq=2))
    assert "rewritten" in failing(check(obs))["no job has two recorded outcomes (append-only file)"]
    obs.history = None
    assert "no job has two recorded outcomes (append-only file)" in failing(check(obs))


def test_the_reader_keeps_committed_transactions_only() -> None:
    key = "jobrunner:job:a"
    whole = resp("MULTI") + resp("HSET", key, "state", "running", "attempts", "1") + resp("EXEC")
    cut = resp("MULTI") + resp("HSET", key, "state", "succeeded")  # Redis killed before EXEC
    read = list(commands(whole + cut + resp("HSET", key, "state")[:-3]))
    assert read == [[b"HSET", key.encode(), b"state", b"running", b"attempts", b"1"]]
    with pytest.raises(ValueError):
        list(commands(b"garbage"))
