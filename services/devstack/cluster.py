"""`make cluster`: jobrunner on several hosts of one Linux machine, one component per host.

Builds the test bed (services/devstack/netns.py): a host for Redis, one for the API and
N worker hosts, each running every pool's worker (or the pools asked for), joined by a
bridge. Each component is started by a launcher of its own on its own host, exactly as
`make run ROLE=...` starts it on a real machine, against the Redis host's address. Ctrl-C
stops everything and removes the hosts. Linux only, as root (network namespaces).

The tests in tests/cluster/ use `Cluster` the same way.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from services.core.api_keys import hash_key, new_key
from services.core.vocabulary import POOL_NAMES
from services.devstack.compose import PROJECT_ROOT
from services.devstack.launcher import Launcher, LaunchError
from services.devstack.netns import Bed, unavailable_reason
from services.devstack.probes import pool_workers_probe
from services.devstack.processes import stop_on_signals

REDIS_PORT = 6379
API_PORT = 8000


@dataclass
class Cluster:
    """Redis, the API and workers, each on its own host of `bed`, logging under `folder`.

    `overrides` go into every process's environment (the API keys, timeouts...).
    """

    bed: Bed
    folder: Path
    overrides: dict[str, str] = field(default_factory=dict)
    hosts: dict[str, Launcher] = field(default_factory=dict)

    def on(self, host: str) -> Launcher:
        """The launcher of `host`: it starts programs there, named after the host."""
        if host not in self.hosts:
            self.hosts[host] = Launcher(
                self.folder / host,
                overrides=dict(self.overrides),
                command_prefix=self.bed.command_prefix(host),
                host_name=host,
                reach=self.bed.reach(host),
            )
        return self.hosts[host]

    @property
    def redis_url(self) -> str:
        return f"redis://{self.bed.address('redis')}:{REDIS_PORT}/0"

    @property
    def api_url(self) -> str:
        return f"http://{self.bed.address('api')}:{API_PORT}"

    def start_redis(self) -> None:
        self.on("redis").start_redis(bind="0.0.0.0", port=REDIS_PORT)

    def start_api(self) -> None:
        api = self.on("api")
        api.use_redis(self.redis_url)
        api.start_api(host="0.0.0.0", port=API_PORT)

    def start_worker(self, host: str, pool: str, concurrency: int | None = None) -> Any:
        worker = self.on(host)
        worker.use_redis(self.redis_url)
        return worker.start_worker(pool, concurrency)

    def start(self, workers: dict[str, list[str]]) -> None:
        """Redis, the API, then on each worker host the workers of its pools."""
        self.start_redis()
        self.start_api()
        for host, pools in workers.items():
            for pool in pools:
                self.start_worker(host, pool)

    def wait_ready(self, key: str | None, timeout: float = 90.0) -> None:
        """Until the API answers and every worker started is listed by GET /pools, asked
        from the API host as any client there would."""
        self.on("api").wait_api_ready(timeout)
        probe = pool_workers_probe(self.api_url, key)
        for launcher in self.hosts.values():
            if launcher.workers:  # asked from its own host, which reaches the API too
                launcher.wait_workers_ready(probe, timeout)

    def call(self, host: str, fn: Callable[[], Any]) -> Any:
        """Run `fn` on `host`, as a client there: `cluster.call("api", lambda: ...)`."""
        return self.bed.reach(host)(fn)

    def restart_dead(self) -> list[str]:
        return [f"{host}/{p.name}" for host, hl in self.hosts.items() for p in hl.restart_dead()]

    def stop(self, grace: float = 15.0) -> None:
        """Workers and the API first, Redis last (a stopping worker hands its jobs back
        through it)."""
        for host, launcher in self.hosts.items():
            if host != "redis":
                launcher.stop(grace)
        if "redis" in self.hosts:
            self.hosts["redis"].stop(grace)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="make cluster", description=__doc__.split("\n\n")[0])
    parser.add_argument("--workers", type=int, default=2, help="worker hosts (default 2)")
    parser.add_argument(
        "--pools", default=",".join(POOL_NAMES), help="pools on each worker host, comma separated"
    )
    args = parser.parse_args(argv)
    reason = unavailable_reason()
    if reason:
        raise SystemExit(f"make cluster needs Linux network namespaces, as root: {reason}")
    pools = [p for p in args.pools.split(",") if p]
    unknown = sorted(set(pools) - set(POOL_NAMES))
    if unknown:
        raise SystemExit(f"unknown pools {unknown}: choose among {', '.join(POOL_NAMES)}")
    workers = {f"w{n}": pools for n in range(1, args.workers + 1)}
    key = new_key()
    folder = PROJECT_ROOT / ".run" / "cluster"
    overrides = {"JOBRUNNER_API_KEYS": f"local:read+submit+admin:{hash_key(key)}"}
    stop = stop_on_signals()
    with Bed(prefix="jrc", hosts=["redis", "api", *workers]) as bed:
        cluster = Cluster(bed, folder, overrides)
        try:
            cluster.start(workers)
            try:
                cluster.wait_ready(key)
            except LaunchError as exc:
                raise SystemExit(str(exc)) from None
            for host in ["redis", "api", *workers]:
                print(f"host {host:<6} {bed.address(host):<12} namespace {bed.namespace(host)}")
            print(f"\njobrunner is up at {cluster.api_url} (on the bed; logs in {folder})")
            print(f"API key   {key}")
            print(
                "From this machine, talk to it from the API host's namespace:\n"
                f"  ip netns exec {bed.namespace('api')} curl -s -H 'Authorization: Bearer "
                f"{key}' {cluster.api_url}/pools\n(Ctrl-C stops everything)\n",
                flush=True,
            )
            while not stop.wait(0.5):
                for name in cluster.restart_dead():
                    print(f"restart  {name}")
        finally:
            print("stopping …", flush=True)
            cluster.stop()
    print("stopped")


if __name__ == "__main__":
    main()
