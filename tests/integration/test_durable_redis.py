"""The Redis that `make run` and the tests start keeps every write it acknowledged:
append-only, with an fsync of every write (`appendfsync always`).

What a test can show, and what it cannot: `kill -9` of redis-server loses nothing the
kernel already holds, whatever `appendfsync` says (the page cache outlives the process),
so a kill cannot tell `always` from `no`; only a power loss (or a kernel crash) can,
which no test here causes. So the setting is read back from the running server itself
(CONFIG GET), and the kill shows the rest: an acknowledged write is there after it.
"""

from __future__ import annotations

from pathlib import Path

import redis

from services.devstack.launcher import Launcher


def test_the_local_redis_fsyncs_every_write(tmp_path: Path) -> None:
    launcher = Launcher(tmp_path)
    server = launcher.start_redis()  # as services/devstack/run.py starts it
    try:
        client = redis.Redis.from_url(server.url, decode_responses=True)
        assert client.config_get("appendonly") == {"appendonly": "yes"}
        assert client.config_get("appendfsync") == {"appendfsync": "always"}
        client.set("acknowledged", "kept")
        server.stop(kill=True)
        server.start()
        assert client.get("acknowledged") == "kept"
    finally:
        launcher.stop()
