"""Dramatiq's side of the bench: `actor.send()` per job, or a `group(...).run()` (Dramatiq's
way to send many: it still enqueues each message with its own round trip); results
through the backend's `get_result`."""

from __future__ import annotations

from typing import Any

import dramatiq
import redis
from dramatiq.results import ResultMissing

from bench.peers.dramatiq import tasks
from bench.peers.driver import MISSING, serve


class DramatiqProducer:
    poll_command = "exists"
    bulk_path = "group(...).run()"

    def __init__(self, url: str) -> None:
        self.backend = tasks.backend

    def send(
        self, workload: str, args: list[Any], bulk: bool, options: dict[str, Any]
    ) -> list[Any]:
        actor = getattr(tasks, workload)
        if bulk:
            messages = [actor.message(*a) for a in args]
            dramatiq.group(messages).run()
            return messages
        return [actor.send(*a) for a in args]

    def result_keys(self, handles: list[Any]) -> list[str] | None:
        return [self.backend.build_message_key(m) for m in handles]

    def count_done(self, client: redis.Redis, handles: list[Any]) -> int:
        raise NotImplementedError  # result_keys is used

    def results(self, handles: list[Any]) -> list[Any]:
        values = []
        for message in handles:
            try:
                values.append(self.backend.get_result(message))
            except ResultMissing:
                values.append(MISSING)
        return values


if __name__ == "__main__":
    serve(DramatiqProducer, {"library": "dramatiq", "version": dramatiq.__version__})
