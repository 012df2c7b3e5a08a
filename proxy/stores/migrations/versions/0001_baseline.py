"""The cutover's schema as it was when revisions began to be recorded (commit 062d1dc).

SQLite: row versions, the FTS5 search index and its triggers, the outbox, control record,
tombstones and `legacy_ids` added in place; the legacy ids of an upgraded app.db rewritten.
PostgreSQL: every table, function, trigger and index, with the seed's types, as frozen SQL
(0001_baseline_postgres.sql), not the current metadata or DDL: a revision must create what it
created on the day it was written. SQLite's in-place upgrade of a legacy file is code
(`sqlite_schema.add_cutover_schema`); tests/test_migrations.py compares both results with the
catalog snapshots of that day, so a change to it fails there and belongs in a new revision.
"""

from __future__ import annotations

from pathlib import Path

from alembic import op

from proxy.stores import sqlite_schema
from proxy.stores.migrations import run_sql

revision = "0001_baseline"
down_revision = "0000_legacy"
branch_labels = None
depends_on = None


def upgrade() -> None:
    bind = op.get_bind()
    if bind.dialect.name == "sqlite":
        sqlite_schema.add_cutover_schema(bind.connection.dbapi_connection)  # type: ignore[arg-type]
    else:
        run_sql(bind, Path(__file__).with_name("0001_baseline_postgres.sql").read_text())


def downgrade() -> None:
    raise NotImplementedError("the cutover's revisions go forward only")
