"""The workloads are plain functions: called here directly, with no server, Redis or
worker. `@workload` returned each function unchanged; what it added (the catalog entry)
only matters to a jobrunner process.

Run from this folder: `python -m pytest -q` (the interpreter that has jobrunner).
"""

from __future__ import annotations

import asyncio
import time
import zlib

from textjobs.jobs import compress, slow_echo, word_count

TEXT = "To be, or not to be, that is the question: whether 'tis nobler in the mind to suffer"


def test_word_count_ignores_case_and_punctuation() -> None:
    counted = word_count("The cat and the hat. THE END, don't stop")
    assert counted["words"] == 9
    assert counted["distinct"] == 7  # the, cat, and, hat, end, don't, stop
    assert next(iter(counted["top"].items())) == ("the", 3)
    assert "don't" in counted["top"]


def test_word_count_returns_the_most_common_first() -> None:
    counted = word_count(TEXT, top=3)
    assert counted["top"] == {"to": 3, "be": 2, "the": 2}


def test_compress_reports_sizes_of_what_it_compressed() -> None:
    once = compress(TEXT)
    assert once["bytes_in"] == len(TEXT.encode())
    assert once["crc32"] == zlib.crc32(TEXT.encode())
    many = compress(TEXT, copies=100)
    assert many["bytes_in"] == 100 * once["bytes_in"]
    # Repeated text is what deflate is for: a hundred copies cost little more than one.
    assert many["bytes_out"] < 2 * once["bytes_out"]
    assert many["ratio"] < once["ratio"]


def test_compress_level_zero_only_stores() -> None:
    stored = compress(TEXT, level=0, copies=10)
    squeezed = compress(TEXT, level=9, copies=10)
    assert stored["bytes_out"] > stored["bytes_in"]  # a stored block adds its headers
    assert squeezed["bytes_out"] < stored["bytes_out"]
    assert stored["crc32"] == squeezed["crc32"]


def test_slow_echo_is_a_coroutine_function_to_await() -> None:
    answer = asyncio.run(slow_echo("hello", delay_ms=10))
    assert answer["message"] == "hello"
    assert answer["waited_ms"] > 0


def test_slow_echoes_wait_together_on_one_loop() -> None:
    """Five waits on one event loop overlap: together they take about as long as one,
    not five times as long (a generous ratio, not a time)."""

    async def five() -> list[dict]:
        return await asyncio.gather(*(slow_echo(str(n), delay_ms=200) for n in range(5)))

    started = time.perf_counter()
    answers = asyncio.run(five())
    took_ms = (time.perf_counter() - started) * 1000
    assert [a["message"] for a in answers] == ["0", "1", "2", "3", "4"]
    assert took_ms < 3 * max(a["waited_ms"] for a in answers)
