"""Three workloads on text, one of each kind a pool choice turns on.

- `word_count`: pure Python CPU work; it holds the GIL, so only processes (prefork) run
  several at once.
- `compress`: CPU work in C (zlib) that releases the GIL, so threads run several at once
  too, without a process each.
- `slow_echo`: an `async def` that waits without blocking, as a call to a slow service
  would.

Each is a plain function: call it, test it (tests/), import it anywhere. `@workload`
only records it in jobrunner's catalog when a jobrunner process imports this module,
through the entry point in pyproject.toml or JOBRUNNER_WORKLOADS=textjobs.jobs. The
parameters' types and Field bounds are what the API checks before a job is queued: a
bad value is a 422 naming the field, and a job never starts with it.
"""

from __future__ import annotations

import asyncio
import re
import time
import zlib
from collections import Counter
from typing import Annotated, Any

from pydantic import Field

from jobrunner import workload

# A word: letters, with inner apostrophes ("don't"); digits and underscores split words.
WORD = re.compile(r"[^\W\d_]+(?:'[^\W\d_]+)*")

# JOB_MAX_BODY_BYTES (64 KiB by default) bounds a request's body already; these bound
# what one job may make of it in memory: at most 10 million characters to compress.
MAX_TEXT_CHARS = 60_000
MAX_COMPRESS_CHARS = 10_000
MAX_COPIES = 1_000


# kind="cpu": jobs that name no pool go to prefork, which can also stop one at its
# time_limit (it kills the process running it).
@workload(kind="cpu", time_limit=30)
def word_count(
    text: Annotated[
        str, Field(min_length=1, max_length=MAX_TEXT_CHARS, description="The text to count.")
    ],
    top: Annotated[
        int, Field(ge=1, le=100, description="How many of the most common words to return.")
    ] = 10,
) -> dict[str, Any]:
    """Counts the words of a text: pure Python, which holds the GIL while it runs.

    Case is ignored ("The" and "the" are one word); the most common come first, ties in
    the order they first appear.
    """
    words = [word.casefold() for word in WORD.findall(text)]
    counts = Counter(words)
    return {"words": len(words), "distinct": len(counts), "top": dict(counts.most_common(top))}


# No time_limit: a thread cannot be killed, so the threads pool cannot enforce one (jobrunner
# refuses the pair at start). The bounds on text and copies keep one job short instead.
@workload(kind="cpu", default_pool="threads")
def compress(
    text: Annotated[
        str,
        Field(min_length=1, max_length=MAX_COMPRESS_CHARS, description="The text to compress."),
    ],
    level: Annotated[
        int, Field(ge=0, le=9, description="zlib's level: 0 stores, 9 squeezes hardest.")
    ] = 6,
    copies: Annotated[
        int,
        Field(ge=1, le=MAX_COPIES, description="Compress this many copies of the text, joined."),
    ] = 1,
) -> dict[str, Any]:
    """Compresses a text with zlib: CPU work in C that releases the GIL, so threads scale.

    Returns the sizes before and after, their ratio and a CRC-32 of the input (the same
    text gives the same CRC on every pool).
    """
    # zlib lets go of the GIL while it deflates, so the threads of one process compress
    # on every core at once: the threads pool gets the processes' speed without their
    # memory (default_pool above says so to jobs that name no pool).
    data = text.encode() * copies
    packed = zlib.compress(data, level)
    return {
        "bytes_in": len(data),
        "bytes_out": len(packed),
        "ratio": round(len(packed) / len(data), 4),
        "crc32": zlib.crc32(data),
    }


# A real version would call another service; a dropped connection or a timeout is then
# worth another attempt (retry_on), bad input never is. No time_limit: one would send its
# jobs to prefork (the pool that can kill a job), one job at a time per process.
@workload(max_retries=2, retry_on=(ConnectionError, TimeoutError))
async def slow_echo(
    message: Annotated[str, Field(max_length=1_000, description="What to answer with.")],
    delay_ms: Annotated[
        int, Field(ge=0, le=10_000, description="How long to wait first, in milliseconds.")
    ] = 100,
) -> dict[str, Any]:
    """Answers with its message after a wait that blocks nothing (asyncio.sleep).

    An async workload runs on each worker thread's own event loop, so jobs that name no
    pool go to threads; gevent's greenlets share one thread and would run it one at a time.
    """
    started = time.perf_counter()
    await asyncio.sleep(delay_ms / 1000)
    return {"message": message, "waited_ms": round((time.perf_counter() - started) * 1000, 1)}
