"""The functions RQ's workers run: plain functions, found by their import path."""

from __future__ import annotations

import time


def noop(value: object) -> object:
    return value


def sleep(seconds: float) -> float:
    time.sleep(seconds)
    return seconds
