"""The Celery application both sides share: the API sends with it, the worker consumes.

Only configuration lives here (no tasks), so importing it never drags worker code into the
API. JSON only: pickle is never accepted, so a message cannot smuggle code.
"""

from __future__ import annotations

from functools import lru_cache

from celery import Celery

from services.broker.transport import TRANSPORT_PATH, sentinel_broker, sentinel_options
from services.core.redis_clients import tls_options
from services.core.settings import Settings, get_settings

RUN_JOB_TASK = "jobrunner.run_job"
# Experiments run one at a time on a worker of their own (`python -m worker
# --experiments`), consuming this queue, so two experiments never measure each other.
RUN_EXPERIMENT_TASK = "jobrunner.run_experiment"
EXPERIMENT_QUEUE = "experiments"


def celery_config(settings: Settings) -> dict[str, object]:
    visibility = settings.job_visibility_timeout
    return {
        "broker_url": settings.redis_url,
        # kombu's Redis transport minus a redis-py client built per command (see there).
        "broker_transport": TRANSPORT_PATH,
        # A sentinel:// REDIS_URL: one sentinel's URL, the same transport on kombu's
        # Sentinel channel, and every sentinel among the transport options (see there).
        **sentinel_broker(settings),
        # Our job record in Redis is the result store (with its own TTL); Celery's result
        # backend would write a second copy of every result.
        "task_ignore_result": True,
        "task_serializer": "json",
        "result_serializer": "json",
        "accept_content": ["json"],
        "event_serializer": "json",  # for the remote-control replies GET /pools reads
        # At least once: acknowledge after the job ran, and give a job back to the queue
        # when the process running it dies.
        "task_acks_late": True,
        "task_reject_on_worker_lost": True,
        # With late acks a prefetched job is one another worker could have started, and
        # a killed worker holds it until the visibility timeout. Free slots still fill in
        # one round trip (services/broker/transport.py); a larger prefetch measured no faster.
        "worker_prefetch_multiplier": 1,
        "broker_transport_options": {
            # A message taken by a worker that vanished is delivered again after this.
            "visibility_timeout": visibility,
            **sentinel_options(settings),
            # kombu sweeps for such messages every interval * throttle seconds; with the
            # defaults (10 * 10) a short visibility timeout would still wait 100 s.
            "unacked_restore_interval": max(1, min(10, visibility // 4)),
            "unacked_restore_throttle": 1,
            # kombu's Redis channel keeps at most 10 connections by default; a gevent
            # worker acknowledging 100 jobs at once ran out ("Couldn't ack ...
            # MaxConnectionsError") and dropped its consumer. Connections open on demand.
            "max_connections": 1_000,
            # How soon a cut network is noticed (services/core/redis_clients.py has the
            # same for every other client): a consumer's connection whose peer vanished
            # otherwise waits for the kernel to give up on TCP (~27 s seen on the test
            # bed after the link came back). Above the 1 s BRPOP wait, or every idle poll
            # would time out.
            "socket_timeout": settings.redis_socket_timeout,
            "socket_connect_timeout": settings.redis_connect_timeout,
            "socket_keepalive": True,
            "health_check_interval": settings.redis_health_check_interval,
        },
        # rediss://: the same certificate checks as every other client.
        "broker_use_ssl": tls_options(settings.redis_url, settings) or None,
        "broker_connection_retry_on_startup": True,
        # The process's own logging setup (gunicorn's, the local runner's) stays as it is.
        "worker_hijack_root_logger": False,
        # An event per task state only with JOB_TASK_EVENTS=on, for Flower's task view: the
        # job record holds every timestamp, and each event costs a publish on the job's
        # path (docs/observability.md has the cost). Never a task-sent event: a job's
        # first message is a copy Celery never sends (services/broker/messages.py), and
        # the one it does build would carry its event into the copy's collecting channel.
        "worker_send_task_events": settings.job_task_events == "on",
        "task_send_sent_event": False,
    }


def make_celery(settings: Settings) -> Celery:
    app = Celery("jobrunner")
    app.conf.update(celery_config(settings))
    return app


@lru_cache(maxsize=1)
def get_celery() -> Celery:
    """The process-wide Celery app, configured from the environment."""
    return make_celery(get_settings())
