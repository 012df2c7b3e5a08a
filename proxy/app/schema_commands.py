"""`cutover schema init`: both schemas, with a backup of an existing SQLite file first."""

from __future__ import annotations

from typing import Any

import typer

from config import Settings
from proxy.app.cli import app, load_settings, run
from proxy.connect import open_store
from proxy.sqlite_file import backup_sqlite, is_legacy_file

schema_app = typer.Typer(help="Create or upgrade the schema on both stores.", no_args_is_help=True)
app.add_typer(schema_app, name="schema")


@schema_app.command("init")
def schema_init(
    backup: bool = typer.Option(True, "--backup/--no-backup",
                                help="Copy an existing SQLite file before changing it."),
) -> None:
    """Create the schema on both stores (safe to run again); upgrade a legacy app.db in place."""
    settings = load_settings()
    report: dict[str, Any] = run(lambda: init_both(settings, backup=backup))
    for line in report["lines"]:
        typer.echo(line)


async def init_both(settings: Settings, *, backup: bool = True) -> dict[str, Any]:
    lines = []
    path = settings.sqlite_path
    if backup and is_legacy_file(path):
        lines.append(f"sqlite: backup written to {backup_sqlite(path)}")
    async with open_store(settings, "sqlite") as sqlite_store:
        await sqlite_store.init_schema()
        lines.append(f"sqlite: schema ready at {path}")
    async with open_store(settings, "postgres") as pg_store:
        await pg_store.init_schema()
        lines.append(f"postgres: schema ready ({settings.safe_dsn})")
    return {"lines": lines}
