"""The scale sweep drawn: throughput against worker processes per pool."""

from __future__ import annotations

import io
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt


def render_scale(body: dict[str, Any], throughput: dict[str, dict[int, float]], fmt: str) -> bytes:
    figure, axes = plt.subplots(figsize=(7, 4.5))
    for pool, by_scale in throughput.items():
        scales = sorted(by_scale)
        axes.plot(scales, [by_scale[n] for n in scales], marker="o", label=pool)
    axes.set_xlabel("worker processes per pool")
    axes.set_ylabel("throughput (jobs/s)")
    axes.set_xticks(sorted({n for by in throughput.values() for n in by}))
    axes.set_ylim(bottom=0)
    axes.grid(alpha=0.3)
    axes.legend()
    params = ", ".join(f"{k}={v}" for k, v in body["params"].items())
    axes.set_title(f"{body['workload']}({params}) x{body['count']}: where more workers stop paying")
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format=fmt, dpi=110)
    plt.close(figure)
    return buffer.getvalue()
