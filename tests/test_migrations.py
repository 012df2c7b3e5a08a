"""The schema's revisions (issue 25): the baseline is the schema the project had before Alembic
on both stores, the metadata in proxy/tables.py agrees with a migrated database, a legacy app.db
is stamped and upgraded in place (never recreated), `cutover schema status` tells each store's
revision, the repository refuses stores at different revisions, and the dependency list names
what the code imports."""

from __future__ import annotations

import ast
import asyncio
import json
import re
import sqlite3
import tomllib
from importlib.metadata import packages_distributions
from pathlib import Path
from typing import Any

import asyncpg
import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy.ext.asyncio import create_async_engine
from typer.testing import CliRunner

from config import Settings
from proxy import SchemaMismatch, open_repository
from proxy.app.cli import app as cli_app
from proxy.stores import migrations
from proxy.stores.migrations import BASELINE, LEGACY, sqlite_engine, upgrade_sqlite
from proxy.stores.postgres import PostgresStore
from proxy.tables import DIALECT_ONLY, metadata
from tests.schema_snapshot import expected, postgres_snapshot, sqlite_snapshot
from tests.test_schema import LEGACY_TABLES, _make_legacy_db

ROOT = Path(__file__).resolve().parents[1]
HEAD = migrations.head()


def test_the_baseline_on_sqlite_is_the_schema_from_before_revisions(tmp_path: Path) -> None:
    path = tmp_path / "app.db"
    upgrade_sqlite(path, BASELINE)
    assert sqlite_snapshot(path) == expected("sqlite")
    assert _sqlite_revision(path) == BASELINE


async def test_the_baseline_on_postgres_is_the_schema_from_before_revisions(
        pg_dsn: str) -> None:
    await migrations.upgrade_postgres(pg_dsn, BASELINE)
    assert await postgres_snapshot(pg_dsn) == expected("postgres")
    store = PostgresStore(pg_dsn)
    try:
        assert await store.schema_revision() == BASELINE
    finally:
        await store.close()


def _differences(conn: sa.Connection) -> list[Any]:
    def ours(obj: Any, name: str | None, type_: str, reflected: bool, compare_to: Any) -> bool:
        if type_ == "table":
            return name in metadata.tables
        # SQLAlchemy does not reflect SQLite's ON DELETE: its foreign keys are compared below
        return name not in DIALECT_ONLY and not (
            type_ == "foreign_key_constraint" and conn.dialect.name == "sqlite")
    context = MigrationContext.configure(conn, opts={"include_object": ours})
    found = []
    for diff in compare_metadata(context, metadata):
        change = diff[0] if isinstance(diff, list) else diff
        # SQLite lets a primary key that is not an INTEGER hold NULL (its documented quirk,
        # kept for compatibility): the legacy `id TEXT PRIMARY KEY` reflects as nullable
        if change[0] == "modify_nullable" and change[3] == "id" and conn.dialect.name == "sqlite":
            continue
        found.append(diff)
    return found


def _sqlite_foreign_keys(conn: sa.Connection) -> set[tuple[str, str, str, str]]:
    return {(t, fk[3], fk[2], fk[6]) for t in metadata.tables
            for fk in conn.exec_driver_sql(f"PRAGMA foreign_key_list({t})")}


def test_the_metadata_matches_a_migrated_sqlite_database(tmp_path: Path) -> None:
    """proxy/tables.py and the revisions describe the same tables: Alembic's autogenerate finds
    nothing to change (columns, types, NOT NULL, keys, indexes)."""
    path = tmp_path / "app.db"
    upgrade_sqlite(path)
    engine = sqlite_engine(path)
    try:
        with engine.connect() as conn:
            assert _differences(conn) == []
            assert _sqlite_foreign_keys(conn) == {
                (t.name, fk.parent.name, fk.column.table.name, fk.ondelete)
                for t in metadata.tables.values() for fk in t.foreign_keys}
            conn.exec_driver_sql("ALTER TABLE questions ADD COLUMN extra TEXT")  # and it can fail
            assert [d[0] for d in _differences(conn)] == ["remove_column"]
    finally:
        engine.dispose()


async def test_the_metadata_matches_a_migrated_postgres_database(
        pg_store: PostgresStore, pg_schema_dsn: str) -> None:
    engine = create_async_engine("postgresql+asyncpg://", poolclass=sa.NullPool,
                                 async_creator=lambda: asyncpg.connect(pg_schema_dsn))
    try:
        async with engine.connect() as conn:
            assert await conn.run_sync(_differences) == []
            await conn.exec_driver_sql("ALTER TABLE users ALTER COLUMN name TYPE VARCHAR(100)")
            assert len(await conn.run_sync(_differences)) == 1
    finally:
        await engine.dispose()


def _sqlite_revision(path: Path) -> str | None:
    conn = sqlite3.connect(path)
    try:
        return migrations.sqlite_revision(conn)
    finally:
        conn.close()


def _rows(path: Path) -> dict[str, int]:
    conn = sqlite3.connect(path)
    try:
        return {t: conn.execute(f"SELECT count(*) FROM {t}").fetchone()[0]
                for t in (*LEGACY_TABLES, "questions_fts")}
    finally:
        conn.close()


def test_a_legacy_app_db_is_stamped_and_upgraded_in_place(tmp_path: Path) -> None:
    """Recognised by its tables, stamped 0000_legacy, then brought to the baseline by ALTERs
    and additions: every row stays, the old application's own FTS table too, and the tables
    keep the legacy file's own definitions (a recreated table would have the project's)."""
    path = tmp_path / "app.db"
    _make_legacy_db(path)
    before, legacy_sql = _rows(path), _create_statements(path)
    assert _sqlite_revision(path) is None
    with sqlite_engine(path).connect() as conn:
        assert migrations.is_unrecorded_schema(conn)
    upgrade_sqlite(path)
    assert _rows(path) == before and before["questions"] == 6
    assert _sqlite_revision(path) == HEAD
    upgraded = _create_statements(path)
    for table in LEGACY_TABLES:
        assert upgraded[table].startswith(legacy_sql[table].rstrip(")").rstrip())
        assert upgraded[table].endswith("row_version INTEGER NOT NULL DEFAULT 0)")
    # the legacy `questions_fts` stays; the rest is the baseline's, object for object
    fresh = tmp_path / "fresh.db"
    upgrade_sqlite(fresh)
    assert set(upgraded) - set(_create_statements(fresh)) == {"questions_fts"}
    upgrade_sqlite(path)  # again: nothing to do
    assert _rows(path) == before


def _create_statements(path: Path) -> dict[str, str]:
    conn = sqlite3.connect(path)
    try:
        return {n: re.sub(r"\s+", " ", s) for n, s in conn.execute(
            "SELECT name, sql FROM sqlite_master WHERE type = 'table' AND name NOT LIKE "
            "'questions_fts_%' AND name NOT LIKE 'questions_search_%'")}
    finally:
        conn.close()


def _env(monkeypatch: pytest.MonkeyPatch, path: Path, dsn: str) -> None:
    monkeypatch.setenv("SQLITE_PATH", str(path))
    monkeypatch.setenv("POSTGRES_DSN", dsn)


def _set_revision(dsn: str, revision: str) -> None:
    async def go() -> None:
        conn = await asyncpg.connect(dsn)
        try:
            await conn.execute("UPDATE alembic_version SET version_num = $1", revision)
        finally:
            await conn.close()
    asyncio.run(go())


def test_schema_status_tells_each_stores_revision_and_whether_they_match(
        tmp_path: Path, pg_dsn: str, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "app.db"
    _env(monkeypatch, path, pg_dsn)
    runner = CliRunner()
    result = runner.invoke(cli_app, ["schema", "status", "--json"])
    assert result.exit_code == 0, result.output  # nothing anywhere: both unrecorded, alike
    assert json.loads(result.stdout) == {"sqlite": None, "postgres": None, "head": HEAD,
                                         "match": True, "at_head": False}
    assert not path.exists()  # status creates nothing
    assert runner.invoke(cli_app, ["schema", "init"]).exit_code == 0
    result = runner.invoke(cli_app, ["schema", "status", "--json"])
    assert result.exit_code == 0
    assert json.loads(result.stdout) == {"sqlite": HEAD, "postgres": HEAD,
                                         "head": HEAD, "match": True, "at_head": True}
    _set_revision(pg_dsn, LEGACY)
    result = runner.invoke(cli_app, ["schema", "status", "--json"])
    assert result.exit_code == 1
    assert json.loads(result.stdout)["match"] is False
    result = runner.invoke(cli_app, ["schema", "status"])
    assert result.stdout.splitlines() == [
        f"sqlite: {HEAD}", f"postgres: {LEGACY}",
        f"newest: {HEAD}; the stores DIFFER: run `cutover schema init`"]


async def test_the_repository_refuses_stores_at_different_revisions(
        tmp_path: Path, pg_dsn: str) -> None:
    settings = Settings(sqlite_path=tmp_path / "app.db", postgres_dsn=pg_dsn)
    async with open_repository(settings):
        pass
    await _record_postgres_revision(pg_dsn, LEGACY)
    with pytest.raises(SchemaMismatch) as caught:
        async with open_repository(settings, init_schema=False):
            pytest.fail("opened")
    message = str(caught.value)
    assert "\n" not in message and "cutover schema init" in message
    assert f"sqlite {HEAD}" in message and f"postgres {LEGACY}" in message
    async with open_repository(settings) as repo:  # init brings both to the newest
        assert await repo.stores["postgres"].schema_revision() == HEAD


async def test_the_repository_refuses_stores_behind_the_revision_its_code_needs(
        tmp_path: Path, pg_dsn: str) -> None:
    """Both stores alike, but older than this code: its writes could name a column they lack."""
    settings = Settings(sqlite_path=tmp_path / "app.db", postgres_dsn=pg_dsn)
    async with open_repository(settings):
        pass
    await _record_postgres_revision(pg_dsn, LEGACY)
    lite = sqlite3.connect(settings.sqlite_path)
    with lite:
        lite.execute("UPDATE alembic_version SET version_num = ?", (LEGACY,))
    lite.close()
    with pytest.raises(SchemaMismatch, match=f"at schema revision {LEGACY}, this cutover needs "
                                             f"{HEAD}: run `cutover schema init`"):
        async with open_repository(settings, init_schema=False):
            pytest.fail("opened")


def test_the_cli_says_the_mismatch_in_one_line_and_exits_2(
        tmp_path: Path, pg_dsn: str, monkeypatch: pytest.MonkeyPatch) -> None:
    _env(monkeypatch, tmp_path / "app.db", pg_dsn)
    runner = CliRunner()
    assert runner.invoke(cli_app, ["schema", "init"]).exit_code == 0
    _set_revision(pg_dsn, LEGACY)
    result = runner.invoke(cli_app, ["read-primary", "sqlite", "--force"])
    assert result.exit_code == 2
    assert result.output.count("\n") == 1 and "cutover schema init" in result.output
    assert f"postgres {LEGACY}" in result.output


async def test_a_store_at_a_revision_this_code_does_not_know_is_left_alone(
        pg_store: PostgresStore, pg_schema_dsn: str) -> None:
    """A newer release applied a revision this process's code does not know: its start-up
    changes nothing (revisions only add what older code ignores; docs/schema-changes.md)."""
    conn = await asyncpg.connect(pg_schema_dsn)
    try:
        await conn.execute("UPDATE alembic_version SET version_num = 'ffff_from_the_future'")
        await pg_store.init_schema()
        assert await pg_store.schema_revision() == "ffff_from_the_future"
    finally:
        await conn.close()


def _normal(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _imported_distributions() -> set[str]:
    """The distributions whose modules the shipped packages import."""
    owners = packages_distributions()
    found: set[str] = set()
    for package in ("proxy", "shadow", "metrics", "config"):
        for source in (ROOT / package).rglob("*.py"):
            for node in ast.walk(ast.parse(source.read_text())):
                names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                         else [node.module] if isinstance(node, ast.ImportFrom)
                         and node.module and node.level == 0 else [])
                for name in names:
                    found.update(_normal(d) for d in owners.get(name.split(".")[0], []))
    return found


def test_the_dependency_list_names_what_the_code_imports_and_nothing_else() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    declared = {_normal(re.split(r"[\[<>=~ ]", d)[0]) for d in project["dependencies"]}
    imported = _imported_distributions() - {"cutover"}
    assert "aiosqlite" not in declared  # docs/no-aiosqlite.md
    assert {"sqlalchemy", "alembic"} <= imported
    assert declared == imported


def test_the_entities_columns_come_from_the_tables() -> None:
    """One description: each entity's columns are its table's (less the write version), with
    the VARCHAR limits, parents and numeric scales the tables say, as plain strings."""
    from proxy.models import ENTITIES, TYPING_LOGS, USERS

    for entity in ENTITIES:
        table = metadata.tables[entity.table]
        assert entity.column_names == tuple(c.name for c in table.columns
                                            if c.name != "row_version")
        assert all(type(name) is str for name in entity.column_names)
    assert USERS.column("email").max_length == 255
    log_question = TYPING_LOGS.column("question_id")
    assert (log_question.references, log_question.on_delete, log_question.nullable) == (
        "questions", "SET NULL", True)
    assert (TYPING_LOGS.column("accuracy").scale, TYPING_LOGS.column("accuracy").maximum) == (
        2, 100)


async def _record_postgres_revision(dsn: str, revision: str) -> None:
    """Make the PostgreSQL database claim `revision` (as a store left behind would)."""
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute("UPDATE alembic_version SET version_num = $1", revision)
    finally:
        await conn.close()
