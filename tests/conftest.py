"""Shared fixtures: a real PostgreSQL server (embedded unless POSTGRES_DSN is set), a fresh
database per test, and a temp SQLite file per test.

The schema is built once per session on each backend (by the stores' own `init_schema`, whatever
lies behind it) and copied for each test that wants it: `pg_schema_dsn` is a database created
from a template database, `sqlite_store` opens a copy of an initialised file. Tests that check
schema creation itself keep the empty `pg_dsn` and `sqlite_path`.
"""

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
from tests.databases import copy_sqlite, fresh_database


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


@pytest.fixture(scope="session")
async def pg_template(pg_server_dsn: str) -> AsyncIterator[str]:
    """The name of a database holding the schema, built once per session: each
    `pg_schema_dsn` is a copy of it (`CREATE DATABASE ... TEMPLATE`)."""
    async with fresh_database(pg_server_dsn) as dsn:
        store = PostgresStore(dsn)
        try:
            await store.init_schema()
        finally:
            await store.close()  # a template must have no connections when it is copied
        yield urlsplit(dsn).path.lstrip("/")


@pytest.fixture
async def pg_dsn(pg_server_dsn: str) -> AsyncIterator[str]:
    """A fresh, empty database for one test, dropped after it."""
    async with fresh_database(pg_server_dsn) as dsn:
        yield dsn


@pytest.fixture
async def pg_schema_dsn(
    pg_server_dsn: str, pg_template: str, request: pytest.FixtureRequest
) -> AsyncIterator[str]:
    """A fresh database already holding the schema (a copy of the session's template)."""
    if "pg_dsn" in request.fixturenames:
        pytest.fail("a test gets either pg_dsn (empty) or pg_schema_dsn, not both: they "
                    "would be two databases")
    async with fresh_database(pg_server_dsn, template=pg_template) as dsn:
        yield dsn


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
    """Where the test's SQLite file goes (nothing there yet)."""
    return tmp_path / "app.db"


@pytest.fixture(scope="session")
async def sqlite_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A SQLite file holding the schema, built once per session; `copy_sqlite` copies it."""
    path = tmp_path_factory.mktemp("sqlite-template") / "app.db"
    store = SQLiteStore(path)
    try:
        await store.init_schema()
    finally:
        await store.close()
    return path


@pytest.fixture
def sqlite_schema_path(sqlite_path: Path, sqlite_template: Path) -> Path:
    """`sqlite_path`, now holding the schema (a copy of the session's initialised file)."""
    copy_sqlite(sqlite_template, sqlite_path)
    return sqlite_path


@pytest.fixture
async def sqlite_store(sqlite_schema_path: Path) -> AsyncIterator[SQLiteStore]:
    """A store on `sqlite_path`, holding the schema."""
    store = SQLiteStore(sqlite_schema_path)
    yield store
    await store.close()


@pytest.fixture
async def pg_store(pg_schema_dsn: str) -> AsyncIterator[PostgresStore]:
    """A store on `pg_schema_dsn`, holding the schema."""
    store = PostgresStore(pg_schema_dsn)
    yield store
    await store.close()


@pytest.fixture(params=["sqlite", "postgres"])
def store(request: pytest.FixtureRequest) -> SQLiteStore | PostgresStore:
    """Each test using this runs once on each store."""
    name = "sqlite_store" if request.param == "sqlite" else "pg_store"
    found: SQLiteStore | PostgresStore = request.getfixturevalue(name)
    return found


