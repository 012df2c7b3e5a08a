"""The vocabulary's trigram index leads with the study book (PostgreSQL only).

A typo lookup reads the words of the searching user's books. Over the word alone, the index
returned every user's similar words and the plan ANDed them with the books' key: 6.5 ms a word
on 1,000 books of 3,330 questions each, 0.1 ms with the book leading (bench/search_plans.py on
bench/scale.py's 10M file).
The index is built in the revision's transaction: writes to the vocabulary (so to questions, on
PostgreSQL) wait for it, a few seconds per million vocabulary rows; run it while SQLite is the
primary and the mirror catches up after (docs/schema-changes.md).
"""

from __future__ import annotations

from pathlib import Path

from alembic import op

from proxy.stores.migrations import run_sql

revision = "0003_words_by_book"
down_revision = "0002_defer_words"
branch_labels = None
depends_on = None


def upgrade() -> None:
    bind = op.get_bind()
    if bind.dialect.name == "postgresql":
        run_sql(bind, Path(__file__).with_name("0003_words_by_book_postgres.sql").read_text())


def downgrade() -> None:
    raise NotImplementedError("the cutover's revisions go forward only")
