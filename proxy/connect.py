"""Opening stores from settings (the embedded PostgreSQL default included), and for the shadow
worker's child."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

from config import Settings
from proxy.embedded import DEFAULT_DATA_DIR, embedded_dsn
from proxy.stores.postgres import PostgresStore
from proxy.stores.sqlite import SQLiteStore


async def resolve_dsn(settings: Settings, data_dir: Path = DEFAULT_DATA_DIR) -> str:
    """The DSN to connect to: the setting, or the embedded server's (started if needed)."""
    if settings.postgres_dsn != "embedded":
        return settings.postgres_dsn
    return await asyncio.to_thread(embedded_dsn, data_dir)


def make_store(
    settings: Settings, backend: str, dsn: str | None = None
) -> SQLiteStore | PostgresStore:
    if backend == "sqlite":
        return SQLiteStore(settings.sqlite_path)
    if backend == "postgres":
        return PostgresStore(dsn or settings.postgres_dsn)
    raise ValueError(f"backend must be 'sqlite' or 'postgres', not {backend!r}")


@asynccontextmanager
async def open_store(
    settings: Settings, backend: str
) -> AsyncIterator[SQLiteStore | PostgresStore]:
    """One store alone, opened from settings and closed on exit."""
    dsn = await resolve_dsn(settings) if backend == "postgres" else None
    store = make_store(settings, backend, dsn)
    try:
        yield store
    finally:
        await store.close()


@dataclass(frozen=True, slots=True)
class SearchStores:
    """What the shadow worker's child searches (`shadow.worker.OpenSearchers`): both stores,
    opened in the child, with no more connections or reader threads than its searches at once.
    Pickled to the child: plain fields only."""

    sqlite_path: Path | str
    dsn: str

    def __call__(self, concurrency: int) -> dict[str, SQLiteStore | PostgresStore]:
        return {"sqlite": SQLiteStore(self.sqlite_path, readers=concurrency),
                "postgres": PostgresStore(self.dsn, min_size=1, max_size=concurrency)}
