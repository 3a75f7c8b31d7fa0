"""The Celery messages that make workers run jobs, written in the jobs' own Redis transaction.

`send_task` costs a good deal of Python per message (assembling the task message, the
repr of its arguments, declare caches, kombu's retry wrappers) and a round trip of its
own: profiled, most of a `POST /jobs/batch` went there (docs/performance.md). Yet every
`run_job` message for one queue and time limit differs from the next only in the job id
and kombu's delivery tag. So Celery and kombu build one real message per (queue, time
limit) and process, published into a collecting channel (services/broker/transport.py)
instead of Redis, and each job gets a copy with its own id and a fresh delivery tag.

The copies are pushed by the same script that stores the jobs' records: a record and its
message reach Redis together or not at all, in one round trip, and the message goes
straight to the queue's list, as kombu's own `_put` would put it.

tests/integration/test_messages.py checks that a copy is what `send_task` itself would
have pushed, delivery tag aside, so a Celery or kombu upgrade that changes the message
format fails a test rather than the workers.

A message names the job's workload in its `kwargsrepr` header, which Celery shows monitors
(Flower, its logs) in place of the arguments: the worker reads the workload from the job's
record, yet a task list then says what each job runs. A template per workload too, then.
"""

from __future__ import annotations

import base64
import json
import re
import threading
from dataclasses import dataclass
from functools import cached_property

from celery import Celery

from services.broker.celery_app import RUN_JOB_TASK
from services.core.ids import new_uuid4

# The id the template is built with; no job has it (uuid4 ids have version nibble 4).
TEMPLATE_ID = "00000000-0000-0000-0000-000000000000"


# A job id as uuid4() writes it: spliced into JSON and a repr, nothing needs escaping.
_CANONICAL_UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
# Where the delivery tag goes while the template is cut into pieces.
_TAG_MARK = "\x00tag\x00"


@dataclass(frozen=True)
class MessageTemplate:
    """One message as kombu would push it, cut where the job id and delivery tag go."""

    key: str  # the Redis list of the queue
    payload: str  # the whole message, JSON, as LPUSHed, for TEMPLATE_ID
    body: str  # the task body, JSON, before kombu's base64
    encoded_body: str  # ... and after, as it appears in `payload`
    delivery_tag: str

    @cached_property
    def _body_pieces(self) -> list[str]:
        return self.body.split(TEMPLATE_ID)

    @cached_property
    def _payload_pieces(self) -> list[str]:
        # Pieces between the places where the id, the encoded body and the tag go.
        marked = self.payload.replace(self.encoded_body, "\x00body\x00")
        marked = marked.replace(self.delivery_tag, _TAG_MARK)
        return re.split("(\x00body\x00|\x00tag\x00|" + TEMPLATE_ID + ")", marked)

    def stamp(self, job_id: str) -> str:
        """The payload for `job_id`: its id everywhere the template's stood, its own
        delivery tag (kombu keys unacknowledged messages by it)."""
        if not _CANONICAL_UUID.fullmatch(job_id):
            raise ValueError(f"job ids are canonical UUIDs, not {job_id!r}")
        body = base64.b64encode(job_id.join(self._body_pieces).encode()).decode()
        fill = {TEMPLATE_ID: job_id, "\x00body\x00": body, _TAG_MARK: new_uuid4()}
        pieces = self._payload_pieces
        return "".join(fill[piece] if i % 2 else piece for i, piece in enumerate(pieces))


def kwargs_shown(workload: str, kwargs: dict[str, object] | None = None) -> str:
    """What monitors show as a run_job message's keyword arguments (its kwargsrepr): its
    own, and the workload of its job. Shown only, never read back."""
    return repr({**(kwargs or {}), "workload": workload})


def build_template(
    celery: Celery, queue: str, time_limit: int | None, workload: str | None = None
) -> MessageTemplate:
    """Let Celery and kombu publish one run_job message, and keep it instead of sending it."""
    options: dict[str, object] = {"time_limit": time_limit} if time_limit is not None else {}
    if workload is not None:
        options["kwargsrepr"] = kwargs_shown(workload)
    with celery.producer_or_acquire() as producer, producer.channel.collecting() as collected:
        celery.send_task(
            RUN_JOB_TASK, args=[TEMPLATE_ID], task_id=TEMPLATE_ID, queue=queue,
            producer=producer, retry=False, **options,
        )  # fmt: skip
    [(key, payload)] = collected
    message = json.loads(payload)
    properties = message["properties"]
    if properties.get("body_encoding") != "base64":
        raise RuntimeError(f"kombu encoded the body as {properties.get('body_encoding')!r}")
    encoded_body = message["body"]
    body = base64.b64decode(encoded_body).decode()
    tag = properties["delivery_tag"]
    if payload.count(tag) != 1 or payload.count(encoded_body) != 1 or TEMPLATE_ID not in body:
        raise RuntimeError("Celery's run_job message no longer has the expected shape")
    return MessageTemplate(key, payload, body, encoded_body, tag)


class MessageFactory:
    """Templates per (queue, time limit, workload), built on first use and kept for the
    process."""

    def __init__(self, celery: Celery) -> None:
        self.celery = celery
        self._templates: dict[tuple[str, int | None, str | None], MessageTemplate] = {}
        self._lock = threading.Lock()

    def message(
        self, job_id: str, queue: str, time_limit: int | None, workload: str | None = None
    ) -> tuple[str, str]:
        """(Redis list, payload) of the message that makes a worker run `job_id`, a job of
        `workload` (shown to monitors)."""
        which = (queue, time_limit, workload)
        template = self._templates.get(which)
        if template is None:
            with self._lock:
                template = self._templates.get(which)
                if template is None:
                    template = build_template(self.celery, queue, time_limit, workload)
                    self._templates[which] = template
        return template.key, template.stamp(job_id)
