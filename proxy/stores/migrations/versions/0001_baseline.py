"""The cutover's schema as it was when revisions began to be recorded (commit 062d1dc).

SQLite: row versions, the FTS5 search index and its triggers, the outbox, control record,
tombstones and `legacy_ids` added in place; the legacy ids of an upgraded app.db rewritten.
PostgreSQL: every table, function, trigger and index, with the seed's types. Both are frozen SQL,
not the current metadata: a revision must create what it created on the day it was written.
"""

from __future__ import annotations

from alembic import op

from proxy.stores import postgres_schema, sqlite_schema
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
        run_sql(bind, postgres_schema.DDL + postgres_schema.SEARCH_INDEXES)


def downgrade() -> None:
    raise NotImplementedError("the cutover's revisions go forward only")
