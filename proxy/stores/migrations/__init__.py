"""The schema's revisions on both stores, run by Alembic from code (no alembic.ini).

One revision chain serves both stores: a revision does what each engine needs (`op` for what
both share, SQL for what one engine says its own way), so both stores at the same revision hold
the same tables and columns, and `alembic_version` on each says which one that is.

- `0000_legacy`: the application's five tables as today's app.db holds them (SQLite; nothing on
  PostgreSQL). A database from before revisions were recorded (a legacy app.db, or a store the
  cutover's own unrecorded DDL made) is recognised by its `users` table and stamped here, never
  recreated.
- `0001_baseline`: what the cutover adds (row versions, the search index, outbox, control
  record, tombstones, `legacy_ids`); idempotent over any schema between those two.
- `0002_defer_words`: the vocabulary's triggers step aside in a backfill's sessions (PostgreSQL).
- `0003_words_by_book`: the vocabulary's trigram index leads with the study book (PostgreSQL).

SQLite runs each upgrade in one `BEGIN IMMEDIATE` transaction (SQLite's DDL is transactional),
PostgreSQL in one transaction under the advisory lock every schema change takes. A revision
alters a table through `op.batch_alter_table`: in place where SQLite can, else by copy and
rename (docs/schema-changes.md).
"""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import asyncpg
import sqlalchemy as sa
from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy.ext.asyncio import create_async_engine
from sqlalchemy.util import await_only

from proxy.stores.sqlite_schema import statements, use_wal

HERE = Path(__file__).resolve().parent
LEGACY = "0000_legacy"
BASELINE = "0001_baseline"
SCHEMA_LOCK = 7715001  # pg_advisory_xact_lock key: one schema change at a time
VERSION_TABLE = "alembic_version"


def config(version_locations: Sequence[Path] = ()) -> Config:
    """The Alembic configuration; `version_locations` adds revisions kept elsewhere (tests)."""
    cfg = Config()
    cfg.set_main_option("script_location", str(HERE))
    cfg.set_main_option("path_separator", "os")
    cfg.set_main_option("version_locations", os.pathsep.join(
        str(p) for p in (HERE / "versions", *version_locations)))
    return cfg


def head(version_locations: Sequence[Path] = ()) -> str:
    """The newest revision this code knows."""
    found = ScriptDirectory.from_config(config(version_locations)).get_current_head()
    assert found is not None
    return found


def older_than(revision: str) -> set[str | None]:
    """The revisions before `revision` (None included: a store from before revisions)."""
    script = ScriptDirectory.from_config(config())
    return {None, *(r.revision for r in script.iterate_revisions(revision, "base")
                    if r.revision != revision)}


def _upgrade(conn: sa.Connection, cfg: Config, target: str) -> None:
    """Stamp a database from before revisions, then upgrade it, in the caller's transaction.

    A store already at a revision this code does not know (a newer one, applied while this
    process's version still runs) is left alone: revisions only ever add what older code
    ignores, until that code is gone (docs/schema-changes.md)."""
    if conn.dialect.name == "postgresql":
        conn.exec_driver_sql(f"SELECT pg_advisory_xact_lock({SCHEMA_LOCK})")
    current = MigrationContext.configure(conn).get_current_revision()
    script = ScriptDirectory.from_config(cfg)
    if current is not None and current not in {r.revision for r in script.walk_revisions()}:
        return
    cfg.attributes["connection"] = conn
    if is_unrecorded_schema(conn):
        command.stamp(cfg, LEGACY)
    command.upgrade(cfg, target)


def is_unrecorded_schema(conn: sa.Connection) -> bool:
    """A database from before revisions were recorded: the application's tables, no revision."""
    return (MigrationContext.configure(conn).get_current_revision() is None
            and sa.inspect(conn).has_table("users"))


def sqlite_engine(path: Path) -> sa.Engine:
    """An engine whose transactions are `BEGIN IMMEDIATE` (DDL included: pysqlite would
    otherwise begin only before DML), foreign keys off (a legacy file may hold orphans)."""

    def connect() -> sqlite3.Connection:
        conn = sqlite3.connect(path, timeout=30, isolation_level=None, check_same_thread=False)
        conn.execute("PRAGMA foreign_keys=OFF")
        use_wal(conn, 30)  # the file the stores open is in WAL mode from its creation
        return conn

    engine = sa.create_engine("sqlite://", creator=connect, poolclass=sa.NullPool)
    sa.event.listen(engine, "begin", lambda c: c.exec_driver_sql("BEGIN IMMEDIATE"))
    return engine


def upgrade_sqlite(path: Path, target: str = "head",
                   version_locations: Sequence[Path] = ()) -> None:
    """Bring the SQLite file at `path` to `target` (created when missing)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    engine = sqlite_engine(path)
    try:
        with engine.begin() as conn:
            _upgrade(conn, config(version_locations), target)
    finally:
        engine.dispose()


async def upgrade_postgres(dsn: str, target: str = "head",
                           version_locations: Sequence[Path] = ()) -> None:
    """Bring the PostgreSQL database at `dsn` to `target`."""

    async def connect() -> Any:
        return await asyncpg.connect(dsn, timeout=10)

    engine = create_async_engine("postgresql+asyncpg://", async_creator=connect,
                                 poolclass=sa.NullPool)
    try:
        async with engine.begin() as conn:
            await conn.run_sync(_upgrade, config(version_locations), target)
    finally:
        await engine.dispose()


def run_sql(conn: sa.Connection, script: str) -> None:
    """Run a script of several statements (trigger and function bodies whole) in the
    migration's transaction."""
    raw: Any = conn.connection.driver_connection
    if conn.dialect.name == "postgresql":
        await_only(raw.execute(script))  # asyncpg's simple protocol takes a whole script
        return
    for statement in statements(script):
        raw.execute(statement)


def sqlite_revision(conn: sqlite3.Connection) -> str | None:
    """The revision recorded in a SQLite file (None before revisions were recorded)."""
    try:
        row = conn.execute(f"SELECT version_num FROM {VERSION_TABLE}").fetchone()
    except sqlite3.OperationalError:
        return None
    return None if row is None else str(row[0])


async def postgres_revision(conn: asyncpg.Connection) -> str | None:
    """The revision recorded in a PostgreSQL database (None before revisions were recorded)."""
    if await conn.fetchval("SELECT to_regclass($1)", VERSION_TABLE) is None:
        return None
    found = await conn.fetchval(f"SELECT version_num FROM {VERSION_TABLE}")
    return None if found is None else str(found)
