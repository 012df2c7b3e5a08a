"""The vocabulary's trigger functions step aside in a backfill's sessions (PostgreSQL only).

A session with `cutover.defer_words` on leaves the typo vocabulary alone: the backfill loads
questions so and counts every book's words once, at the end, in one set-based pass
(docs/backfill-at-scale.md), instead of a statement per batch planned on the statistics of a
table growing under it. Other sessions, the repository's writes among them, count as before.
"""

from __future__ import annotations

from pathlib import Path

from alembic import op

from proxy.stores.migrations import run_sql

revision = "0002_defer_words"
down_revision = "0001_baseline"
branch_labels = None
depends_on = None


def upgrade() -> None:
    bind = op.get_bind()
    if bind.dialect.name == "postgresql":
        run_sql(bind, Path(__file__).with_name("0002_defer_words_postgres.sql").read_text())


def downgrade() -> None:
    raise NotImplementedError("the cutover's revisions go forward only")
