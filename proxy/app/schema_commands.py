"""`cutover schema init` and `cutover schema status`: both stores to the newest revision (with a
backup of a legacy SQLite file first), and the revision each store is at."""

from __future__ import annotations

import json
from typing import Any

import typer

from config import Settings
from proxy.app.cli import EXIT_DIFFER, EXIT_OK, app, load_settings, run
from proxy.connect import open_store
from proxy.primary_source import read_record
from proxy.sqlite_file import backup_sqlite, is_legacy_file, recorded_revision
from proxy.stores import migrations

schema_app = typer.Typer(help="Create or upgrade the schema on both stores.", no_args_is_help=True)
app.add_typer(schema_app, name="schema")


@schema_app.command("init")
def schema_init(
    backup: bool = typer.Option(True, "--backup/--no-backup",
                                help="Copy an existing SQLite file before changing it."),
) -> None:
    """Bring both stores to the newest schema revision (safe to run again); upgrade a legacy
    app.db in place."""
    settings = load_settings()
    report: dict[str, Any] = run(lambda: init_both(settings, backup=backup))
    for line in report["lines"]:
        typer.echo(line)


@schema_app.command("status")
def schema_status(
    json_out: bool = typer.Option(False, "--json", help="Print one JSON document."),
) -> None:
    """Each store's schema revision and whether they match (exit 1 when they differ)."""
    settings = load_settings()
    report: dict[str, Any] = run(lambda: status(settings))
    if json_out:
        typer.echo(json.dumps(report))
    else:
        for store in ("sqlite", "postgres"):
            typer.echo(f"{store}: {report[store] or 'no recorded revision'}")
        verdict = ("the stores match" if report["match"]
                   else "the stores DIFFER: run `cutover schema init`")
        typer.echo(f"newest: {report['head']}; {verdict}")
    raise typer.Exit(EXIT_OK if report["match"] else EXIT_DIFFER)


async def init_both(settings: Settings, *, backup: bool = True) -> dict[str, Any]:
    """Both stores to the newest revision: the mirror first, then the primary (the runbook's
    order, docs/schema-changes.md), so a revision that fails stops before the store serving
    reads changed."""
    lines = []
    path = settings.sqlite_path
    if backup and is_legacy_file(path):
        lines.append(f"sqlite: backup written to {backup_sqlite(path)}")
    record = await read_record(settings) if path.exists() else None
    primary = record.primary if record is not None else settings.read_primary
    for backend in ("postgres", "sqlite") if primary == "sqlite" else ("sqlite", "postgres"):
        async with open_store(settings, backend) as store:
            await store.init_schema()
            where = path if backend == "sqlite" else settings.safe_dsn
            lines.append(f"{backend}: schema at {await store.schema_revision()} ({where})")
    return {"lines": lines}


async def status(settings: Settings) -> dict[str, Any]:
    """Each store's schema revision, the newest this code knows, and whether they match."""
    sqlite = recorded_revision(settings.sqlite_path)
    async with open_store(settings, "postgres") as pg_store:
        postgres = await pg_store.schema_revision()
    newest = migrations.head()
    return {"sqlite": sqlite, "postgres": postgres, "head": newest,
            "match": sqlite == postgres, "at_head": sqlite == postgres == newest}
