"""How sizes are written for people, the same in the verdict, the CLI and the reports."""

from __future__ import annotations

MIB = 2**20


def format_mib(size: float | None) -> str:
    """Bytes as MiB: one decimal under 10 MiB, none above; '-' when unknown."""
    if not size:
        return "-"
    return f"{size / MIB:.1f}" if size < 10 * MIB else f"{size / MIB:.0f}"
