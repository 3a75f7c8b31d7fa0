"""`python -m tests.mutations`: the mutation gate (`make mutate`).

Each mutation of tests/mutations/catalog.py is applied to a copy of the project and the
tests it names are run there; the gate fails if one survives (its tests pass), is stale
(its text is no longer in the code) or breaks its run. It prints a table: mutation,
promise, tests run, caught by.

    python -m tests.mutations                 # every mutation, after a baseline run
    python -m tests.mutations --fast          # the CI subset
    python -m tests.mutations --only acks-early --only no-fence
    python -m tests.mutations --list          # the catalog, nothing run
"""

from __future__ import annotations

import argparse
import signal
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from rich.console import Console
from rich.table import Table

from tests.mutations.catalog import MUTATIONS, Mutation
from tests.mutations.runner import (
    Outcome,
    make_workdir,
    preflight,
    run_baseline,
    run_mutation,
    snapshot,
    stop_all,
)


def chosen(args: argparse.Namespace) -> list[Mutation]:
    picked = [m for m in MUTATIONS if not args.fast or m.fast]
    if args.only:
        unknown = set(args.only) - {m.id for m in MUTATIONS}
        if unknown:
            sys.exit(f"no mutation {sorted(unknown)}; --list shows them")
        picked = [m for m in picked if m.id in args.only]
    return picked


def short(node: str) -> str:
    """A test's node id without its folder: the file's stem and the test."""
    path, _, test = node.partition("::")
    return f"{Path(path).stem}::{test}" if test else node


def table(outcomes: list[Outcome]) -> Table:
    shown = Table(title="mutation gate", show_lines=True)
    for column in ("mutation", "promise", "tests run", "caught by", "s"):
        shown.add_column(column, overflow="fold")
    for o in outcomes:
        verdict = ", ".join(o.caught_by) if o.ok else f"[bold red]{o.verdict}[/]"
        shown.add_row(
            f"{o.mutation.id}\n[dim]{o.mutation.mutant}[/]", o.mutation.promise,
            "\n".join(short(t) for t in o.ran), verdict, f"{o.seconds:.0f}",
        )  # fmt: skip
    return shown


def markdown(outcomes: list[Outcome]) -> str:
    """The table as docs/guarantees.md shows it."""
    rows = [
        "| mutation | what the mutant does | promise | tests run | caught by |",
        "| --- | --- | --- | --- | --- |",
    ]
    for o in outcomes:
        ran = ", ".join(f"`{t.split('::')[-1]}`" for t in o.ran)
        caught = ", ".join(f"`{t.split('::')[-1]}`" for t in o.caught_by) if o.ok else o.verdict
        m = o.mutation
        rows.append(f"| `{m.id}` | {m.mutant} | {m.promise} | {ran} | {caught} |")
    return "\n".join(rows) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m tests.mutations",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--fast", action="store_true", help="only the CI subset")
    parser.add_argument("--only", action="append", metavar="ID", help="this mutation (repeat)")
    parser.add_argument("--list", action="store_true", help="print the catalog and stop")
    parser.add_argument("--jobs", type=int, default=2, help="mutations run at once (2)")
    parser.add_argument(
        "--no-baseline", dest="baseline", action="store_false",
        help="skip running the tests unmutated first (CI: the suite just ran them)",
    )  # fmt: skip
    parser.add_argument("--markdown", type=Path, help="also write the table there, as markdown")
    parser.add_argument("--keep", action="store_true", help="keep the copies and logs")
    args = parser.parse_args(argv)
    # Wide enough for the table in a CI log, which is no terminal.
    console = Console(width=None if sys.stdout.isatty() else 160)
    mutations = chosen(args)
    if args.list:
        for m in mutations:
            console.print(f"[bold]{m.id}[/] ({m.promise}{', fast' if m.fast else ''}): {m.mutant}")
            for test in m.tests:
                console.print(f"    {test}")
        return 0

    workdir = make_workdir(args.keep)
    base = snapshot(workdir / "base")
    preflight(base)
    console.print(f"{len(mutations)} mutation(s), copies in {workdir}")
    # --fast: a mutation's first test alone (the quick one); else every test it names.
    planned = {m.id: list(m.tests[:1] if args.fast else m.tests) for m in mutations}
    if args.baseline:
        tests = list(dict.fromkeys(t for m in mutations for t in planned[m.id]))
        console.print(f"baseline: {len(tests)} test(s) on the unmutated copy …")
        passed, why = run_baseline(tests, base, workdir)
        if not passed:
            console.print(f"[bold red]the tests fail without a mutation[/]: {why}")
            return 2

    def one(mutation: Mutation) -> Outcome:
        outcome = run_mutation(mutation, base, workdir, planned[mutation.id])
        mark = "[green]caught[/]" if outcome.ok else f"[bold red]{outcome.verdict}[/]"
        console.print(f"{mark} {mutation.id} ({outcome.seconds:.0f} s)")
        return outcome

    # SIGTERM (a CI job cancelled) stops the runs as Ctrl-C does.
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    with ThreadPoolExecutor(max_workers=max(1, args.jobs)) as pool:
        futures = [pool.submit(one, mutation) for mutation in mutations]
        try:
            outcomes = [future.result() for future in futures]
        except KeyboardInterrupt:
            for future in futures:
                future.cancel()
            stop_all()
            console.print("[bold red]interrupted[/]: the runs going on were stopped")
            return 130
    console.print(table(outcomes))
    for o in outcomes:
        if not o.ok:
            console.print(f"[bold red]{o.verdict}[/] {o.mutation.id}: {o.detail}")
    if args.markdown:
        args.markdown.write_text(markdown(outcomes))
    survivors = [o.mutation.id for o in outcomes if not o.ok]
    console.print(
        f"{len(outcomes) - len(survivors)} of {len(outcomes)} caught"
        + (f"; not caught: {', '.join(survivors)}" if survivors else "")
    )
    return 1 if survivors else 0


if __name__ == "__main__":
    sys.exit(main())
