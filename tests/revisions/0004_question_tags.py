"""A schema change shipped during the cutover (tests/test_schema_change.py): a nullable
`questions.tags` column on both stores, and a search configuration that keeps words with digits
as written (`mp3s`, no longer stemmed to `mp3`), which the stored `search_vector` of every
existing question must follow."""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from proxy.stores.migrations import run_sql

revision = "0004_question_tags"
down_revision = "0003_words_by_book"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # batch mode: SQLite adds a column in place; a change it cannot make in place rebuilds the
    # table (copy and rename), which drops the FTS triggers on questions: such a revision must
    # create them again
    with op.batch_alter_table("questions") as batch:
        batch.add_column(sa.Column("tags", sa.Text(), nullable=True))
    bind = op.get_bind()
    if bind.dialect.name == "postgresql":
        run_sql(bind, """
ALTER TEXT SEARCH CONFIGURATION cutover_search ALTER MAPPING FOR numword WITH simple;
-- a stored generated column is computed when its row is written, not when the configuration
-- changes: write every question again (same values: no version, no vocabulary change)
UPDATE questions SET question = question;
""")


def downgrade() -> None:
    raise NotImplementedError("the cutover's revisions go forward only")
