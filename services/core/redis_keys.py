"""Every Redis key jobrunner writes, named in one place.

Celery's own keys (queues `pool.<name>`, `unacked`, `_kombu.*`) are Celery's; these are ours.
"""

PREFIX = "jobrunner"


def job(job_id: str) -> str:
    """Hash holding one job record."""
    return f"{PREFIX}:job:{job_id}"


def job_index(field: str | None = None, value: str | None = None) -> str:
    """Sorted set of job ids scored by submission time (microseconds): all jobs, or the
    jobs with one pool / workload / state, so a filtered listing reads only its own ids."""
    if field is None:
        return f"{PREFIX}:jobs"
    return f"{PREFIX}:jobs:{field}:{value}"


def rate_window(client_name: str, second: int) -> str:
    """Counter of one API key's requests in one second (expires right after)."""
    return f"{PREFIX}:rate:{client_name}:{second}"


def replication_fence() -> str:
    """Counter an accept writes before waiting for replicas (WAIT), when its job was
    written on another connection (services/jobs/submission.py)."""
    return f"{PREFIX}:replication-fence"


def idempotency(client_name: str, key: str) -> str:
    """The job a client's Idempotency-Key was first used for."""
    return f"{PREFIX}:idempotency:{client_name}:{key}"


def experiment(experiment_id: str) -> str:
    """One experiment: its request, progress and report, as JSON."""
    return f"{PREFIX}:experiment:{experiment_id}"


def experiment_index() -> str:
    """Sorted set of experiment ids scored by creation time."""
    return f"{PREFIX}:experiments"


def reconcile_lock() -> str:
    """Held by the one worker that sweeps for lost jobs this interval (expires by itself)."""
    return f"{PREFIX}:reconcile-lock"


def counters() -> str:
    """Hash of counters across every job: `refused_writes`, the writes of runs that no
    longer held their job (a worker cut off past its lease, whose late outcome was
    refused)."""
    return f"{PREFIX}:counters"


def metrics() -> str:
    """Hash of what Prometheus reads of every job (outcomes, run and wait histograms,
    retries, redeliveries, fenced writes), counted by the script that records each move
    (services/jobs/job_metrics.py)."""
    return f"{PREFIX}:metrics"
