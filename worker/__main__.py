"""`python -m worker --pool gevent`: start one worker process for a pool;
`python -m worker --experiments`: the worker that runs the lab's experiments.

The compose file and the launcher (services/devstack/launcher.py) start workers with this
command.
"""

from __future__ import annotations

import argparse
import os

from services.catalog.pools import POOLS
from services.catalog.registry import catalog_or_exit
from services.core.settings import load_settings
from worker.profiles import EXPERIMENTS, worker_command


def main() -> None:
    # A bad variable stops it here in one line per problem, not in a traceback.
    settings = load_settings()
    # Likewise a workload module that cannot be imported, or two workloads of one name.
    catalog_or_exit()
    parser = argparse.ArgumentParser(prog="python -m worker", description=__doc__)
    role = parser.add_mutually_exclusive_group(required=True)
    role.add_argument("--pool", choices=sorted(POOLS), help="the pool whose queue it serves")
    role.add_argument(
        "--experiments", action="store_true", help="run the lab's experiments, one at a time"
    )
    parser.add_argument("--concurrency", type=int, default=None)
    parser.add_argument("--name", default=None, help="Celery node name, e.g. gevent-2@%%h")
    parser.add_argument("--loglevel", default=settings.worker_loglevel)
    args = parser.parse_args()
    pool = EXPERIMENTS if args.experiments else args.pool
    # --concurrency, else WORKER_CONCURRENCY_<POOL>, else the pool's own default.
    concurrency = args.concurrency or settings.worker_concurrency(pool)
    argv = worker_command(pool, concurrency, args.name, args.loglevel, settings)
    # SIGTERM (compose stop, the local runner, Kubernetes) starts Celery's soft shutdown:
    # running jobs get JOB_SHUTDOWN_GRACE seconds to finish, then the rest go back to
    # the queue. Celery's plain warm shutdown would wait for them without any limit.
    os.environ.setdefault("REMAP_SIGTERM", "SIGQUIT")
    # exec, so signals from compose or the local runner reach Celery itself.
    os.execv(argv[0], argv)


if __name__ == "__main__":
    main()
