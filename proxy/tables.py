"""The five tables, once: SQLAlchemy Core `Table`s in one `MetaData`.

`proxy.models` derives every entity's columns from these (kind, VARCHAR limit, NOT NULL, parent,
ON DELETE, numeric scale, bounds), and the stores, validation, the codec and the service derive
theirs from `proxy.models`. Each type says what PostgreSQL holds (the seed's types) and, as a
variant, what the legacy SQLite file holds (TEXT, INTEGER, REAL). What only one engine has
(FTS5 tables and their triggers, `search_vector`, the pg_trgm vocabulary, the outbox, the
control record) stays SQL inside the migrations (`proxy/stores/migrations`); a test checks that
this metadata and a migrated database agree (`alembic.autogenerate.compare_metadata`).

`info` carries what the database does not enforce but the repository does: `minimum`,
`maximum`, and `max_length` for a TEXT column the repository bounds anyway.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import (
    REAL,
    BigInteger,
    Column,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    Numeric,
    String,
    Table,
    Text,
    Uuid,
)
from sqlalchemy.types import TypeEngine

metadata = MetaData()

#: the repository's write version on every table (not a column of the rows it returns)
VERSION_COLUMN = "row_version"
INT_MAX = 2**31 - 1


def _uuid() -> TypeEngine[Any]:
    return Uuid().with_variant(Text(), "sqlite")


def _varchar(length: int) -> TypeEngine[str]:
    return String(length).with_variant(Text(), "sqlite")


def _timestamp() -> TypeEngine[Any]:
    return DateTime(timezone=True).with_variant(Text(), "sqlite")


def _decimal(precision: int, scale: int) -> TypeEngine[Any]:
    return Numeric(precision, scale).with_variant(REAL(), "sqlite")


def _id() -> Column[object]:
    return Column("id", _uuid(), primary_key=True)


def _parent(name: str, parent: str, on_delete: str, *, nullable: bool = False) -> Column[object]:
    return Column(name, _uuid(), ForeignKey(f"{parent}.id", ondelete=on_delete),
                  nullable=nullable)


def _version() -> Column[int]:
    return Column(VERSION_COLUMN, BigInteger().with_variant(Integer(), "sqlite"),
                  nullable=False, server_default="0")


def _at(name: str) -> Column[object]:
    return Column(name, _timestamp(), nullable=False)


users = Table(
    "users", metadata,
    _id(),
    Column("name", _varchar(255), nullable=False),
    Column("email", _varchar(255), nullable=False, unique=True),
    _at("created_at"), _at("updated_at"),
    _version(),
)
study_books = Table(
    "study_books", metadata,
    _id(),
    _parent("user_id", "users", "CASCADE"),
    Column("title", _varchar(500), nullable=False),
    Column("description", Text()),
    _at("created_at"), _at("updated_at"),
    _version(),
    Index("idx_study_books_user_id", "user_id"),
)
questions = Table(
    "questions", metadata,
    _id(),
    _parent("study_book_id", "study_books", "CASCADE"),
    Column("language", _varchar(50), nullable=False),
    Column("category", _varchar(100), nullable=False),
    Column("difficulty", _varchar(50), nullable=False),
    # TEXT in the seed; bounded by the repository because PostgreSQL's tsvector cannot index
    # more than 1 MB of text, and a question that only one store can hold would never converge
    Column("question", Text(), nullable=False, info={"max_length": 100_000}),
    Column("answer", Text(), nullable=False, info={"max_length": 100_000}),
    _at("created_at"), _at("updated_at"),
    _version(),
    Index("idx_questions_study_book_id", "study_book_id"),
)
typing_logs = Table(
    "typing_logs", metadata,
    _id(),
    _parent("user_id", "users", "CASCADE"),
    _parent("question_id", "questions", "SET NULL", nullable=True),
    Column("wpm", Integer(), nullable=False, info={"minimum": 0}),
    Column("accuracy", _decimal(5, 2), nullable=False, info={"minimum": 0, "maximum": 100}),
    Column("took_ms", Integer(), nullable=False, info={"minimum": 0}),
    _at("created_at"),
    _version(),
    Index("idx_typing_logs_user_id", "user_id"),
    Index("idx_typing_logs_question_id", "question_id"),
)
learning_events = Table(
    "learning_events", metadata,
    _id(),
    Column("user_id", _varchar(255), nullable=False),
    Column("app_id", _varchar(100), nullable=False),
    Column("action", _varchar(100), nullable=False),
    Column("object_id", _varchar(255)),
    Column("score", _decimal(10, 2)),
    Column("duration_ms", Integer(), info={"minimum": 0}),
    _at("occurred_at"),
    _version(),
)
Index("idx_learning_events_user_occurred",
      learning_events.c.user_id, learning_events.c.occurred_at.desc())

#: what each engine adds to these tables in SQL of its own (see the migrations): not described
#: here, and left out when this metadata is compared with a database
DIALECT_ONLY = frozenset({
    "search_vector",  # PostgreSQL: the generated tsvector of a question
    "idx_questions_search_vector", "idx_typing_logs_created_at", "idx_learning_events_action",
})
