"""`jobrunner`: the command-line client of the HTTP API (the app and its small commands;
`compare` is in services/cli/compare.py), built on the Python client (services/client/).

It finds the API at --api, else JOBRUNNER_URL, else http://127.0.0.1:8000, and its key in
JOBRUNNER_API_KEY, else in the key file `make run` writes (.run/api-key).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any, NoReturn

import typer
from rich.console import Console
from rich.table import Table

from services.cli.client import ApiError, Client

app = typer.Typer(help=__doc__, no_args_is_help=True, add_completion=False)
console = Console()
err = Console(stderr=True)

ApiOption = Annotated[str | None, typer.Option("--api", help="API URL; else $JOBRUNNER_URL.")]


def parse_param(text: str) -> tuple[str, Any]:
    """`key=value`; the value is JSON when it parses (3, 0.5, true, [1]), else a string."""
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise typer.BadParameter(f"{text!r}: want key=value")
    try:
        return key, json.loads(value)
    except ValueError:
        return key, value


def params_of(items: list[str]) -> dict[str, Any]:
    return dict(parse_param(item) for item in items)


def show_record(record: dict[str, Any]) -> None:
    table = Table(show_header=False, box=None)
    for name in ("id", "workload", "pool", "state", "attempts", "worker_node", "result", "error"):
        value = record.get(name)
        if value is not None:
            table.add_row(
                f"[bold]{name}[/]", json.dumps(value) if not isinstance(value, str) else value
            )
    if record.get("finished_at") and record.get("submitted_at"):
        table.add_row("[bold]took[/]", f"{record['finished_at'] - record['submitted_at']:.3f} s")
    console.print(table)


def run(command: Any) -> None:
    try:
        command()
    except ApiError as exc:
        err.print(f"[red]error:[/] {exc}")
        raise typer.Exit(1) from None


def usage_error(message: str) -> NoReturn:
    """A wrong command line, in one line (never wrapped), exit code 2 as click's own."""
    err.print(f"[red]error:[/] {message}", soft_wrap=True)
    raise typer.Exit(2)


def where(topology: dict[str, Any]) -> str:
    """Where an experiment's run happened (the API says it in `where`; a report stored
    before it did has its core count only): compare, compare-runs and --sweep say it."""
    return topology.get("where") or f"{topology['cores']} cores"


@app.command()
def submit(
    workload: Annotated[
        str | None, typer.Argument(help="A workload from `jobrunner workloads`.")
    ] = None,
    param: Annotated[list[str], typer.Option("-p", "--param", help="key=value, repeatable.")] = [],  # noqa: B006
    pool: Annotated[str | None, typer.Option(help="threads, prefork or gevent.")] = None,
    wait: Annotated[bool, typer.Option("--wait", help="Wait until the job is final.")] = False,
    batch: Annotated[
        Path | None, typer.Option(help="A file of jobs: JSON lines, or a JSON array.")
    ] = None,
    api: ApiOption = None,
) -> None:
    """Submit a job (with --wait, a spinner until it is final), or a file with --batch."""
    client = Client(api)

    def go() -> None:
        if batch is not None:
            submit_batch(client, batch)
            return
        if not workload:
            raise ApiError("name a WORKLOAD (see `jobrunner workloads`), or give --batch FILE")
        job = client.submit(workload, params_of(param), pool=pool)
        if not wait:
            show_record(job.record)
            return
        with console.status(f"{workload} on {job.record['pool']}: {job.state}") as status:
            job.wait(
                timeout=None,
                progress=lambda job: status.update(
                    f"{workload} on {job.record['pool']}: {job.state}"
                ),
            )
        show_record(job.record)
        if job.state != "succeeded":
            raise typer.Exit(2)

    run(go)


def submit_batch(client: Client, path: Path) -> None:
    """The file's jobs, 1,000 a request (Client.submit_many); each request is all or
    nothing, and a refused one says which jobs it held and how many went before."""
    text = path.read_text()
    try:
        if text.lstrip().startswith("["):
            jobs = json.loads(text)
        else:
            jobs = [json.loads(line) for line in text.splitlines() if line.strip()]
    except ValueError as exc:
        raise ApiError(f"{path}: neither JSON lines nor a JSON array ({exc})") from None
    accepted = client.submit_many(jobs)
    console.print(f"accepted {len(accepted)} jobs")


@app.command()
def status(job_id: str, api: ApiOption = None) -> None:
    """A job's state, where it ran, its result or error."""
    run(lambda: show_record(Client(api).job(job_id).record))


@app.command()
def cancel(job_id: str, api: ApiOption = None) -> None:
    """Cancel a job (queued: never runs; running on prefork: stopped)."""
    run(lambda: show_record(Client(api).job(job_id).cancel().record))


@app.command()
def jobs(
    state: Annotated[str | None, typer.Option()] = None,
    pool: Annotated[str | None, typer.Option()] = None,
    workload: Annotated[str | None, typer.Option()] = None,
    limit: Annotated[int, typer.Option()] = 20,
    api: ApiOption = None,
) -> None:
    """Recent jobs, newest first (--limit past 500 is fetched a page at a time)."""

    def go() -> None:
        listed = Client(api).jobs(state=state, pool=pool, workload=workload, limit=limit)
        table = Table("id", "workload", "pool", "state", "attempts", "took (s)")
        for job in listed:
            took = (
                f"{job['finished_at'] - job['submitted_at']:.3f}" if job.get("finished_at") else ""
            )
            table.add_row(
                job["id"], job["workload"], job["pool"], job["state"], str(job["attempts"]), took
            )
        console.print(table)

    run(go)


# A worker's catalog as GET /pools says it: the API's, another, or not said (an older worker).
CATALOG_CELL = {True: "✓", False: "[red]differs[/]", None: "?"}


@app.command()
def pools(api: ApiOption = None) -> None:
    """The pools, what they can enforce, their live workers and whether each has the
    API's workload catalog (a worker that differs is named below, with what differs)."""

    def go() -> None:
        answer = Client(api).json("GET", "/pools")
        console.print(pools_table(answer))
        for mismatch in answer.get("catalog_mismatch", []):
            console.print(mismatch_line(mismatch), soft_wrap=True, highlight=False)

    run(go)


def pools_table(answer: dict[str, Any]) -> Table:
    """GET /pools as a table: a row per worker (so that its catalog stays beside it when
    a long node name folds), the pool's own figures on its first. Headers break where they
    may, and a node name folds rather than being cut."""
    table = Table(
        "pool", "suited\nto", "queued", "workers", "catalog", "time\nlimit", "termi-\nnate",
        "memory\nisolation",
    )  # fmt: skip
    table.columns[3].overflow = "fold"
    flags = ("hard_time_limit", "terminate_running", "memory_isolation")
    for pool in answer["pools"]:
        caps = pool["capabilities"]
        first = [pool["name"], pool["suited_to"], str(pool["queued"])]
        enforces = ["yes" if caps[flag] else "no" for flag in flags]
        workers = [
            (f"{w['node']} (x{w['concurrency']})", CATALOG_CELL[w.get("catalog_matches")])
            for w in pool["workers"]
        ] or [("[red]none[/]", "")]
        for number, (worker, catalog) in enumerate(workers):
            own = first if number == 0 else ["", "", ""]
            flagged = enforces if number == 0 else ["", "", ""]
            last = number == len(workers) - 1
            table.add_row(*own, worker, catalog, *flagged, end_section=last)
    return table


def mismatch_line(mismatch: dict[str, Any]) -> str:
    """One line on a worker whose catalog is not the API's, in GET /pools' words: the
    workloads it is missing (the API accepts their jobs, and they fail on it), has extra,
    and has changed (another version: its params or kind differ)."""
    parts = [f"{field} {', '.join(mismatch[field])}" for field in ("missing", "extra", "changed")
             if mismatch[field]]  # fmt: skip
    if mismatch["missing"]:
        parts[0] += " (their jobs fail there)"
    what = "; ".join(parts) or "another fingerprint"
    return f"{mismatch['worker']}: catalog differs from the API's: {what}"


@app.command()
def workloads(api: ApiOption = None) -> None:
    """The workload catalog."""

    def go() -> None:
        table = Table("workload", "kind", "default pool", "params")
        for w in Client(api).workloads():
            params = ", ".join(w["params_schema"].get("properties", {}))
            table.add_row(w["name"], w["kind"], w["default_pool"], params)
        console.print(table)

    run(go)
