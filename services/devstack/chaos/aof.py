"""What was written to each job record, read back from Redis's append-only file.

The soak's Redis logs every write to its append-only file, `appendfsync always`, so a
write a client got an answer for is on disk, in order, before the answer left. A Lua
script's writes are logged as the commands it ran (wrapped in MULTI/EXEC when several),
so the file holds every state a job record was ever moved to, and by which attempt: the
claims (`state running`, `attempts N`), the retries and the outcomes. Counting them per
job is how the soak sees a second recorded outcome, which the record itself (one field,
overwritten) would hide.

Redis 7 keeps the file as a directory: a manifest, a base file (the data set when the
history began) and incremental files of commands since. A rewrite (BGREWRITEAOF)
replaces the history by a snapshot, so the soak turns automatic rewrites off; a history
that was rewritten anyway is reported as incomplete, never read as if it were whole.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from services.core import redis_keys

FINAL_STATES = frozenset({"succeeded", "failed", "cancelled"})
JOB_KEY_PREFIX = redis_keys.job("").encode()


@dataclass
class JobHistory:
    """Every write that set a job record's state, oldest first: (state, attempts written
    with it, or None), and the late writes refused by its fence."""

    created: int = 0
    states: list[tuple[str, int | None]] = field(default_factory=list)
    refused_writes: int = 0
    deleted: int = 0

    @property
    def outcomes(self) -> list[str]:
        """The final states it was moved to: one, for a job that ended once."""
        return [state for state, _ in self.states if state in FINAL_STATES]

    @property
    def claims(self) -> list[int]:
        """The attempt number each claim (a move to running) wrote."""
        return [n for state, n in self.states if state == "running" and n is not None]

    @property
    def claims_after_outcome(self) -> int:
        """Claims written after the first outcome: a job that ran again once ended."""
        ended = next((i for i, (s, _) in enumerate(self.states) if s in FINAL_STATES), None)
        if ended is None:
            return 0
        return sum(1 for s, n in self.states[ended + 1 :] if s == "running" and n is not None)


@dataclass
class AofHistory:
    """The histories of every job record in an append-only file; `incomplete` says why
    they may not be whole (None when they are)."""

    jobs: dict[str, JobHistory]
    incomplete: str | None
    commands: int
    size_bytes: int


def commands(data: bytes) -> Iterator[list[bytes]]:
    """The commands of RESP `data` that took effect: those of a MULTI only once its EXEC
    is read; an unfinished command or transaction at the end (Redis killed mid-write) is
    dropped, as Redis drops it when it loads the file."""
    pos, end = 0, len(data)
    pending: list[list[bytes]] | None = None
    while pos < end:
        if data[pos : pos + 1] != b"*":
            raise ValueError(f"not a RESP array at byte {pos}")
        line_end = data.find(b"\r\n", pos)
        if line_end < 0:
            return
        count = int(data[pos + 1 : line_end])
        pos = line_end + 2
        argv: list[bytes] = []
        for _ in range(count):
            line_end = data.find(b"\r\n", pos)
            if line_end < 0 or data[pos : pos + 1] != b"$":
                return  # cut short
            size = int(data[pos + 1 : line_end])
            start = line_end + 2
            if start + size + 2 > end:
                return
            argv.append(data[start : start + size])
            pos = start + size + 2
        name = argv[0].upper()
        if name == b"MULTI":
            pending = []
        elif name == b"EXEC":
            yield from pending or []
            pending = None
        elif pending is not None:
            pending.append(argv)
        else:
            yield argv


def history_files(aof_dir: Path) -> tuple[list[Path], str | None]:
    """The incremental files of `aof_dir`, in order, and why the history they hold may
    be incomplete (a rewrite replaced the start of it), or None."""
    manifest = next(aof_dir.glob("*.manifest"), None)
    if manifest is None:
        return [], f"no append-only manifest in {aof_dir}"
    incremental: list[tuple[int, Path]] = []
    problem = None
    for line in manifest.read_text().splitlines():
        words = line.split()
        entry = dict(zip(words[::2], words[1::2], strict=False))
        if "file" not in entry:
            continue
        kind, seq = entry.get("type"), int(entry.get("seq", "0"))
        if kind == "b" and seq != 1:
            problem = f"the append-only file was rewritten (base #{seq}): history lost"
        elif kind == "h":
            problem = "the append-only file was being rewritten: history incomplete"
        elif kind == "i":
            incremental.append((seq, aof_dir / entry["file"]))
    return [path for _, path in sorted(incremental)], problem


def read_history(aof_dir: Path) -> AofHistory:
    """The history of every job record written to the append-only files in `aof_dir`."""
    files, incomplete = history_files(aof_dir)
    jobs: dict[str, JobHistory] = {}
    count = size = 0
    for path in files:
        data = path.read_bytes()
        size += len(data)
        for argv in commands(data):
            count += 1
            if len(argv) > 1 and argv[1].startswith(JOB_KEY_PREFIX):
                record_write(jobs, argv)
    return AofHistory(jobs, incomplete, count, size)


def record_write(jobs: dict[str, JobHistory], argv: list[bytes]) -> None:
    """Note one command on a job record in its history."""
    name = argv[0].upper()
    job_id = argv[1][len(JOB_KEY_PREFIX) :].decode()
    if name in (b"HSET", b"HMSET"):
        fields = dict(zip(argv[2::2], argv[3::2], strict=False))
        history = jobs.setdefault(job_id, JobHistory())
        if b"spec" in fields:
            history.created += 1
        if b"state" in fields:
            attempts = fields.get(b"attempts")
            history.states.append(
                (fields[b"state"].decode(), int(attempts) if attempts is not None else None)
            )
    elif name == b"HINCRBY" and len(argv) == 4 and argv[2] == b"refused_writes":
        jobs.setdefault(job_id, JobHistory()).refused_writes += int(argv[3])
    elif name in (b"DEL", b"UNLINK"):
        for key in argv[1:]:
            if key.startswith(JOB_KEY_PREFIX):
                jobs.setdefault(key[len(JOB_KEY_PREFIX) :].decode(), JobHistory()).deleted += 1
