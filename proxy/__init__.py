"""The dual-write repository for the SQLite -> PostgreSQL cutover, and the two stores (the
application built on them, the `cutover` commands, the service and the demo, is `proxy.app`)."""

from proxy.connect import open_store
from proxy.errors import (
    CutoverError,
    FlipRefused,
    NotFoundError,
    OutcomeUnknown,
    SchemaMismatch,
    StoreUnavailable,
    ValidationError,
)
from proxy.legacy import LEGACY_NAMESPACE
from proxy.models import LearningEvent, Question, SearchResult, StudyBook, TypingLog, User
from proxy.repository import Repository, open_repository
from proxy.stores import PostgresStore, SQLiteStore, Store

__all__ = [
    "LEGACY_NAMESPACE",
    "CutoverError",
    "FlipRefused",
    "LearningEvent",
    "NotFoundError",
    "OutcomeUnknown",
    "PostgresStore",
    "Question",
    "Repository",
    "SQLiteStore",
    "SchemaMismatch",
    "SearchResult",
    "Store",
    "StoreUnavailable",
    "StudyBook",
    "TypingLog",
    "User",
    "ValidationError",
    "open_repository",
    "open_store",
]
