"""The whole table: jobrunner against stock Celery and Flower (issue 4), and beside Huey,
Dramatiq, Taskiq, arq and RQ (issue 13), side by side, one run.

One private redis-server serves jobrunner and issue 4's stock Celery. For every figure the
stock run and the jobrunner run alternate (stock first on even repetitions, jobrunner
first on odd ones), so drift on this shared machine hits both; the table shows medians and
jobrunner / stock. The peers' steps (bench/peers/) give every library its own Redis and
its own virtual environment, and rotate the systems' order every repetition.

    .venv/bin/python -m bench.side_by_side            # full run
    .venv/bin/python -m bench.side_by_side --quick    # fewer jobs and repetitions
    .venv/bin/python -m bench.side_by_side --only peers,scale --peers huey,rq
"""

from __future__ import annotations

import argparse
import os
import platform
import signal
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import celery
import redis

from bench.figures_http import bench_http_post, bench_latency, bench_listing
from bench.figures_queue import bench_batch, bench_cpu, bench_pools, bench_sleep
from bench.figures_rtt import bench_rtt
from bench.harness import Bench, BenchStack
from bench.peers import steps as peer_steps
from bench.report import Row, chart, table

# Each run writes its table here; bench/RESULTS.md is the curated record (tables with
# their commands, and what they mean), updated by hand from these.
RESULTS = Path(__file__).resolve().parent / "latest-run.md"


STEPS: dict[str, Callable[[Bench], None]] = {
    "sleep": bench_sleep,
    "pools": bench_pools,
    "batch": bench_batch,
    "http": bench_http_post,
    "latency": bench_latency,
    "cpu": bench_cpu,
    "listing": bench_listing,
    "rtt": bench_rtt,
    # Issue 13: the peers' figures, jobrunner's scale curve, and where its workers' CPU
    # goes (bench/peers/steps.py).
    **peer_steps.STEPS,
}


# -- report ------------------------------------------------------------------------------------


def machine(url: str) -> str:
    server = redis.Redis.from_url(url).info("server")["redis_version"]
    return (
        f"{os.cpu_count()} cores ({platform.machine()}), Python {platform.python_version()}, "
        f"Redis {server}, Celery {celery.__version__}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.side_by_side", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="fewer jobs and repetitions")
    parser.add_argument("--only", default="", help=f"comma separated, of: {','.join(STEPS)}")
    parser.add_argument("--results", type=Path, default=RESULTS, help="markdown table goes here")
    parser.add_argument(
        "--peers", default="", help="comma separated peers for the peers' steps (default: all)"
    )
    args = parser.parse_args()
    # `kill` stops the bench as Ctrl-C does, each step's `finally` stopping what it
    # started. Killed outright, the peers' workers' own children (dramatiq's worker
    # processes) outlived it: only the processes the bench starts die with it.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(128 + signal.SIGTERM))
    peer_steps.choose(args.peers)
    workdir = Path(tempfile.mkdtemp(prefix="jobrunner-bench-"))
    # No per-key rate limit: the bench measures the API, not the limiter's refusals.
    stack = BenchStack(workdir)
    b = Bench(args.quick, workdir, stack)
    started, load = time.monotonic(), os.getloadavg()[0]
    try:
        # Redis as compose runs it (append-only, fsync every second), not as the tests
        # run it (fsync always, so a kill -9 of Redis loses nothing they check).
        stack.start_redis(fsync="everysec")
        # bench.stock_celery reads its broker URL when first imported, here and in every
        # process the bench starts.
        os.environ["BENCH_REDIS_URL"] = stack.overrides["BENCH_REDIS_URL"] = b.url
        stack.start_api(host="127.0.0.1", port=stack.api_port)
        stack.wait_api_ready()
        about = machine(b.url)
        print(about, f"load average {load:.2f}", f"logs in {workdir}")
        for name in [s for s in args.only.split(",") if s] or list(STEPS):
            print(f"== {name}")
            try:
                STEPS[name](b)
            except Exception as exc:  # one broken figure must not lose the others
                print(f"  {name} failed: {exc!r}; logs in {workdir}")
                b.rows.append(Row(name, "-", "-", note=f"not measured: {type(exc).__name__}"))
    finally:
        stack.stop()
    command = ".venv/bin/python -m bench.side_by_side" + (" --quick" if args.quick else "")
    command += f" --only {args.only}" if args.only else ""
    command += f" --peers {args.peers}" if args.peers else ""
    report = table(b.rows)
    print(report)
    minutes = (time.monotonic() - started) / 60
    drawn = chart(b.rows, args.results.with_suffix(".png"), f"{command}\n{about}")
    picture = f"\n![jobrunner / stock against each target]({drawn.name})\n" if drawn else ""
    args.results.write_text(
        f"# Side-by-side benchmark\n\nCommand: `{command}` ({minutes:.1f} min). "
        f"Machine: {about}. Load average (1 min) at start: {load:.2f}, at the end: "
        f"{os.getloadavg()[0]:.2f}; the 2 cores are "
        "shared with other sessions running tests, so single runs move by 10-30 %: the "
        "table shows medians of alternating repetitions.\n\n"
        + report
        + "\n"
        + picture
        + "".join(f"\n{section}\n" for section in peer_steps.SESSION.sections)
    )
    print(f"table: {args.results}" + (f", chart: {drawn}" if drawn else ""))
    if peer_steps.SESSION.drawn:
        print(f"scale curve: {peer_steps.SESSION.drawn}")


if __name__ == "__main__":
    main()
