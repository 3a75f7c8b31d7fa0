"""`python -m services.devstack.chaos --duration 900 --seed 7` (`make chaos`)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from rich.console import Console

from services.devstack.chaos.engine import SoakConfig, run_soak
from services.devstack.chaos.report import print_report
from services.devstack.launcher import LaunchError
from services.devstack.netns import unavailable_reason


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m services.devstack.chaos",
        description="A chaos soak: jobs of every pool at a steady rate while workers, a "
        "prefork pool process, the API, Redis (and with --cluster a host's link) are "
        "killed at random; then the invariants. Exit status 1 if one fails.",
    )
    parser.add_argument("--duration", type=float, default=300.0, help="seconds (default 300)")
    parser.add_argument("--seed", type=int, default=1, help="the faults' and jobs' seed")
    parser.add_argument("--rate", type=float, default=10.0, help="jobs per second (default 10)")
    parser.add_argument(
        "--cluster", action="store_true", help="on the multi-host test bed (Linux, root)"
    )
    parser.add_argument("--workers", type=int, default=None, help="workers per pool (per host)")
    parser.add_argument("--folder", type=Path, default=None, help="logs and Redis's data")
    args = parser.parse_args(argv)
    if args.cluster and (reason := unavailable_reason()):
        parser.error(f"--cluster needs the test bed: {reason}")
    # A report piped to a file (the docs' recorded run) keeps its tables' width.
    console = Console() if sys.stdout.isatty() else Console(width=160)
    config = SoakConfig(
        duration=args.duration, seed=args.seed, rate=args.rate, cluster=args.cluster,
        workers_per_pool=args.workers, folder=args.folder,
    )  # fmt: skip
    try:
        run = run_soak(config, progress=lambda line: console.print(f"[dim]{line}[/dim]"))
    except LaunchError as exc:
        console.print(f"[red]the stack did not start:[/red] {exc}")
        return 2
    print_report(run, console)
    return 0 if run.ok else 1


if __name__ == "__main__":
    sys.exit(main())
