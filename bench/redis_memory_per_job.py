"""Bytes of Redis memory per queued job: its record, its index entries and its message,
for sizing Redis (docs/operations.md, "Sizing Redis").

    redis-server --port 6399 --save "" --daemonize yes
    .venv/bin/python bench/redis_memory_per_job.py --port 6399
    redis-cli -p 6399 shutdown nosave

It flushes that Redis first: point it at a Redis of its own.
"""

from __future__ import annotations

import argparse

import redis

from services.broker.celery_app import make_celery
from services.core.settings import Settings
from services.jobs.store import JobStore
from services.jobs.submission import JobSpec, new_record, store_and_send


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--jobs", type=int, default=10_000)
    args = parser.parse_args()
    url = f"redis://127.0.0.1:{args.port}/0"
    client = redis.Redis.from_url(url, decode_responses=True)
    client.flushall()
    store = JobStore(client, 86_400)
    celery = make_celery(Settings(redis_url=url))
    before = int(client.info("memory")["used_memory"])
    for start in range(0, args.jobs, 1_000):
        batch = min(1_000, args.jobs - start)
        spec = JobSpec("sleep", {"seconds": 0.1}, pool="threads")
        store_and_send(store, celery, [new_record(spec) for _ in range(batch)])
    after = int(client.info("memory")["used_memory"])
    print(f"{(after - before) / args.jobs:.0f} bytes of Redis memory per queued job "
          f"({args.jobs} sleep jobs: record, index entries, message)")  # fmt: skip


if __name__ == "__main__":
    main()
