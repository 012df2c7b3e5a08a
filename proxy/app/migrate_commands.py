"""The `backfill`, `verify` and `reconcile` verbs of `cutover` (registered on
`proxy.app.cli.app`); the work is `proxy.migrate`'s."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from config import Settings
from proxy.app.cli import EXIT_DIFFER, EXIT_USAGE, app, fail, load_settings, run


@contextmanager
def _progress(quiet: bool) -> Iterator[tuple[Any, Any]]:
    """(on_rows, on_totals) callbacks driving a rich progress bar on stderr (off when quiet or
    when stderr is not a terminal)."""
    err = Console(stderr=True)
    if quiet or not err.is_terminal:
        yield (lambda table, n: None), (lambda totals: None)
        return
    bar = Progress(TextColumn("{task.description:<16}"), BarColumn(), MofNCompleteColumn(),
                   TimeElapsedColumn(), console=err, transient=False)
    tasks: dict[str, Any] = {}

    def on_totals(totals: dict[str, int]) -> None:
        for table, total in totals.items():
            tasks[table] = bar.add_task(table, total=total)

    def on_rows(table: str, n: int) -> None:
        if table in tasks:
            bar.advance(tasks[table], n)

    with bar:
        yield on_rows, on_totals


@contextmanager
def _steps(quiet: bool, title: str, total: int) -> Iterator[Any]:
    """An on_step(name) callback driving a rich progress bar of `total` steps on stderr (off
    when quiet or when stderr is not a terminal), as backfill's."""
    err = Console(stderr=True)
    if quiet or not err.is_terminal:
        yield lambda name: None
        return
    bar = Progress(TextColumn("{task.description:<28}"), BarColumn(), MofNCompleteColumn(),
                   TimeElapsedColumn(), console=err, transient=False)
    task = bar.add_task(title, total=total)

    def on_step(name: str) -> None:
        bar.update(task, advance=1, description=f"{title}: {name}")

    with bar:
        yield on_step


async def _dsn(settings: Settings) -> str:
    from proxy.connect import resolve_dsn

    return await resolve_dsn(settings)


@app.command()
def backfill(
    source: Path | None = typer.Option(
        None, "--from", help="Legacy SQLite database to copy (default: SQLITE_PATH)."),
    rejects: Path = typer.Option(
        Path("backfill-rejects.jsonl"), "--rejects",
        help="JSON Lines report of rejected and changed rows."),
    batch_size: int = typer.Option(2000, "--batch-size", min=10, max=100_000,
                                   help="Rows per batch (one transaction each)."),
    restart: bool = typer.Option(False, "--restart",
                                 help="Start a fresh pass even if the last one was cut short."),
    as_json: bool = typer.Option(False, "--json", help="Print the summary as one JSON document."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar."),
    analyze: bool = typer.Option(
        True, "--analyze/--no-analyze",
        help="ANALYZE each table once loaded and indexed, so the planner has statistics at "
             "once rather than when autovacuum gets to it."),
    jobs: int = typer.Option(
        2, "--jobs", min=1, max=32,
        help="Parts of each big table loaded side by side, and of the vocabulary's count: "
             "about the cores PostgreSQL has. A resumed pass keeps its first run's parts."),
) -> None:
    """Copy an existing SQLite database into PostgreSQL (resumable, safe beside dual writes)."""
    from proxy.migrate.backfill import run_backfill

    settings = load_settings()
    path = source or settings.sqlite_path
    if not path.is_file():
        given = f"--from {path}" if source else f"SQLITE_PATH={path} (or give --from PATH)"
        raise fail(f"{given}: no such file: run `cutover backfill --from PATH` with the legacy "
                   "app.db", EXIT_USAGE)
    if not rejects.parent.is_dir():
        raise fail(f"--rejects {rejects}: directory {rejects.parent} does not exist", EXIT_USAGE)

    async def main() -> Any:
        dsn = await _dsn(settings)
        with _progress(quiet) as (on_rows, on_totals):
            return await run_backfill(path, dsn, rejects_path=rejects, batch_size=batch_size,
                                      restart=restart, progress=on_rows, totals=on_totals,
                                      analyze=analyze, jobs=jobs)

    with _logs_to_stderr():
        report = run(main)
    if as_json:
        doc = report.to_json()
        doc["postgres"] = settings.safe_dsn
        typer.echo(json.dumps(doc, indent=2))
        return
    table = Table(title=f"backfill {'(resumed) ' if report.resumed else ''}"
                        f"from {report.source} in {report.seconds:.1f} s")
    table.caption = ("present: already in PostgreSQL (the repository's rows win); skipped: "
                     "deleted through the repository since dual writes began")
    for col in ("table", "read", "inserted", "present", "skipped", "rejected", "changed"):
        table.add_column(col, justify="left" if col == "table" else "right")
    for name, t in report.tables.items():
        table.add_row(name, str(t.read), str(t.inserted), str(t.present), str(t.skipped),
                      str(t.rejected), str(t.changed))
    Console().print(table)
    typer.echo(f"{report.problems} problem(s) reported in {report.rejects_file}")


def _check_sqlite(settings: Settings) -> Path:
    path = settings.sqlite_path
    if not path.is_file():
        raise fail(f"SQLITE_PATH={path}: no such file (run `cutover schema init` first)",
                   EXIT_USAGE)
    return path


@app.command()
def verify(
    as_json: bool = typer.Option(False, "--json", help="Print one JSON document."),
    sample_queries: int = typer.Option(20, "--sample-queries", min=0, max=1000,
                                       help="Searches compared on both stores (informational)."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar."),
) -> None:
    """Compare the two stores: counts, every row, foreign keys; search parity on a sample.

    Exit 0 when they agree, 1 when they differ. Rows in the backfill's rejects and rows with a
    mirror write still pending are listed apart and are not differences; dead letters are.
    """
    from proxy.migrate.verify import VERIFY_STEPS, run_verify

    settings = load_settings()
    path = _check_sqlite(settings)

    async def main() -> Any:
        with _steps(quiet, "verify", VERIFY_STEPS) as on_step:
            return await run_verify(path, await _dsn(settings), queries=sample_queries,
                                    progress=on_step)

    with _logs_to_stderr():
        report = run(main)
    doc = report.to_json()
    doc["postgres"] = settings.safe_dsn
    doc["sqlite"] = str(path)
    if as_json:
        typer.echo(json.dumps(doc, indent=2, ensure_ascii=False))
    else:
        _print_verify(doc)
    if not report.ok:
        raise typer.Exit(EXIT_DIFFER)


@app.command()
def reconcile(
    as_json: bool = typer.Option(False, "--json", help="Print one JSON document."),
    retry_dead: bool = typer.Option(
        False, "--retry-dead",
        help="Requeue the dead letters of both outboxes (attempts reset, last error kept) "
             "before replaying."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar."),
) -> None:
    """Replay pending mirror writes, then repair what verify finds, from the primary.

    The primary is the control record's (before any process made one: READ_PRIMARY, or the
    word in READ_PRIMARY_FILE when that is set). Each
    differing row is copied from it as a new write (or deleted where it has none). Exit 1 if
    differences (dead letters included) remain afterwards.
    """
    from proxy.errors import PrimaryUnknown
    from proxy.migrate.reconcile import RECONCILE_STEPS, run_reconcile
    from proxy.migrate.verify import is_upgraded
    from proxy.primary_source import current_primary, primary_before_record

    settings = load_settings()
    path = _check_sqlite(settings)
    # the record only from a file that has its tables: a read-only look must create nothing
    try:
        primary = (run(lambda: current_primary(settings)) if is_upgraded(path)
                   else primary_before_record(settings))
    except PrimaryUnknown as exc:
        raise fail(str(exc), EXIT_USAGE) from None

    async def main() -> Any:
        with _steps(quiet, "reconcile", RECONCILE_STEPS) as on_step:
            return await run_reconcile(path, await _dsn(settings), primary,
                                       retry_dead=retry_dead, progress=on_step)

    with _logs_to_stderr():
        report = run(main)
    if as_json:
        doc = report.to_json()
        doc["postgres"] = settings.safe_dsn
        typer.echo(json.dumps(doc, indent=2, ensure_ascii=False))
    else:
        out = Console()
        out.print(f"primary: [bold]{report.primary}[/bold]")
        for direction, n in report.requeued.items():
            out.print(f"dead letters requeued {direction}: {n}")
        for direction, counts in report.drained.items():
            out.print(f"outbox {direction}: " + ", ".join(f"{k} {v}" for k, v in counts.items()))
        repaired = ", ".join(f"{k} {v}" for k, v in report.repaired.items()) or "nothing"
        out.print(f"repaired: {repaired}")
        for f in report.failed[:50]:
            out.print(f"[red]not repaired[/red] {f['table']} {f['id']}: {escape(f['error'])}")
        _print_verify({**report.after.to_json(), "postgres": settings.safe_dsn,
                       "sqlite": str(path)}, title="after reconcile")
    if not report.after.ok:
        raise typer.Exit(EXIT_DIFFER)


@contextmanager
def _logs_to_stderr() -> Iterator[None]:
    """Log lines go to stderr while a command runs, so stdout stays one document."""
    import structlog

    saved = structlog.get_config()
    structlog.configure(logger_factory=structlog.PrintLoggerFactory(sys.stderr))
    try:
        yield
    finally:
        structlog.configure(**saved)


def _print_verify(doc: dict[str, Any], title: str = "verify") -> None:
    out = Console()
    table = Table(title=f"{title}: sqlite {doc['sqlite']} vs postgres {doc['postgres']} "
                        f"({doc['seconds']:.1f} s)")
    for col in ("table", "sqlite rows", "postgres rows", "differences", "pending",
                "backfill findings"):
        table.add_column(col, justify="left" if col == "table" else "right")
    for name, t in doc["tables"].items():
        table.add_row(name, str(t["sqlite"]), str(t["postgres"]),
                      f"[red]{t['differences']}[/red]" if t["differences"] else "0",
                      str(t["pending"]), str(t["backfill"]))
    out.print(table)
    for title_, key in (("differences", "differences"), ("pending mirror writes", "pending")):
        rows = doc[key]
        if rows:
            out.print(f"[bold]{title_}[/bold] ({doc['totals'][key]}, first {len(rows)} listed)")
            for r in rows[:50]:
                cols = f" ({', '.join(r['columns'])})" if r.get("columns") else ""
                out.print(f"  {r['table']} {r['id']} {r['kind']}{cols}", markup=False)
    dead = doc.get("dead_letters") or []
    if dead:
        out.print(f"[bold red]dead letters[/bold red] ({doc['totals']['dead_letters']}, first "
                  f"{len(dead)} listed; `cutover reconcile --retry-dead` requeues them)")
        for d in dead:
            out.print(f"  -> {d['target']} {d['entity']} {d['id']} {d['op']} after "
                      f"{d['attempts']} attempts: {d['last_error']}", markup=False)
    if doc["backfill"]:
        out.print(f"[bold]backfill rejects and changes[/bold] ({doc['totals']['backfill']})")
        for r in doc["backfill"][:50]:
            out.print(f"  {r['table']} {r['id']} {r['kind']}: {r['reason']}", markup=False)
    orphans = {k: v for k, v in doc["foreign_keys"]["orphans"].items() if v}
    out.print("foreign keys on postgres: " + (
        ", ".join(f"[red]{k} {v} orphans[/red]" for k, v in orphans.items()) or "intact"))
    s = doc["search"]
    if s["queries"]:
        out.print(f"search parity (informational): {s['queries']} queries, "
                  f"mean Jaccard@10 {s['mean_jaccard']}")
    elif s.get("error"):
        out.print(f"search parity not measured: {s['error']}", markup=False)
    out.print("[green]the stores agree[/green]" if doc["ok"]
              else "[red]the stores differ[/red]")
