"""gunicorn hooks for the API processes (`python -m api` passes this as its --config)."""

from __future__ import annotations

import ctypes
import gc
import os
import shutil
import signal
import sys
import tempfile
from typing import Any

# Seconds a kept-alive connection may idle before the API closes it (gunicorn's default
# is 2). A client that reuses a connection in the instant the server closes it loses its
# request ("Remote end closed connection without response"), so the server must outlast
# every client's and proxy's idle timeout: our client lets go after 15 s
# (services/client/session.py), nginx and most load balancers after 60. An idle
# connection costs gthread a file descriptor and a poller entry, not a thread.
# GUNICORN_CMD_ARGS="--keep-alive N" overrides it.
keepalive = 75

# prometheus_client's multiprocess mode: each gunicorn worker writes its metrics to files
# in this folder, and a scrape answered by any of them sums them all (api/metrics.py). Set
# here, in the master, before any worker starts and imports prometheus_client, which reads
# it on import. A folder of this master's own, unless the operator chose one.
MULTIPROC_VARIABLE = "PROMETHEUS_MULTIPROC_DIR"
_own_folder: str | None = None


def on_starting(server: Any) -> None:
    global _own_folder
    chosen = os.environ.get(MULTIPROC_VARIABLE)
    if chosen:
        # Files of an earlier run would be added to this one's counts.
        os.makedirs(chosen, exist_ok=True)
        for name in os.listdir(chosen):
            if name.endswith(".db"):
                os.remove(os.path.join(chosen, name))
        return
    remove_folders_of_dead_masters()
    _own_folder = tempfile.mkdtemp(prefix=f"{FOLDER_PREFIX}{os.getpid()}-")
    os.environ[MULTIPROC_VARIABLE] = _own_folder


FOLDER_PREFIX = "jobrunner-api-metrics-"


def remove_folders_of_dead_masters() -> None:
    """A master killed outright (kill -9, OOM) never runs on_exit, so its folder stays:
    the next master removes those whose master (the pid in the name) is gone."""
    temp = tempfile.gettempdir()
    for name in os.listdir(temp):
        owner = name.removeprefix(FOLDER_PREFIX).split("-")[0]
        if not (name.startswith(FOLDER_PREFIX) and owner.isdigit()):
            continue
        try:
            os.kill(int(owner), 0)
        except ProcessLookupError:
            shutil.rmtree(os.path.join(temp, name), ignore_errors=True)
        except PermissionError:
            pass  # alive, another user's


# prctl(2) option: the signal the kernel sends a process when its parent dies.
PR_SET_PDEATHSIG = 1


def post_fork(server: Any, worker: Any) -> None:
    # A worker dies with its master, as prefork's pool processes die with theirs. Else a
    # master killed outright (OOM, kill -9) leaves its workers serving their keep-alive
    # clients for the whole graceful timeout, holding the port the restarted API must
    # bind (found by the chaos soak: docs/chaos.md). Runs in the new worker, forked by
    # the master's main thread, which lives as long as the master.
    if sys.platform.startswith("linux"):
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, int(signal.SIGKILL))
        if os.getppid() != server.pid:
            os._exit(1)  # the master died before the call: no signal would come


def post_worker_init(worker: Any) -> None:
    # Everything loaded so far (Flask, pydantic's schemas, the app) lives as long as the
    # process: frozen, the collector stops walking it on every full collection, which
    # cuts the CPU of every large request (bench/RESULTS.md has the figure).
    gc.freeze()


def child_exit(server: Any, worker: Any) -> None:
    # A worker gone (restarted after a timeout, say): its counters stay in the sum, as a
    # counter must; only its live gauges are dropped.
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(worker.pid)


def on_exit(server: Any) -> None:
    if _own_folder is not None:
        shutil.rmtree(_own_folder, ignore_errors=True)
