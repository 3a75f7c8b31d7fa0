"""What must hold after a soak, checked on what was observed: the clients' ledger, the
job records and indexes as Redis holds them, the history of every record read back
from Redis's append-only file, and the processes left over.

Pure functions of an `Observation`, so a fabricated one (a job with two outcomes, a lost
one) shows each check failing (tests/unit/test_chaos_invariants.py).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field

from services.devstack.chaos.aof import FINAL_STATES, AofHistory
from services.devstack.chaos.leaks import Leak
from services.devstack.chaos.load import Submission

STATES = ("queued", "running", "succeeded", "failed", "cancelled")
# Examples of offenders a failed check names.
SHOWN = 5


@dataclass
class Observation:
    submissions: list[Submission]
    records: dict[str, dict[str, str]]  # every job record in the store, as its hash
    state_indexes: dict[str, list[str]]  # job id -> the states whose index holds it
    refused_counter: int  # the store's count of late writes refused, all jobs
    claims: dict[str, str | None]  # Idempotency-Key -> the job its claim names
    history: AofHistory | None
    leaks: list[Leak] = field(default_factory=list)


@dataclass
class Verdict:
    name: str
    ok: bool
    detail: str
    offenders: list[str] = field(default_factory=list)


def _verdict(name: str, offenders: list[str], good: str, bad: str) -> Verdict:
    if offenders:
        shown = "; ".join(offenders[:SHOWN]) + (" …" if len(offenders) > SHOWN else "")
        return Verdict(name, False, f"{len(offenders)} {bad}: {shown}", offenders)
    return Verdict(name, True, good)


def every_202_final(obs: Observation) -> Verdict:
    offenders = []
    accepted = [s for s in obs.submissions if s.job_id is not None]
    for submission in accepted:
        record = obs.records.get(submission.job_id or "")
        if record is None:
            offenders.append(f"{submission.job_id} lost (no record)")
        elif record.get("state") not in FINAL_STATES:
            offenders.append(f"{submission.job_id} still {record.get('state')}")
    return _verdict(
        "every 202 reached a final state",
        offenders,
        f"{len(accepted)} accepted, all final",
        "accepted jobs not final",
    )


def every_record_final(obs: Observation) -> Verdict:
    offenders = [
        f"{job_id} {raw.get('state')}"
        for job_id, raw in obs.records.items()
        if raw.get("state") not in FINAL_STATES
    ]
    return _verdict(
        "every job in the store is final (those of unanswered requests too)",
        offenders,
        f"{len(obs.records)} records, all final",
        "records not final",
    )


def one_job_per_submission(obs: Observation) -> Verdict:
    """Each Idempotency-Key made one job at most, every 202 named that job, and every
    record in the store belongs to a submission: counts add up."""
    offenders = []
    owned: dict[str, str] = {}
    for submission in obs.submissions:
        claimed = obs.claims.get(submission.key)
        if submission.job_id is not None and claimed != submission.job_id:
            offenders.append(f"{submission.key}: 202 named {submission.job_id}, claim {claimed}")
        if claimed is not None:
            if claimed in owned:
                offenders.append(f"{claimed} claimed by {owned[claimed]} and {submission.key}")
            owned[claimed] = submission.key
            if submission.outcome == "refused":
                offenders.append(f"key {submission.key} refused, yet job {claimed} exists")
    for job_id in obs.records:
        if job_id not in owned:
            offenders.append(f"{job_id} belongs to no submission")
    for job_id, key in owned.items():
        if job_id not in obs.records:
            offenders.append(f"key {key}'s job {job_id} has no record")
    accepted = sum(1 for s in obs.submissions if s.job_id is not None)
    return _verdict(
        "one job per submission; records = accepted + unanswered-but-created",
        offenders,
        f"{len(obs.records)} records = {accepted} accepted + "
        f"{len(obs.records) - accepted} created by requests that got no answer",
        "mismatches",
    )


def one_outcome_per_job(obs: Observation) -> Verdict:
    """From the append-only file: each job was created once, moved to a final state
    once, and claimed by no run after it ended."""
    name = "no job has two recorded outcomes (append-only file)"
    if obs.history is None:
        return Verdict(name, False, "no append-only file was read")
    if obs.history.incomplete:
        return Verdict(name, False, obs.history.incomplete)
    offenders = []
    for job_id in obs.records:
        history = obs.history.jobs.get(job_id)
        if history is None:
            offenders.append(f"{job_id} never written")
            continue
        if history.created != 1:
            offenders.append(f"{job_id} created {history.created} times")
        outcomes = history.outcomes
        if obs.records[job_id].get("state") in FINAL_STATES and len(outcomes) != 1:
            offenders.append(f"{job_id} outcomes {outcomes}")
        if history.claims_after_outcome:
            offenders.append(f"{job_id} claimed {history.claims_after_outcome}x after it ended")
    return _verdict(
        name,
        offenders,
        f"{len(obs.records)} jobs, one outcome each, no run after it",
        "jobs with other than one outcome",
    )


def attempts_add_up(obs: Observation) -> Verdict:
    """A job that ran has attempts >= 1, at least one per error it recorded, and as many
    as the claims its history holds, numbered 1, 2, … in order."""
    offenders = []
    for job_id, raw in obs.records.items():
        attempts = int(raw.get("attempts") or 0)
        state = raw.get("state")
        if state in ("succeeded", "failed") and attempts < 1:
            offenders.append(f"{job_id} {state} with attempts {attempts}")
        error_count = len(json.loads(raw.get("attempt_errors") or "[]"))
        if attempts < error_count:
            offenders.append(f"{job_id} attempts {attempts} < {error_count} errors")
        history = obs.history.jobs.get(job_id) if obs.history else None
        if history is not None and not (obs.history and obs.history.incomplete):
            claims = history.claims
            if claims != list(range(1, len(claims) + 1)) or len(claims) != attempts:
                offenders.append(f"{job_id} attempts {attempts}, claims {claims}")
    return _verdict(
        "attempts >= 1 and = the claims recorded",
        offenders,
        "every record's attempts match its claims",
        "records whose attempts do not add up",
    )


def one_run_per_record(obs: Observation) -> Verdict:
    """The fields of a finished record come from one run: its node names its host, and
    it finished after it started."""
    offenders = []
    for job_id, raw in obs.records.items():
        if raw.get("state") not in ("succeeded", "failed") or not raw.get("started_at"):
            continue
        node, host = raw.get("worker_node", ""), raw.get("worker_host", "")
        if not node.endswith(f"@{host}"):
            offenders.append(f"{job_id} node {node} on host {host}")
        finished = raw.get("finished_at")
        if finished and float(finished) < float(raw["started_at"]):
            offenders.append(f"{job_id} finished before it started")
    return _verdict(
        "each finished record holds one run's fields",
        offenders,
        "node, host and times agree",
        "mixed records",
    )


def indexes_agree(obs: Observation) -> Verdict:
    offenders = []
    for job_id, raw in obs.records.items():
        held = sorted(obs.state_indexes.get(job_id, []))
        if held != [raw.get("state")]:
            offenders.append(f"{job_id} {raw.get('state')} indexed under {held}")
    return _verdict(
        "each job is in its own state's index only",
        offenders,
        "indexes agree with records",
        "misindexed jobs",
    )


def refused_writes_add_up(obs: Observation) -> Verdict:
    per_job = sum(int(raw.get("refused_writes") or 0) for raw in obs.records.values())
    figures = [f"records {per_job}", f"counter {obs.refused_counter}"]
    if obs.history is not None and not obs.history.incomplete:
        logged = sum(h.refused_writes for h in obs.history.jobs.values())
        figures.append(f"append-only file {logged}")
    values = {int(f.rsplit(" ", 1)[1]) for f in figures}
    return Verdict(
        "late writes refused: records, counter and log agree",
        len(values) == 1,
        ", ".join(figures),
    )


def no_leaks(obs: Observation) -> Verdict:
    offenders = [f"pid {leak.pid} ({leak.command[:60]}) after {leak.when}" for leak in obs.leaks]
    return _verdict("no process leaks", offenders, "none left behind", "processes left")


CHECKS: list[Callable[[Observation], Verdict]] = [
    every_202_final,
    every_record_final,
    one_job_per_submission,
    one_outcome_per_job,
    attempts_add_up,
    one_run_per_record,
    indexes_agree,
    refused_writes_add_up,
    no_leaks,
]


def check(obs: Observation) -> list[Verdict]:
    return [each(obs) for each in CHECKS]
