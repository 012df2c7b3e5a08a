"""Shared fixtures: a real PostgreSQL server (embedded unless POSTGRES_DSN is set), a fresh
database per test, and a temp SQLite file per test."""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import pytest

from proxy.stores.postgres import PostgresStore
from proxy.stores.sqlite import SQLiteStore


def _with_database(dsn: str, database: str) -> str:
    parts = urlsplit(dsn)
    return urlunsplit(parts._replace(path="/" + database))


@pytest.fixture(scope="session")
def pg_server_dsn(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A PostgreSQL server for the session: POSTGRES_DSN's, or an embedded one in a temp dir."""
    given = os.environ.get("POSTGRES_DSN", "").strip()
    if given and given != "embedded":
        yield given
        return
    from proxy.embedded import start_embedded

    server = start_embedded(tmp_path_factory.mktemp("pg") / "data", cleanup="delete")
    yield str(server.get_uri())
    server.cleanup()


@pytest.fixture
async def pg_dsn(pg_server_dsn: str) -> AsyncIterator[str]:
    """A fresh database for one test, dropped after it (existing data is never touched)."""
    name = f"cutover_test_{uuid.uuid4().hex[:12]}"
    admin = await asyncpg.connect(pg_server_dsn)
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
    finally:
        await admin.close()
    yield _with_database(pg_server_dsn, name)
    admin = await asyncpg.connect(pg_server_dsn)
    try:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await admin.close()


@pytest.fixture
async def owner_dsn(pg_dsn: str) -> AsyncIterator[str]:
    """The test's database reached as a role that owns it but is not a superuser, as on a
    managed server (it may create trusted extensions such as pg_trgm, not alter their objects)."""
    role = f"owner_{uuid.uuid4().hex[:10]}"
    database = urlsplit(pg_dsn).path.lstrip("/")
    admin = await asyncpg.connect(pg_dsn)
    try:
        await admin.execute(f"CREATE ROLE {role} LOGIN PASSWORD 'owner'")
        await admin.execute(f'ALTER DATABASE "{database}" OWNER TO {role}')
    finally:
        await admin.close()
    parts = urlsplit(pg_dsn)
    yield urlunsplit(parts._replace(netloc=f"{role}:owner@" + parts.netloc.rsplit("@", 1)[-1]))
    admin = await asyncpg.connect(pg_dsn)
    try:
        await admin.execute(f"SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                            f"WHERE usename = '{role}'")
        await admin.execute(f'ALTER DATABASE "{database}" OWNER TO CURRENT_USER')
        await admin.execute(f"REASSIGN OWNED BY {role} TO CURRENT_USER")
        await admin.execute(f"DROP OWNED BY {role}")
        await admin.execute(f"DROP ROLE {role}")
    finally:
        await admin.close()


@pytest.fixture
def sqlite_path(tmp_path: Path) -> Path:
    return tmp_path / "app.db"


@pytest.fixture
async def sqlite_store(sqlite_path: Path) -> AsyncIterator[SQLiteStore]:
    store = SQLiteStore(sqlite_path)
    await store.init_schema()
    yield store
    await store.close()


@pytest.fixture
async def pg_store(pg_dsn: str) -> AsyncIterator[PostgresStore]:
    store = PostgresStore(pg_dsn)
    await store.init_schema()
    yield store
    await store.close()


@pytest.fixture(params=["sqlite", "postgres"])
def store(request: pytest.FixtureRequest) -> SQLiteStore | PostgresStore:
    """Each test using this runs once on each store."""
    name = "sqlite_store" if request.param == "sqlite" else "pg_store"
    found: SQLiteStore | PostgresStore = request.getfixturevalue(name)
    return found


