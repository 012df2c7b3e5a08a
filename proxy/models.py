"""Rows as frozen dataclasses, and the table specs both stores and the repository share.

Every entity's columns are the seed document's columns, in the seed's order, derived from the
tables in `proxy.tables` (the one description of them): an `Entity` adds the row class, the
owner its `list_*` filters by and what the repository needs to know about each column.
"""

from __future__ import annotations

import dataclasses
import uuid
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from enum import Enum
from typing import Any, Literal

import sqlalchemy as sa

from proxy import tables
from proxy.tables import INT_MAX, VERSION_COLUMN


@dataclass(frozen=True, slots=True)
class User:
    id: uuid.UUID
    name: str
    email: str
    created_at: datetime
    updated_at: datetime


@dataclass(frozen=True, slots=True)
class StudyBook:
    id: uuid.UUID
    user_id: uuid.UUID
    title: str
    description: str | None
    created_at: datetime
    updated_at: datetime


@dataclass(frozen=True, slots=True)
class Question:
    id: uuid.UUID
    study_book_id: uuid.UUID
    language: str
    category: str
    difficulty: str
    question: str
    answer: str
    created_at: datetime
    updated_at: datetime


@dataclass(frozen=True, slots=True)
class TypingLog:
    id: uuid.UUID
    user_id: uuid.UUID
    question_id: uuid.UUID | None
    wpm: int
    accuracy: Decimal
    took_ms: int
    created_at: datetime


@dataclass(frozen=True, slots=True)
class LearningEvent:
    id: uuid.UUID
    user_id: str
    app_id: str
    action: str
    object_id: str | None
    score: Decimal | None
    duration_ms: int | None
    occurred_at: datetime


MatchKind = Literal["fts", "fuzzy", "substring"]


@dataclass(frozen=True, slots=True)
class SearchResult:
    question_id: uuid.UUID
    question: str
    answer: str
    highlight: str
    score: float
    match_kind: MatchKind


Row = User | StudyBook | Question | TypingLog | LearningEvent


class Kind(Enum):
    """How a column's value is typed in Python (and normalised across the two engines)."""

    UUID = "uuid"
    TEXT = "text"
    INT = "int"
    DECIMAL = "decimal"
    TIMESTAMP = "timestamp"


@dataclass(frozen=True, slots=True)
class Column:
    name: str
    kind: Kind
    nullable: bool = False
    max_length: int | None = None  # VARCHAR limit in the seed; None = TEXT
    references: str | None = None  # table name of the parent
    on_delete: Literal["CASCADE", "SET NULL"] | None = None
    scale: int | None = None  # decimal places for NUMERIC
    precision: int | None = None
    minimum: int | None = None
    maximum: int | None = None


@dataclass(frozen=True, slots=True)
class Entity:
    """One table: its name, row class, columns and the owner it is listed by."""

    name: str  # the repository's method stem, e.g. "study_book"
    table: str
    row_type: type[Any]
    columns: tuple[Column, ...]
    owner: str | None  # column that `list_*` filters by
    order_by: str  # timestamp column that `list_*` orders by
    # derived once: every write reads them
    column_names: tuple[str, ...] = field(init=False, compare=False)
    column_set: frozenset[str] = field(init=False, compare=False)
    decimal_columns: frozenset[str] = field(init=False, compare=False)
    _by_name: dict[str, Column] = field(init=False, compare=False, repr=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "column_names", tuple(c.name for c in self.columns))
        object.__setattr__(self, "column_set", frozenset(self.column_names))
        object.__setattr__(self, "decimal_columns", frozenset(
            c.name for c in self.columns if c.kind is Kind.DECIMAL))
        object.__setattr__(self, "_by_name", {c.name: c for c in self.columns})

    @property
    def has_updated_at(self) -> bool:
        return "updated_at" in self.column_set

    @property
    def timestamp_columns(self) -> tuple[str, ...]:
        return tuple(c.name for c in self.columns if c.kind is Kind.TIMESTAMP)

    @property
    def writable(self) -> tuple[Column, ...]:
        """Columns a caller may set (not the id and not the timestamps)."""
        return tuple(c for c in self.columns if c.name != "id" and c.kind is not Kind.TIMESTAMP)

    def column(self, name: str) -> Column:
        return self._by_name[name]

    def make(self, values: dict[str, Any]) -> Any:
        return self.row_type(**{n: values[n] for n in self.column_names})


_KINDS: tuple[tuple[type[sa.types.TypeEngine[Any]], Kind], ...] = (
    (sa.Uuid, Kind.UUID), (sa.Numeric, Kind.DECIMAL), (sa.DateTime, Kind.TIMESTAMP),
    (sa.Integer, Kind.INT), (sa.String, Kind.TEXT),  # Text is a String
)


def _column(col: sa.Column[Any]) -> Column:
    """The repository's view of one column of `proxy.tables`."""
    kind = next(k for t, k in _KINDS if isinstance(col.type, t))
    fk = next(iter(col.foreign_keys), None)
    numeric = col.type if isinstance(col.type, sa.Numeric) else None
    return Column(
        # plain str: SQLAlchemy's names are a str subclass (quoted_name) orjson refuses as keys
        str(col.name), kind, nullable=bool(col.nullable),
        max_length=col.info.get("max_length", getattr(col.type, "length", None)),
        references=str(fk.column.table.name) if fk else None,
        on_delete=fk.ondelete if fk else None,  # type: ignore[arg-type]
        scale=numeric.scale if numeric else None,
        precision=numeric.precision if numeric else None,
        minimum=col.info.get("minimum"),
        maximum=col.info.get("maximum", INT_MAX if kind is Kind.INT else None),
    )


def _columns(table: sa.Table) -> tuple[Column, ...]:
    return tuple(_column(c) for c in table.columns if c.name != VERSION_COLUMN)


USERS = Entity("user", "users", User, _columns(tables.users),
               owner=None, order_by="created_at")
STUDY_BOOKS = Entity("study_book", "study_books", StudyBook, _columns(tables.study_books),
                     owner="user_id", order_by="created_at")
QUESTIONS = Entity("question", "questions", Question, _columns(tables.questions),
                   owner="study_book_id", order_by="created_at")
TYPING_LOGS = Entity("typing_log", "typing_logs", TypingLog, _columns(tables.typing_logs),
                     owner="user_id", order_by="created_at")
LEARNING_EVENTS = Entity("learning_event", "learning_events", LearningEvent,
                         _columns(tables.learning_events),
                         owner="user_id", order_by="occurred_at")

ENTITIES: tuple[Entity, ...] = (USERS, STUDY_BOOKS, QUESTIONS, TYPING_LOGS, LEARNING_EVENTS)
BY_NAME: dict[str, Entity] = {e.name: e for e in ENTITIES}
BY_TABLE: dict[str, Entity] = {e.table: e for e in ENTITIES}


def as_dict(row: Row) -> dict[str, Any]:
    """The row's columns as a dict (a shallow copy)."""
    return {f.name: getattr(row, f.name) for f in dataclasses.fields(row)}

#: for each table, the (child entity, column) pairs whose foreign key references it
REFERENCED_BY: dict[str, tuple[tuple[Entity, Column], ...]] = {
    e.table: tuple((child, c) for child in ENTITIES for c in child.columns
                   if c.references == e.table)
    for e in ENTITIES
}
