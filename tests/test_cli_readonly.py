"""Read-only commands on a missing or uninitialised database (issue 24): no file or directory
is created, one line says to run `cutover schema init`, exit 2, no traceback. And
open_repository upgrades a legacy app.db only after the backup `schema init` writes."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry
from typer.testing import CliRunner

from config import Settings
from proxy import open_repository
from proxy.app.cli import app as cli_app

READ_ONLY = [["status"], ["verify"], ["read-primary"], ["shadow", "list"], ["reconcile"]]


@pytest.mark.slow
@pytest.mark.parametrize("command", READ_ONLY, ids=" ".join)
@pytest.mark.parametrize("state", ["missing", "empty"])
def test_read_only_commands_create_nothing_and_say_what_to_run(
        command: list[str], state: str, tmp_path: Path, pg_dsn: str,
        monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "typo" / "app.db"
    if state == "empty":
        path.parent.mkdir()
        sqlite3.connect(path).close()  # a file without the schema
    before = sorted(tmp_path.rglob("*"))
    monkeypatch.setenv("SQLITE_PATH", str(path))
    monkeypatch.setenv("POSTGRES_DSN", pg_dsn)
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(cli_app, command)
    assert result.exit_code == 2, result.output
    assert "cutover schema init" in result.output and result.output.count("\n") == 1
    assert "Traceback" not in result.output
    assert sorted(tmp_path.rglob("*")) == before


@pytest.mark.slow
async def test_open_repository_backs_up_a_legacy_db_before_upgrading(
        tmp_path: Path, pg_dsn: str) -> None:
    from proxy.stores.sqlite_schema import LEGACY_TABLES

    legacy = tmp_path / "app.db"
    conn = sqlite3.connect(legacy)
    conn.executescript(LEGACY_TABLES)
    conn.close()
    settings = Settings(sqlite_path=legacy, postgres_dsn=pg_dsn)
    async with open_repository(settings, registry=CollectorRegistry(), init_schema=True):
        pass
    backups = list(tmp_path.glob("app.db.bak-*"))
    assert len(backups) == 1
    conn = sqlite3.connect(backups[0])
    try:
        tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master")}
    finally:
        conn.close()
    assert "cutover_outbox" not in tables  # the copy is the legacy file as it was


@pytest.mark.parametrize("args", [["backfill", "--from", "typo/legacy.db"], ["backfill"]],
                         ids=" ".join)
def test_backfill_without_its_source_creates_nothing_and_says_what_to_run(
        args: list[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SQLITE_PATH", str(tmp_path / "typo" / "app.db"))
    monkeypatch.setenv("POSTGRES_DSN", "postgresql://u:secret@127.0.0.1:1/x")
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(cli_app, args)
    assert result.exit_code == 2, result.output
    assert "run `cutover backfill --from PATH`" in result.output
    assert result.output.count("\n") == 1 and "Traceback" not in result.output
    assert list(tmp_path.rglob("*")) == []
