"""The two stores behind one protocol; nothing here knows there are two."""

from proxy.stores.base import ApplyOutcome, ApplyResult, Mutation, OutboxEntry, OutboxStats, Store
from proxy.stores.postgres import PostgresStore
from proxy.stores.sqlite import SQLiteStore

__all__ = [
    "ApplyOutcome",
    "ApplyResult",
    "Mutation",
    "OutboxEntry",
    "OutboxStats",
    "PostgresStore",
    "SQLiteStore",
    "Store",
]
