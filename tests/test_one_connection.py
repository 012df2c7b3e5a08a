"""A PostgreSQL store of one connection (`max_size=1`, the shadow worker's child's) holds it
rather than pooling it: callers take turns, a cancelled statement or a transaction left open
does not spoil the next call, and a lost connection is replaced. On a real server."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator

import asyncpg
import pytest

from proxy.errors import StoreUnavailable
from proxy.stores.postgres import PostgresStore

pytestmark = pytest.mark.slow  # see pyproject.toml's markers


@pytest.fixture
async def one(pg_schema_dsn: str) -> AsyncIterator[PostgresStore]:
    store = PostgresStore(pg_schema_dsn, min_size=1, max_size=1)
    yield store
    await store.close()


async def backend_pid(store: PostgresStore) -> int:
    rows = await store._fetch("SELECT pg_backend_pid() AS pid")
    return int(rows[0]["pid"])


async def sessions(admin: asyncpg.Connection, database: str) -> list[asyncpg.Record]:
    return list(await admin.fetch(
        "SELECT pid, state, query FROM pg_stat_activity WHERE datname = $1 "
        "AND pid <> pg_backend_pid()", database))


async def test_calls_take_turns_on_one_held_connection(
    one: PostgresStore, pg_schema_dsn: str
) -> None:
    first = await backend_pid(one)
    results = await asyncio.gather(*(
        one._fetch("SELECT pg_backend_pid() AS pid, pg_sleep(0.02)") for _ in range(5)))
    assert {r[0]["pid"] for r in results} == {first}
    assert await one.search("anything", uuid.uuid4(), 10) == []
    admin = await asyncpg.connect(pg_schema_dsn)
    try:
        database = await admin.fetchval("SELECT current_database()")
        assert [s["pid"] for s in await sessions(admin, database)] == [first]
    finally:
        await admin.close()


async def test_a_statement_cancelled_at_its_deadline_frees_the_connection(
    one: PostgresStore, pg_schema_dsn: str
) -> None:
    pid = await backend_pid(one)
    with pytest.raises(TimeoutError):
        async with asyncio.timeout(0.2):
            await one._fetch("SELECT pg_sleep(30)")
    async with asyncio.timeout(5):  # not after the 30 s: the server cancelled it
        assert await backend_pid(one) == pid
    admin = await asyncpg.connect(pg_schema_dsn)
    try:
        database = await admin.fetchval("SELECT current_database()")
        assert not [s for s in await sessions(admin, database) if "pg_sleep" in s["query"]
                    and s["state"] == "active"]
    finally:
        await admin.close()


async def test_a_transaction_left_open_is_rolled_back_on_release(one: PostgresStore) -> None:
    connections = await one._get_pool()
    async with connections.acquire() as conn:
        await conn.execute("BEGIN")
        await conn.execute("CREATE TABLE left_open (x int)")
    async with connections.acquire() as conn:
        assert not conn.is_in_transaction()
        assert await conn.fetchval("SELECT to_regclass('left_open')") is None


async def test_a_lost_connection_is_replaced(one: PostgresStore, pg_schema_dsn: str) -> None:
    pid = await backend_pid(one)
    admin = await asyncpg.connect(pg_schema_dsn)
    try:
        # returns once the backend is gone (its socket closed), at most 10 s
        assert await admin.fetchval("SELECT pg_terminate_backend($1, 10000)", pid)
    finally:
        await admin.close()
    await asyncio.sleep(0.1)  # the store's loop reads the end of its connection
    replaced = await backend_pid(one)  # a closed connection is not used again
    assert replaced != pid
    # one closed while a caller holds it is dropped on release: the next call opens another
    async with (await one._get_pool()).acquire() as conn:
        conn.terminate()
    await one.ping()
    assert await backend_pid(one) not in (pid, replaced)


async def test_an_unreachable_server_is_unavailable_not_a_crash() -> None:
    store = PostgresStore("postgresql://nobody@127.0.0.1:9/none", min_size=1, max_size=1)
    try:
        with pytest.raises(StoreUnavailable):
            await store.ping()
    finally:
        await store.close()


async def test_first_calls_together_open_one_pool(pg_dsn: str) -> None:
    """Calls that came together as a store's first each made a pool, and all but one were
    left open: more connections than `max_size`, kept (and reconnecting) after `close`."""
    store = PostgresStore(pg_dsn, min_size=2, max_size=3)
    admin = await asyncpg.connect(pg_dsn)
    try:
        await asyncio.gather(*(store.ping() for _ in range(8)))
        held = await admin.fetchval(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
            "AND pid <> pg_backend_pid()")
        await store.close()
    finally:
        await admin.close()
    assert held <= 3
