"""Stock Celery's side of the bench: `apply_async` per job, or `apply_async` on one producer
inside kombu's `Producer.batch()` (the quickest bulk path stock Celery offers through
public APIs; bench/harness.py, `send_stock`, says how it was chosen); results through a
`ResultSet`'s `join_native` (the Redis backend's MGET)."""

from __future__ import annotations

from typing import Any

import celery
import redis
from celery.result import AsyncResult, ResultSet

from bench import stock_celery
from bench.peers.driver import MISSING, serve

# As many apply_async calls in one pipeline as POST /jobs/batch takes jobs in a request.
BULK = 1_000
TASKS = {"noop": "stock.noop", "sleep": "stock.sleep"}


class CeleryProducer:
    poll_command = "exists"
    bulk_path = "apply_async in Producer.batch()"

    def __init__(self, url: str) -> None:
        self.app = stock_celery.app

    def send(
        self, workload: str, args: list[Any], bulk: bool, options: dict[str, Any]
    ) -> list[Any]:
        task = self.app.tasks[TASKS[workload]]
        if not bulk:
            return [task.apply_async(args=a).id for a in args]
        ids: list[str] = []
        for start in range(0, len(args), BULK):
            with self.app.producer_or_acquire() as producer, producer.batch(max_size=BULK):
                chunk = args[start : start + BULK]
                ids += [task.apply_async(args=a, producer=producer).id for a in chunk]
        return ids

    def result_keys(self, handles: list[Any]) -> list[str] | None:
        return [self.app.backend.get_key_for_task(i).decode() for i in handles]

    def count_done(self, client: redis.Redis, handles: list[Any]) -> int:
        raise NotImplementedError

    def results(self, handles: list[Any]) -> list[Any]:
        results = ResultSet([AsyncResult(i, app=self.app) for i in handles], app=self.app)
        values = results.join_native(timeout=120, propagate=False)
        states = [r.state for r in results.results]
        return [v if s == "SUCCESS" else MISSING for v, s in zip(values, states, strict=True)]


if __name__ == "__main__":
    serve(CeleryProducer, {"library": "celery", "version": celery.__version__})
