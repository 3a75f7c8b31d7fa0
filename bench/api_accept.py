"""The API's own time for one `POST /jobs`, in-process: the WSGI app called directly (no
HTTP, no gunicorn), against a private Redis, with the per-key rate limit off and on in
turn. What the API spends accepting a job, and what counting it against its key costs.

    .venv/bin/python -m bench.api_accept               # 3 alternating pairs of 2,000 jobs
    .venv/bin/python -m bench.api_accept --reps 5 --jobs 5000

Each setting runs in a process of its own (the settings are read once a process), the
two in turn, which goes first alternating from one repetition to the next; medians and
every repetition are printed. The times are wall time in the app's process, Redis's part
of each call included. Run it
in a checkout before and after a change to the accepting path.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from werkzeug.test import EnvironBuilder

from services.core.api_keys import key_digest
from services.devstack.redis_server import RedisServer

KEY = "bench-accept-key"
# A limit no run reaches: every request is counted, none refused.
LIMIT_ON = 1_000_000_000
JOB = {"workload": "noop", "params": {"value": 1}, "pool": "threads"}


def one_setting(redis_url: str, limit: int, jobs: int) -> float:
    """Milliseconds a POST /jobs takes in this process's app, after a warm-up."""
    os.environ.update({
        "REDIS_URL": redis_url, "API_RATE_LIMIT": str(limit),
        "JOBRUNNER_API_KEYS": f"bench:submit:{key_digest(KEY).hex()}",
    })  # fmt: skip
    from api.app import create_app  # after the environment: it reads the settings

    app = create_app()
    body = json.dumps(JOB).encode()
    headers = {"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"}
    builder = EnvironBuilder(path="/jobs", method="POST", data=body, headers=headers)
    template = builder.get_environ()
    builder.close()

    def submit() -> None:
        statuses: list[str] = []
        wsgi = {**template, "wsgi.input": io.BytesIO(body)}
        answer = app.wsgi_app(wsgi, lambda status, *_: statuses.append(status))
        b"".join(answer)
        answer.close()
        if not statuses[0].startswith("202"):
            raise RuntimeError(f"POST /jobs answered {statuses[0]}")

    for _ in range(min(300, jobs)):
        submit()
    started = time.perf_counter()
    for _ in range(jobs):
        submit()
    return (time.perf_counter() - started) / jobs * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--jobs", type=int, default=2_000)
    parser.add_argument("--one", nargs=2, metavar=("REDIS_URL", "LIMIT"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print(one_setting(args.one[0], int(args.one[1]), args.jobs))
        return
    folder = Path(tempfile.mkdtemp(prefix="jobrunner-api-accept-"))
    server = RedisServer(folder).start()
    settings = {"rate limit off": 0, "rate limit on": LIMIT_ON}
    times: dict[str, list[float]] = {name: [] for name in settings}
    try:
        for rep in range(args.reps):
            order = list(settings) if rep % 2 == 0 else list(reversed(settings))
            for name in order:
                argv = [sys.executable, "-m", "bench.api_accept", "--jobs", str(args.jobs),
                        "--one", server.url, str(settings[name])]  # fmt: skip
                out = subprocess.run(argv, capture_output=True, text=True, check=True).stdout
                times[name].append(float(out.split()[-1]))
                print(f"rep {rep + 1} {name}: {times[name][-1]:.3f} ms a POST /jobs", flush=True)
    finally:
        server.stop()
        shutil.rmtree(folder, ignore_errors=True)
    for name, values in times.items():
        print(f"{name}: median {statistics.median(values):.3f} ms a POST /jobs "
              f"({', '.join(f'{v:.3f}' for v in values)})")  # fmt: skip


if __name__ == "__main__":
    main()
