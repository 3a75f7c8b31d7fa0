"""The mutations of the gate: each breaks one promised mechanism, and names the tests
that must then fail.

A mutation is data: the promise it attacks (a row of docs/guarantees.md), what the
mutant does, its edits (exact text in a file of the project, replaced; the text must
occur exactly once, so a refactoring that moves it makes the gate say the mutation is
stale instead of testing nothing) and the pytest node ids that must catch it. `fast`
ones run in CI (`python -m tests.mutations --fast`) with their first test alone, which
needs no worker or only the session stack, and a few seconds.

Adding a promise: add its mutation here, with the test that proves it.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Edit:
    """In `path` (from the project's root), `old` (exactly once) becomes `new`."""

    path: str
    old: str
    new: str


@dataclass(frozen=True)
class Mutation:
    id: str
    promise: str  # the row of the Guarantees table it attacks
    mutant: str  # what the mutated code does, in a line
    edits: tuple[Edit, ...]
    tests: tuple[str, ...]  # node ids; at least one must fail (--fast: the first)
    fast: bool = False


FAULTS = "tests/faults/test_lost_worker_and_redis_restart.py"
LOAD = "tests/faults/test_load.py"
GUARANTEES = "tests/e2e/test_guarantees.py"
AUTH = "tests/e2e/test_auth.py"
JOBS_API = "tests/e2e/test_jobs_api.py"
FENCING = "tests/integration/test_fencing.py"

MUTATIONS: tuple[Mutation, ...] = (
    # -- At least once -----------------------------------------------------------------
    Mutation(
        "acks-early",
        "At least once",
        "Celery acknowledges a job's message when it takes it (task_acks_late=False)",
        (
            Edit(
                "services/broker/celery_app.py",
                '"task_acks_late": True,',
                '"task_acks_late": False,',
            ),
        ),
        (f"{FAULTS}::test_job_of_a_killed_worker_is_redelivered_to_another[threads]",),
    ),
    Mutation(
        "no-reject-on-worker-lost",
        "At least once",
        "a job whose pool process died is acknowledged, not handed back "
        "(task_reject_on_worker_lost=False)",
        (
            Edit(
                "services/broker/celery_app.py",
                '"task_reject_on_worker_lost": True,',
                '"task_reject_on_worker_lost": False,',
            ),
        ),
        (f"{FAULTS}::test_job_of_a_killed_prefork_child_is_handed_back_by_its_worker",),
    ),
    Mutation(
        "acks-never-deleted",
        "At least once",
        "acknowledged messages stay in kombu's unacked set (delivered again after the "
        "visibility timeout)",
        (
            Edit(
                "services/broker/qos.py",
                "                if acked:\n"
                "                    pipe.zrem(self.unacked_index_key, *acked)\n"
                "                    pipe.hdel(self.unacked_key, *acked)\n",
                "                if False:\n"
                "                    pipe.zrem(self.unacked_index_key, *acked)\n"
                "                    pipe.hdel(self.unacked_key, *acked)\n",
            ),
        ),
        ("tests/integration/test_unacked.py::test_finished_jobs_leave_the_unacked_set[threads]",),
    ),
    # -- One recorded outcome, from one run ----------------------------------------------
    Mutation(
        "claim-ignores-lease",
        "One recorded outcome, from one run",
        "a redelivered message takes over a running job whose lease is still renewed",
        (
            Edit(
                "services/jobs/transition.lua",
                "  if tonumber(rec['lease_until'] or '0') > clock then return {0, state, 0} end\n",
                "",
            ),
        ),
        (
            f"{FENCING}::test_a_takeover_waits_for_the_lease_on_redis_clock",
            f"{FAULTS}::test_a_duplicate_of_a_running_job_never_starts_a_second_run",
        ),
        fast=True,
    ),
    Mutation(
        "no-fence",
        "One recorded outcome, from one run",
        "a run that lost its job still writes its outcome (no fence on the attempt)",
        (
            Edit(
                "services/jobs/transition.lua",
                "if fence ~= '' and (rec['attempts'] or '0') ~= fence then",
                "if false then",
            ),
        ),
        (f"{FENCING}::test_the_late_outcome_of_a_run_that_lost_its_job_is_refused_and_counted",),
        fast=True,
    ),
    Mutation(
        "pipeline-skips-wait-check",
        "One recorded outcome, from one run",
        "a job claimed on its worker's take starts however long it waited there, without "
        "renewing and checking its lease first",
        (
            Edit(
                "worker/pipeline.py",
                "if time.monotonic() - claimed_at <= renew_every:",
                "if True:",
            ),
        ),
        (
            "tests/integration/test_pipeline.py"
            "::test_a_job_that_waited_in_its_worker_is_checked_before_it_starts",
        ),
        fast=True,
    ),
    Mutation(
        "pipeline-wait-check-not-called",
        "One recorded outcome, from one run",
        "a pool process starts a job claimed on the take without the check of a job that "
        "waited in its worker (the check itself kept)",
        (
            Edit(
                "worker/tasks.py",
                "held_since = patiently(lambda: lease_after_wait(",
                "held_since = claimed_at or patiently(lambda: lease_after_wait(",
            ),
        ),
        (
            "tests/integration/test_pipeline.py"
            "::test_a_run_claimed_on_the_take_that_waited_starts_only_if_its_job_is_still_held",
        ),
        fast=True,
    ),
    Mutation(
        "batched-moves-index-each-move",
        "A listing by state shows each job once, under its state",
        "moves sent in one call each move their job's index entry (a job that moved twice "
        "is left in the index of its middle state too)",
        (
            Edit(
                "services/jobs/transition.lua",
                "    local earlier = index_moves[id]  -- this job moved before in this call\n",
                "    local earlier = nil\n",
            ),
        ),
        (
            "tests/integration/test_batched_moves.py::test_a_job_moved_twice_in_one_call_is_in_one_index",
        ),
        fast=True,
    ),
    # -- No message lost with Redis ------------------------------------------------------
    Mutation(
        "reconciler-finds-nothing",
        "No message lost with Redis",
        "the sweep never finds a lost job",
        (
            Edit(
                "services/jobs/reconcile.py",
                "    for state in (JobState.queued, JobState.running):\n",
                "    for state in ():\n",
            ),
        ),
        (
            "tests/integration/test_reconcile.py"
            "::test_a_crowd_of_jobs_just_sent_again_does_not_hide_a_lost_one",
            f"{FAULTS}::test_a_job_whose_message_vanished_is_sent_again",
        ),
    ),
    # -- Redis restarts ------------------------------------------------------------------
    Mutation(
        "readyz-without-retry-after",
        "Redis restarts",
        "/readyz answers 503 without Retry-After",
        (
            Edit(
                "api/routes/health.py",
                'headers={"Retry-After": "1"}',
                "headers={}",
            ),
        ),
        (f"{FAULTS}::test_redis_restart_loses_no_accepted_job",),
    ),
    Mutation(
        "redis-down-is-500",
        "Redis restarts",
        "a Redis error reaching a view answers 500, not 503",
        (
            Edit(
                "api/errors.py",
                "    @app.errorhandler(redis.RedisError)\n"
                "    @app.errorhandler(OperationalError)\n",
                "",
            ),
        ),
        (f"{FAULTS}::test_redis_restart_loses_no_accepted_job",),
    ),
    # -- API restarts --------------------------------------------------------------------
    Mutation(
        "api-500-while-starting",
        "API restarts",
        "POST /jobs answers 500 for the first two seconds of an API process",
        (
            Edit(
                "api/routes/jobs.py",
                'blueprint = Blueprint("jobs", __name__)\n',
                'blueprint = Blueprint("jobs", __name__)\n'
                '_STARTED = __import__("time").monotonic()\n',
            ),
            Edit(
                "api/routes/jobs.py",
                '    """Submit a job; answers 202 with its record and a Location to poll."""\n',
                '    """Submit a job; answers 202 with its record and a Location to poll."""\n'
                '    if __import__("time").monotonic() - _STARTED < 2:\n'
                '        raise RuntimeError("warming up")\n',
            ),
        ),
        (f"{LOAD}::test_api_killed_under_load_honours_every_202",),
    ),
    Mutation(
        "202-before-stored",
        "API restarts",
        "a job is stored 0.2 s after its 202 is sent",
        (
            Edit(
                "services/jobs/submission.py",
                "    record = new_record(spec, job_id)\n"
                "    store_and_send(store, celery, [record], rate)\n",
                "    record = new_record(spec, job_id)\n"
                '    __import__("threading").Timer(\n'
                "        0.2, store_and_send, (store, celery, [record], rate)\n"
                "    ).start()\n",
            ),
        ),
        (f"{LOAD}::test_api_killed_under_load_honours_every_202",),
    ),
    # -- Idempotent submission -----------------------------------------------------------
    Mutation(
        "idempotency-key-shared-across-api-keys",
        "Idempotent submission",
        "an Idempotency-Key is one namespace for every API key",
        (
            Edit(
                "api/routes/jobs.py",
                "ctx.store, ctx.celery, job_spec, g.client_name, idempotency_key",
                'ctx.store, ctx.celery, job_spec, "everyone", idempotency_key',
            ),
        ),
        (f"{GUARANTEES}::test_an_idempotency_key_belongs_to_its_api_key",),
        fast=True,
    ),
    Mutation(
        "idempotency-without-watch",
        "Idempotent submission",
        "the claim is checked, then written, without WATCH: concurrent requests race",
        (
            Edit("services/jobs/idempotency.py", "pipe.watch(claim_key)\n", "pass\n"),
            Edit(
                "services/jobs/idempotency.py",
                "claimed_job(store, pipe.get(claim_key), request, key)",
                # Read outside the transaction, then a moment for a rival to read too.
                "claimed_job(store, store.redis.get(claim_key), request, key)"
                ' or __import__("time").sleep(0.05)',
            ),
        ),
        (f"{GUARANTEES}::test_concurrent_requests_with_one_key_make_one_job",),
    ),
    # -- Retries -------------------------------------------------------------------------
    Mutation(
        "retry-ignores-backoff",
        "Retries",
        "a retryable failure runs again at once, whatever its backoff",
        (
            Edit(
                "worker/tasks.py",
                "countdown=delay,",
                "countdown=0,",
            ),
        ),
        (f"{GUARANTEES}::test_a_retry_waits_out_its_backoff_and_is_not_sent_again_meanwhile",),
    ),
    Mutation(
        "everything-retryable",
        "Retries",
        "every failure is retried, not only those the workload marks retryable",
        (
            Edit(
                "worker/tasks.py",
                "return entry is not None and isinstance(exc, entry.retryable)",
                "return True",
            ),
        ),
        (f"{GUARANTEES}::test_a_failure_the_workload_does_not_mark_retryable_fails_at_once",),
        fast=True,
    ),
    Mutation(
        "retry-endpoint-requeues-running",
        "Retries",
        "POST /jobs/<id>/retry queues a running job again",
        (
            Edit(
                "services/jobs/submission.py",
                "        {JobState.failed, JobState.cancelled},\n        JobState.queued,\n",
                "        {JobState.failed, JobState.cancelled, JobState.running},\n"
                "        JobState.queued,\n",
            ),
        ),
        (f"{GUARANTEES}::test_retry_of_a_job_neither_failed_nor_cancelled_is_409",),
    ),
    Mutation(
        "retry-endpoint-requeues-queued",
        "Retries",
        "POST /jobs/<id>/retry sends a queued job a second message",
        (
            Edit(
                "services/jobs/submission.py",
                "        {JobState.failed, JobState.cancelled},\n        JobState.queued,\n",
                "        {JobState.failed, JobState.cancelled, JobState.queued},\n"
                "        JobState.queued,\n",
            ),
        ),
        (f"{GUARANTEES}::test_retry_of_a_job_neither_failed_nor_cancelled_is_409",),
    ),
    Mutation(
        "records-expire-in-60s",
        "Retries",
        "a job record is created with a 60 s TTL, not JOB_RESULT_TTL",
        (
            Edit(
                "services/jobs/create.lua",
                "  redis.call('EXPIRE', key, ttl)\n",
                "  redis.call('EXPIRE', key, 60)\n",
            ),
        ),
        ("tests/e2e/test_ttl.py::test_a_job_record_lives_the_result_ttl_no_less_no_longer",),
    ),
    # -- A full Redis refuses, it does not corrupt -----------------------------------------
    Mutation(
        "full-redis-is-503",
        "A full Redis refuses, it does not corrupt",
        "a submission Redis refuses for lack of memory answers 503 (as if Redis were down), "
        "not 507",
        (
            Edit(
                "api/errors.py",
                "    full = storage_refusal(exc)\n    if full is not None:\n"
                "        return redis_full_problem(full)\n    if isinstance(exc, NotReplicated)",
                "    full = None\n    if full is not None:\n"
                "        return redis_full_problem(full)\n    if isinstance(exc, NotReplicated)",
            ),
        ),
        (
            "tests/faults/test_redis_full.py"
            "::test_a_full_redis_refuses_submissions_with_507_and_stores_nothing",
        ),
    ),
    # -- Time limits ---------------------------------------------------------------------
    Mutation(
        "time-limit-not-sent",
        "Time limits where a pool can enforce them",
        "a job's time_limit is stored but not sent with its message",
        (
            Edit(
                "services/broker/messages.py",
                '{"time_limit": time_limit} if time_limit is not None else {}',
                "{}",
            ),
        ),
        (f"{GUARANTEES}::test_time_limit_kills_a_prefork_job",),
    ),
    # -- Honest capabilities -------------------------------------------------------------
    Mutation(
        "threads-claim-memory-isolation",
        "Honest capabilities",
        "GET /pools says threads isolate each job's memory",
        (
            Edit(
                "services/catalog/pools.py",
                'PoolProfile("threads", "threads", 8, "io", False, False, False),',
                'PoolProfile("threads", "threads", 8, "io", False, False, True),',
            ),
        ),
        (f"{JOBS_API}::test_pools_lists_live_workers_and_capabilities",),
        fast=True,
    ),
    # -- Graceful shutdown ---------------------------------------------------------------
    Mutation(
        "no-shutdown-grace",
        "Graceful shutdown",
        "SIGTERM stops running jobs at once (no soft-shutdown grace)",
        (
            Edit(
                "worker/app.py",
                "app.conf.worker_soft_shutdown_timeout = get_settings().job_shutdown_grace",
                "app.conf.worker_soft_shutdown_timeout = 0",
            ),
        ),
        # Only a pool that can stop its job shows it: a thread is waited for anyway.
        (
            f"{FAULTS}::test_sigterm_lets_a_short_job_finish_on_its_worker[prefork]",
            f"{FAULTS}::test_sigterm_lets_a_short_job_finish_on_its_worker[gevent]",
        ),
    ),
    # -- A prefork job cannot take more memory than it is given -----------------------------
    Mutation(
        "no-memory-limit",
        "A prefork job cannot take more memory than it is given",
        "WORKER_MEMORY_LIMIT_PREFORK is read but never applied to the pool processes",
        (Edit("worker/memory_limit.py", "    if limit_mib is None:\n", "    if True:\n"),),
        (
            "tests/faults/test_memory_limits.py"
            "::test_a_prefork_job_past_the_limit_fails_and_the_pool_goes_on",
        ),
    ),
    # -- Workers come back ---------------------------------------------------------------
    Mutation(
        "dead-workers-stay-dead",
        "Workers come back",
        "the local runner leaves a worker that died dead",
        (
            Edit(
                "services/devstack/run.py",
                "for managed in launcher.restart_dead():",
                "for managed in []:",
            ),
        ),
        ("tests/e2e/test_local_runner.py::test_a_worker_that_dies_is_started_again",),
    ),
    # -- Durable Redis -------------------------------------------------------------------
    Mutation(
        "local-redis-appendfsync-no",
        "Durable Redis",
        "the local Redis (make run, the tests) runs with appendfsync no",
        (
            Edit(
                "services/devstack/launcher.py",
                'self, fsync: str = "always", bind: str = "127.0.0.1", port: int | None = None',
                'self, fsync: str = "no", bind: str = "127.0.0.1", port: int | None = None',
            ),
        ),
        ("tests/integration/test_durable_redis.py::test_the_local_redis_fsyncs_every_write",),
        fast=True,
    ),
    Mutation(
        "compose-redis-appendfsync-no",
        "Durable Redis",
        "compose runs Redis with appendfsync no",
        (
            Edit(
                "docker-compose.yml",
                "--appendfsync everysec",
                "--appendfsync no",
            ),
        ),
        (
            "tests/unit/test_settings_and_runner.py"
            "::test_compose_redis_is_durable_private_and_password_protected",
        ),
        fast=True,
    ),
    # -- Security ------------------------------------------------------------------------
    Mutation(
        "rate-limit-per-process",
        "Rate limit per API key",
        "each API process counts requests on its own, in memory",
        (
            Edit(
                "api/auth.py",
                "    pipe = api_context().store.redis.pipeline(transaction=False)\n"
                "    pipe.incr(counter)\n"
                "    pipe.expire(counter, 2)\n"
                "    count, _ = pipe.execute()\n"
                "    return int(count)\n",
                "    local = count_request.__dict__.setdefault('counts', {})\n"
                "    local[counter] = local.get(counter, 0) + 1\n"
                "    return local[counter]\n",
            ),
        ),
        (f"{AUTH}::test_rate_limit_per_key_answers_429_with_retry_after",),
    ),
    Mutation(
        "rate-limit-not-refused-in-write",
        "Rate limit per API key",
        "a submission counted in its write past its key's limit is stored all the same",
        (
            Edit(
                "services/jobs/create.lua",
                "  if counted > limit then return -counted end\n",
                "  if false then return -counted end\n",
            ),
        ),
        (f"{AUTH}::test_a_submission_is_counted_in_the_script_that_stores_it",),
    ),
    Mutation(
        "rate-limit-refusals-do-the-work",
        "Rate limit per API key",
        "after a refusal in its write, the key's submissions that second are still validated "
        "and sent to Redis before being refused",
        (
            Edit(
                "api/auth.py",
                "            if not idempotent and count.counter not in _over_limit:\n",
                "            if not idempotent:\n",
            ),
        ),
        (f"{AUTH}::test_a_submission_is_counted_in_the_script_that_stores_it",),
    ),
    Mutation(
        "rate-limit-bad-submissions-free",
        "Rate limit per API key",
        "a submission refused before its write (a 422) is never counted",
        (
            Edit(
                "api/auth.py", "            count_request(pending.counter)\n", "            pass\n"
            ),
        ),
        (f"{AUTH}::test_a_submission_that_stores_nothing_still_counts",),
    ),
    Mutation(
        "auth-off-ignored",
        "JOBRUNNER_AUTH=off",
        "JOBRUNNER_AUTH=off is warned about, but every request still needs a key",
        (
            Edit(
                "api/auth.py",
                '        if auth_off:\n            g.client_name = "anonymous"\n',
                '        if False:\n            g.client_name = "anonymous"\n',
            ),
        ),
        (f"{AUTH}::test_auth_off_is_explicit_and_warned",),
    ),
    Mutation(
        "lab-delay-no-process-cap",
        "/lab/delay cannot starve the API",
        "/lab/delay caps each client, but not the delays one API process holds in all",
        (
            Edit(
                "api/routes/delay.py",
                "            if self._held.total() >= self.total:\n",
                "            if False:\n",
            ),
        ),
        (f"{AUTH}::test_lab_delay_cannot_take_every_api_thread",),
    ),
    Mutation(
        "lab-delay-no-client-cap",
        "/lab/delay cannot starve the API",
        "/lab/delay caps the delays of a process, but one client may take them all",
        (
            Edit(
                "api/routes/delay.py",
                "            if self._held[client] >= self.per_client:\n",
                "            if False:\n",
            ),
        ),
        (f"{AUTH}::test_lab_delay_cannot_take_every_api_thread",),
    ),
    # -- The lab's lessons, and the throughput behind them --------------------------------
    Mutation(
        "slow-refill-poll",
        "A full gevent worker refills at once",
        "a full gevent worker is not woken by acknowledgements, and looks for free slots "
        "every 0.5 s, not every 20 ms",
        (
            Edit(
                "services/broker/transport.py", "        self._slot_freed.set()\n", "        pass\n"
            ),
            Edit(
                "services/broker/transport.py",
                "FULL_POLL_SECONDS = 0.02\n",
                "FULL_POLL_SECONDS = 0.5\n",
            ),
        ),
        ("tests/integration/test_refill.py::test_a_full_gevent_worker_refills_without_waiting",),
    ),
    Mutation(
        "pools-run-three-at-once",
        "The lab's lesson: waits overlap on threads and gevent",
        "a worker holds at most 3 jobs at once, whatever its concurrency says",
        (
            Edit(
                "services/broker/qos.py",
                "class QoS(kombu_redis.QoS):\n",
                "class QoS(kombu_redis.QoS):\n"
                "    def can_consume(self) -> bool:\n"
                "        return len(self._delivered) - len(self._dirty) < 3\n"
                "\n"
                "    def can_consume_max_estimate(self) -> int:\n"
                "        return max(0, 3 - (len(self._delivered) - len(self._dirty)))\n"
                "\n",
            ),
        ),
        (
            "tests/integration/test_seed_lesson.py"
            "::test_sleep_jobs_overlap_on_threads_and_gevent[threads]",
            "tests/integration/test_seed_lesson.py"
            "::test_sleep_jobs_overlap_on_threads_and_gevent[gevent]",
        ),
    ),
    # -- A cut network is noticed in seconds ---------------------------------------------
    Mutation(
        "no-redis-timeouts",
        "A cut network is noticed in seconds",
        "Redis clients wait for a connection and a reply as long as TCP does",
        (
            Edit(
                "services/core/redis_clients.py",
                '"socket_timeout": timeout or settings.redis_socket_timeout,',
                '"socket_timeout": None,',
            ),
            Edit(
                "services/core/redis_clients.py",
                '"socket_connect_timeout": connect_timeout or settings.redis_connect_timeout,',
                '"socket_connect_timeout": None,',
            ),
            # The broker's connections too: a submission's message goes through kombu.
            Edit(
                "services/broker/celery_app.py",
                '"socket_timeout": settings.redis_socket_timeout,',
                '"socket_timeout": None,',
            ),
            Edit(
                "services/broker/celery_app.py",
                '"socket_connect_timeout": settings.redis_connect_timeout,',
                '"socket_connect_timeout": None,',
            ),
        ),
        (
            "tests/cluster/test_cluster.py"
            "::test_the_api_host_cut_from_redis_answers_503_and_loses_nothing",
        ),
    ),
    # -- A Redis failover (Sentinel) -----------------------------------------------------
    Mutation(
        "sentinel-pinned-to-first-master",
        "A Redis failover (Sentinel)",
        "clients ask the sentinels for the master once and keep it after a failover",
        (
            Edit(
                "services/core/redis_clients.py",
                "    return sentinels.master_for(\n"
                "        master, db=target.db, username=target.username, "
                "password=target.password,\n"
                "        **options, **pool,\n"
                "    )  # fmt: skip\n",
                "    host, port = sentinels.discover_master(master)\n"
                "    return redis.Redis(\n"
                "        host=host, port=port, db=target.db, username=target.username,\n"
                "        password=target.password, max_connections=max_connections, "
                "**options,\n"
                "    )  # fmt: skip\n",
            ),
        ),
        ("tests/faults/test_sentinel_failover.py::test_failover_under_load_loses_no_accepted_job",),
    ),
)


def by_id() -> dict[str, Mutation]:
    return {m.id: m for m in MUTATIONS}
