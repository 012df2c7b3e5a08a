"""The application's five tables as today's app.db holds them (SQLite); nothing on PostgreSQL.

A database from before revisions were recorded is stamped here (see the package docstring)."""

from __future__ import annotations

from alembic import op

from proxy.stores.migrations import run_sql
from proxy.stores.sqlite_schema import LEGACY_TABLES

revision = "0000_legacy"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    bind = op.get_bind()
    if bind.dialect.name == "sqlite":
        run_sql(bind, LEGACY_TABLES)


def downgrade() -> None:
    raise NotImplementedError("the cutover's revisions go forward only")
