"""What a running stack offers, asked as any client could ask: which workers it has
(over HTTP), whether something listens on a port."""

from __future__ import annotations

import socket
from collections.abc import Callable

import requests


def pool_workers_probe(api_url: str, key: str | None) -> Callable[[], set[str]]:
    """A probe for Launcher.wait_workers_ready: the node names GET /pools lists. (It lists
    pool workers only: the experiment worker serves no pool.)"""
    headers = {"Authorization": f"Bearer {key}"} if key else {}

    def live_nodes() -> set[str]:
        answer = requests.get(f"{api_url}/pools", headers=headers, timeout=10)
        answer.raise_for_status()
        return {w["node"] for pool in answer.json()["pools"] for w in pool["workers"]}

    return live_nodes


def listening(port: int, host: str = "127.0.0.1") -> bool:
    """Whether something accepts connections on `host`:`port`."""
    try:
        socket.create_connection((host, port), timeout=0.5).close()
    except OSError:
        return False
    return True
