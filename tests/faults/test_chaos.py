"""A short chaos soak (services/devstack/chaos/): jobs of every pool at a steady rate
while a worker of each pool, a prefork pool process, the API and Redis are killed, one
at a time; then every invariant holds, and every fault did harm.

`make chaos DURATION=900` runs the long one; docs/chaos.md has what it checks and a
recorded run.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from rich.console import Console

from services.devstack.chaos.engine import SoakConfig, run_soak
from services.devstack.chaos.faults import LOCAL_KINDS
from services.devstack.chaos.load import NO_ANSWER
from services.devstack.chaos.report import print_report

SEED = 7


@pytest.mark.timeout(360)
def test_a_short_soak_keeps_every_invariant_and_each_fault_hits(tmp_path: Path) -> None:
    config = SoakConfig(
        duration=30, seed=SEED, rate=8, gap=(1.0, 2.5), drain_timeout=90, folder=tmp_path / "soak"
    )
    run = run_soak(config)
    print_report(run, Console(width=180))

    failed = [f"{v.name}: {v.detail}" for v in run.verdicts if not v.ok]
    assert not failed, failed
    assert run.drained_at is not None
    obs = run.observation
    assert obs is not None
    accepted = [s for s in obs.submissions if s.job_id is not None]
    assert len(accepted) > 100

    # Every kind of fault was injected, and each did harm.
    assert set(run.kinds_hit()) == set(LOCAL_KINDS)
    by_kind = {kind: [f for f in run.faults if f.kind == kind] for kind in LOCAL_KINDS}
    for kind in ("worker:threads", "worker:prefork", "worker:gevent", "prefork-child"):
        # It cut jobs mid-run, and each ran again, on a later attempt, to its end (or was
        # cancelled meanwhile).
        hits = [f for f in by_kind[kind] if f.held]
        assert hits, f"no {kind} fault cut a running job"
        for fault in hits:
            assert fault.held_final == len(fault.held), fault
            assert fault.held_rerun + fault.held_cancelled == len(fault.held), fault
    # The API died under clients: requests found it gone, and it came back.
    api = [f for f in by_kind["api"] if f.requests[NO_ANSWER] and f.back_after is not None]
    assert api, by_kind["api"]
    # Redis went down under submissions, with jobs queued or running in it, and came back;
    # what was answered 503 meanwhile was accepted on a retry, none lost.
    redis_hits = [f for f in by_kind["redis"] if f.hit and f.back_after is not None]
    assert redis_hits, by_kind["redis"]
    assert all(s.outcome != "refused" for s in obs.submissions)
