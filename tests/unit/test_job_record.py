"""How a job record is laid out in its Redis hash, and read back."""

from __future__ import annotations

from services.core.vocabulary import JobState
from services.jobs.record import JobError, JobRecord, decode_record, encode_record


def full_record() -> JobRecord:
    return JobRecord(
        id="3f1c2a9e-0d4b-4c7a-9e1f-2b3c4d5e6f70", workload="http_get",
        params={"url": "http://127.0.0.1:8000/lab/delay?ms=5", "timeout": 2.5},
        pool="threads", pool_chosen_by="client", state=JobState.failed,
        submitted_at=1795609929.476911, received_at=1795609929.5, started_at=1795609929.51,
        finished_at=1795609930.0, worker_host="box", worker_node="threads-1@box",
        worker_pid=4242, attempts=3, cpu_seconds=0.0021, result=None,
        error=JobError(type="ConnectionError", message="refused"), cancel_requested=True,
        max_retries=2, backoff=0.5, time_limit=None,
        attempt_errors=[JobError(type="ConnectionError", message="refused")] * 3,
    )  # fmt: skip


def test_every_field_survives_the_hash() -> None:
    record = full_record()
    assert decode_record(encode_record(record)) == record


def test_a_new_record_is_its_spec_and_its_state() -> None:
    record = JobRecord(
        id="3f1c2a9e-0d4b-4c7a-9e1f-2b3c4d5e6f70", workload="noop", params={},
        pool="gevent", pool_chosen_by="default", state=JobState.queued,
        submitted_at=1795609929.476911,
    )  # fmt: skip
    assert set(encode_record(record)) == {"spec", "state"}
    assert decode_record(encode_record(record)) == record


def test_integers_past_64_bits_are_kept() -> None:
    record = full_record().model_copy(update={"params": {"value": 10**30}, "result": -(10**40)})
    decoded = decode_record(encode_record(record))
    assert decoded.params == {"value": 10**30} and decoded.result == -(10**40)


def test_records_written_with_a_field_each_still_read() -> None:
    # The layout before `spec`: what a Redis of an earlier version still holds.
    raw = {
        "id": "old-1", "workload": "sleep", "params": '{"seconds": 0.1}', "pool": "threads",
        "pool_chosen_by": "client", "state": "succeeded", "submitted_at": "1795609929.5",
        "result": "0.1", "score": "1795609929500000",
    }  # fmt: skip
    record = decode_record(raw)
    assert record.params == {"seconds": 0.1} and record.result == 0.1
    assert record.state == JobState.succeeded
