"""`python -m worker --pool gevent`: start one worker process for a pool.

The compose file and the local runner both start workers with this command.
"""

from __future__ import annotations

import argparse
import os

from services.pools import POOLS
from services.settings import get_settings
from worker.profiles import worker_command


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m worker", description=__doc__)
    parser.add_argument("--pool", required=True, choices=[*sorted(POOLS), "lab"])
    parser.add_argument("--concurrency", type=int, default=None)
    parser.add_argument("--name", default=None, help="Celery node name, e.g. gevent-2@%%h")
    parser.add_argument("--loglevel", default=get_settings().worker_loglevel)
    args = parser.parse_args()
    argv = worker_command(args.pool, args.concurrency, args.name, args.loglevel)
    # SIGTERM (compose stop, the local runner, Kubernetes) starts Celery's soft shutdown:
    # running jobs get JOB_SHUTDOWN_GRACE seconds to finish, then the rest go back to
    # the queue. Celery's plain warm shutdown would wait for them without any limit.
    os.environ.setdefault("REMAP_SIGTERM", "SIGQUIT")
    # exec, so signals from compose or the local runner reach Celery itself.
    os.execv(argv[0], argv)


if __name__ == "__main__":
    main()
