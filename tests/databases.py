"""Test databases: a fresh PostgreSQL database (empty, or a copy of a template) and a copy of a
SQLite file. The fixtures in conftest.py use these; module-scoped fixtures may too."""

from __future__ import annotations

import sqlite3
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import asyncpg


def with_database(dsn: str, database: str) -> str:
    """`dsn` pointed at another database of the same server."""
    return urlunsplit(urlsplit(dsn)._replace(path="/" + database))


async def _admin(server_dsn: str, sql: str) -> None:
    admin = await asyncpg.connect(server_dsn)
    try:
        await admin.execute(sql)
    finally:
        await admin.close()


@asynccontextmanager
async def fresh_database(server_dsn: str, *, template: str | None = None) -> AsyncIterator[str]:
    """A new database (a copy of `template` when given) for as long as the block runs; its
    DSN. It is dropped after; existing data is never touched."""
    name = f"cutover_test_{uuid.uuid4().hex[:12]}"
    copy = f' TEMPLATE "{template}"' if template else ""
    await _admin(server_dsn, f'CREATE DATABASE "{name}"{copy}')
    try:
        yield with_database(server_dsn, name)
    finally:
        await _admin(server_dsn, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def copy_sqlite(source: Path, target: Path) -> None:
    """Copy a SQLite database page by page (consistent whatever its journal holds)."""
    src, dst = sqlite3.connect(source), sqlite3.connect(target)
    try:
        src.backup(dst)
    finally:
        dst.close()
        src.close()
