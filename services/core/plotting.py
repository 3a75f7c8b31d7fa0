"""matplotlib, set up once for every chart jobrunner draws: the lab's comparison, the
CLI's scale sweep and the bench's summary. No display anywhere: files and bytes only."""

from __future__ import annotations

import io

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
from matplotlib.figure import Figure

DPI = 110

__all__ = ["DPI", "figure_bytes", "plt"]


def figure_bytes(figure: Figure, fmt: str) -> bytes:
    """The figure rendered as `fmt` ("svg", "png"), and closed: pyplot keeps every open
    figure alive, and a long-running API draws many."""
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format=fmt, dpi=DPI)
    plt.close(figure)
    return buffer.getvalue()
