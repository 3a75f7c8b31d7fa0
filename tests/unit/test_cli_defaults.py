"""What `jobrunner compare` runs when the command line leaves it open, chosen from the
workload's GET /workloads entry: the pools (not gevent for an async workload, said in one
line) and the local executors of `--local all` (those the lab offers)."""

from __future__ import annotations

from typing import Any

from services.cli.compare import DEFAULT_POOLS, default_pools, named_pools, resolve_local


def entry(name: str, is_async: bool, **more: Any) -> dict[str, Any]:
    """A GET /workloads entry, as far as the defaults read it."""
    executors = ["sequential", "threadpool", "processpool", "asyncio"]
    return {"name": name, "is_async": is_async, "local_executors": executors, **more}


def test_a_plain_workload_gets_every_pool_and_no_note() -> None:
    assert default_pools(entry("cpu_primes", False)) == (list(DEFAULT_POOLS), None)
    assert DEFAULT_POOLS == ("threads", "prefork", "gevent")


def test_an_async_workload_leaves_gevent_out_and_says_why_in_one_line() -> None:
    chosen, note = default_pools(entry("fetch_later", True))
    assert chosen == ["threads", "prefork"]
    assert note is not None and "\n" not in note
    assert note.startswith("pools: threads, prefork (gevent left out: fetch_later is async")


def test_the_pools_the_server_lists_win_over_the_cli_reasoning() -> None:
    # A server that lists `pools` decides; the CLI keeps its own order.
    listed = entry("fetch_later", True, pools=["prefork", "threads"])
    assert default_pools(listed)[0] == ["threads", "prefork"]
    assert default_pools(entry("price", False, pools=["threads", "prefork", "gevent"])) == (
        list(DEFAULT_POOLS),
        None,
    )
    chosen, note = default_pools(entry("odd", False, pools=["threads"]))
    assert chosen == ["threads"] and note is not None
    assert "prefork, gevent left out" in note and "GET /workloads" in note


def test_a_workload_the_catalog_does_not_list_gets_every_pool() -> None:
    # The API's 422 then names the workload; the CLI does not guess.
    assert default_pools(None) == (list(DEFAULT_POOLS), None)


def test_pools_named_on_the_command_line_are_taken_as_given() -> None:
    assert named_pools(None) is None  # not given: default_pools decides
    assert named_pools("none") == []
    assert named_pools("gevent") == ["gevent"]  # the server's 422 explains, not the CLI
    assert named_pools("threads,,gevent,") == ["threads", "gevent"]


def test_local_all_is_what_the_lab_offers_for_the_workload() -> None:
    offered = entry("mixed", False, local_executors=["sequential", "asyncio"])
    assert resolve_local(offered, "all") == ["sequential", "asyncio"]
    assert resolve_local(entry("fetch_later", True), "all")[-1] == "asyncio"
    assert resolve_local(None, "all") == []
    assert resolve_local(offered, "none") == []
    assert resolve_local(offered, "threadpool,processpool") == ["threadpool", "processpool"]
