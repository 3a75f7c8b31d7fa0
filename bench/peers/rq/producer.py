"""RQ's side of the bench: `queue.enqueue(...)` per job, or `queue.enqueue_many(...)`
(RQ's bulk path: one pipeline); results through `job.return_value()`."""

from __future__ import annotations

from importlib.metadata import version
from typing import Any

import redis
from rq import Queue
from rq.job import Job
from rq.results import Result

from bench.peers.driver import MISSING, serve
from bench.peers.rq import tasks


class RqProducer:
    poll_command = "exists"
    bulk_path = "queue.enqueue_many(...)"

    def __init__(self, url: str) -> None:
        self.connection = redis.Redis.from_url(url)
        self.queue = Queue(connection=self.connection)

    def send(
        self, workload: str, args: list[Any], bulk: bool, options: dict[str, Any]
    ) -> list[Any]:
        function = getattr(tasks, workload)
        if bulk:
            jobs = [Queue.prepare_data(function, tuple(a)) for a in args]
            return self.queue.enqueue_many(jobs)
        return [self.queue.enqueue(function, *a) for a in args]

    def result_keys(self, handles: list[Any]) -> list[str] | None:
        return [Result.get_key(job.id) for job in handles]

    def count_done(self, client: redis.Redis, handles: list[Any]) -> int:
        raise NotImplementedError

    def results(self, handles: list[Any]) -> list[Any]:
        jobs = Job.fetch_many([job.id for job in handles], connection=self.connection)
        values = []
        for job in jobs:
            value = None if job is None else job.return_value()
            values.append(MISSING if value is None else value)
        return values


if __name__ == "__main__":
    serve(RqProducer, {"library": "rq", "version": version("rq")})
