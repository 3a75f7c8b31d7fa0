"""The soak's printout: the faults injected and what each hit, the figures, and the
verdict of every invariant."""

from __future__ import annotations

import json
import os
import statistics
from collections import Counter

from rich.console import Console
from rich.table import Table

from services.core.vocabulary import POOL_NAMES
from services.devstack.chaos.engine import SoakRun
from services.devstack.chaos.faults import LABELS
from services.devstack.chaos.load import Submission
from services.devstack.chaos.stacks import VISIBILITY_TIMEOUT


def _seconds(value: float | None) -> str:
    return "—" if value is None else f"{value:.1f} s"


def faults_table(run: SoakRun) -> Table:
    table = Table(title="Faults injected", title_justify="left")
    for name, justify in (("#", "right"), ("at", "right"), ("fault", "left"), ("target", "left"),
                          ("hit", "center"), ("what it hit", "left"), ("down", "right"),
                          ("API ready", "right")):  # fmt: skip
        table.add_column(name, justify=justify)  # type: ignore[arg-type]
    for fault in run.faults:
        table.add_row(
            str(fault.number), f"{fault.at:.1f} s", LABELS[fault.kind], fault.target,
            "yes" if fault.hit else "NO", fault.what_it_hit(), _seconds(fault.down_for),
            _seconds(fault.back_after),
        )  # fmt: skip
    return table


def _percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(share * len(ordered)))]


def reruns(raw: dict[str, str]) -> int:
    """Runs beyond those its retries explain: deliveries again after a fault."""
    attempts = int(raw.get("attempts") or 0)
    errors = len(json.loads(raw.get("attempt_errors") or "[]"))
    explained = errors + (1 if raw.get("state") == "succeeded" else 0)
    return max(0, attempts - max(explained, 1))


def _counts(counter: Counter[str]) -> str:
    return ", ".join(f"{n}x {answer}" for answer, n in counter.most_common()) or "0"


def run_rows(run: SoakRun) -> list[tuple[str, str]]:
    config = run.config
    samples = run.load_samples or [0.0]
    per_pool = config.workers_per_pool or (1 if config.cluster else 2)
    stack = "test bed: hosts redis, api, w1, w2" if config.cluster else "this machine"
    return [
        ("[run]", ""),
        ("seed", str(config.seed)),
        ("stack", stack),
        ("workers", f"{per_pool} per pool" + (" per worker host" if config.cluster else "")),
        ("visibility timeout (lease)", f"{VISIBILITY_TIMEOUT} s"),
        ("load asked", f"{config.rate:g} jobs/s for {config.duration:.0f} s"),
        ("soaked", f"{run.submissions_ended - run.began:.0f} s of submissions, "
                   f"{len(run.faults)} faults"),
        ("machine", f"{os.cpu_count()} cores; load average {samples[0]:.2f} at the start, "
                    f"mean {statistics.fmean(samples):.2f}, max {max(samples):.2f}, "
                    f"{samples[-1]:.2f} at the end"),
    ]  # fmt: skip


def _answer(submission: Submission, which: int) -> str:
    chosen = submission.tries[which]
    return f"{chosen.answer} ({chosen.error})" if chosen.error else chosen.answer


def submission_rows(run: SoakRun) -> list[tuple[str, str]]:
    assert run.observation is not None and run.load is not None
    subs = run.observation.submissions
    outcomes = Counter(s.outcome for s in subs)
    retried = Counter(_answer(s, 0) for s in subs if s.job_id and len(s.tries) > 1)
    replayed = Counter(_answer(s, -2) for s in subs if s.replayed and len(s.tries) > 1)
    return [
        ("[submissions]", ""),
        ("submitted", str(len(subs))),
        ("first answer", _counts(Counter(s.tries[0].answer for s in subs if s.tries))),
        ("accepted (202)", str(outcomes["accepted"])),
        ("  after a retry, by first answer", _counts(retried)),
        ("  made by a try that got no answer, replayed", _counts(replayed)),
        ("refused", str(outcomes["refused"])),
        ("unresolved (no answer, gave up)", str(outcomes["unresolved"])),
        ("cancels asked, by answer", _counts(run.load.cancels)),
    ]  # fmt: skip


def job_rows(run: SoakRun) -> list[tuple[str, str]]:
    assert run.observation is not None
    obs = run.observation
    records = obs.records
    states = Counter(raw.get("state") or "?" for raw in records.values())
    final = ", ".join(f"{states.pop(s, 0)} {s}" for s in ("succeeded", "failed", "cancelled"))
    if states:
        final += f"; NOT final: {_counts(states)}"
    attempts = Counter(min(int(raw.get("attempts") or 0), 3) for raw in records.values())
    spread = ", ".join(f"{'3+' if n == 3 else n}: {attempts[n]}" for n in sorted(attempts))
    rows = [
        ("[jobs]", ""),
        ("records in the store", str(len(records))),
        ("final by state", final),
        ("attempts", spread),
        ("run again after a fault", str(sum(1 for raw in records.values() if reruns(raw)))),
        ("late writes refused (fenced)", str(obs.refused_counter)),
    ]  # fmt: skip
    for pool in POOL_NAMES:
        rows.append((f"  {pool}", pool_summary(records, pool)))
    if run.drained_at:
        drain = f"{run.drained_at - run.submissions_ended:.1f} s"
    else:
        drain = f"not drained within {run.config.drain_timeout:.0f} s"
    rows.append(("time to drain", f"{drain} after the last submission was answered"))
    if obs.history is not None:
        read = f"{obs.history.commands} commands, {obs.history.size_bytes / 1e6:.1f} MB"
        rows.append(("append-only file read back", read))
    return rows


def pool_summary(records: dict[str, dict[str, str]], pool: str) -> str:
    specs = {job_id: json.loads(raw.get("spec") or "{}") for job_id, raw in records.items()}
    mine = {job_id: raw for job_id, raw in records.items() if specs[job_id].get("pool") == pool}
    done = Counter(raw.get("state") for raw in mine.values())
    summary = (
        f"{len(mine)} jobs: {done['succeeded']} succeeded, {done['failed']} failed, "
        f"{done['cancelled']} cancelled"
    )
    waits = [
        float(raw["finished_at"]) - float(specs[job_id]["submitted_at"])
        for job_id, raw in mine.items()
        if raw.get("state") == "succeeded" and raw.get("finished_at")
    ]
    if waits:
        summary += (
            f"; submitted to finished p50 {_percentile(waits, 0.5):.1f} s, "
            f"p95 {_percentile(waits, 0.95):.1f} s, max {max(waits):.1f} s"
        )
    return summary


def process_rows(run: SoakRun) -> list[tuple[str, str]]:
    exited = ", ".join(
        f"{u.name} (status {u.status}, at {u.at:.0f} s, after fault #{u.after_fault})"
        for u in run.unplanned
    )
    return [
        ("[processes]", ""),
        ("restarted after a fault", str(sum(1 for f in run.faults if f.down_for))),
        ("exited on their own, restarted", exited or "none"),
        ("left behind", str(len(run.leaks))),
    ]


def figures(run: SoakRun) -> list[tuple[str, str]]:
    """(label, value) rows; a label in brackets starts a section."""
    return run_rows(run) + submission_rows(run) + job_rows(run) + process_rows(run)


def figures_table(run: SoakRun) -> Table:
    table = Table(title="Figures", title_justify="left", show_header=False)
    table.add_column("what")
    table.add_column("value")
    for label, value in figures(run):
        if label.startswith("["):
            table.add_row(f"[bold]{label.strip('[]')}[/bold]", "")
        else:
            table.add_row(label, value)
    return table


def verdicts_table(run: SoakRun) -> Table:
    table = Table(title="Invariants", title_justify="left")
    table.add_column("invariant")
    table.add_column("", justify="center")
    table.add_column("detail")
    for verdict in run.verdicts:
        table.add_row(verdict.name, "ok" if verdict.ok else "FAIL", verdict.detail)
    hits = run.kinds_hit()
    missed = sorted(kind for kind, hit in hits.items() if not hit)
    table.add_row(
        "every kind of fault hit something",
        "ok" if not missed and hits else "miss",
        f"{len(hits)} kinds; missed: {', '.join(missed)}" if missed else f"{len(hits)} kinds",
    )
    return table


def print_report(run: SoakRun, console: Console) -> None:
    console.print(faults_table(run))
    console.print(figures_table(run))
    console.print(verdicts_table(run))
    console.print(
        f"[bold]{'PASS' if run.ok else 'FAIL'}[/bold]: "
        f"{sum(v.ok for v in run.verdicts)}/{len(run.verdicts)} invariants hold; "
        f"logs in {run.folder}"
    )
