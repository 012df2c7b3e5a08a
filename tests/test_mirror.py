"""The inline mirror pipeline on a real PostgreSQL: batched, overlapped with the primary, and
never committing a write whose primary failed (issue 3, points 1 and 3)."""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime
from pathlib import Path

import asyncpg
import pytest
from prometheus_client import CollectorRegistry

from config import Settings
from proxy import ValidationError, open_repository
from proxy.mirror import MirrorPipeline
from proxy.models import USERS
from proxy.stores.base import ApplyOutcome, Mutation
from proxy.stores.postgres import PostgresStore
from tests.convergence import assert_converged


def _user(n: int) -> Mutation:
    now = datetime.now(UTC)
    row = {"id": uuid.uuid4(), "name": f"u{n}", "email": f"u{n}-{uuid.uuid4().hex}@x.io",
           "created_at": now, "updated_at": now}
    return Mutation("user", "insert", row["id"], 1, row)


async def _ids(dsn: str) -> set[uuid.UUID]:
    conn = await asyncpg.connect(dsn)
    try:
        return {r["id"] for r in await conn.fetch("SELECT id FROM users")}
    finally:
        await conn.close()


async def test_a_batch_commits_only_the_writes_whose_primary_committed(pg_dsn: str) -> None:
    store = PostgresStore(pg_dsn)
    await store.init_schema()
    pipeline = MirrorPipeline(store)
    loop = asyncio.get_running_loop()
    try:
        mutations = [_user(i) for i in range(3)]
        primaries = [loop.create_future() for _ in mutations]
        results = [pipeline.submit(m, p) for m, p in zip(mutations, primaries, strict=True)]
        await asyncio.sleep(0.3)  # the batch is applied and waits, uncommitted
        assert await _ids(pg_dsn) == set(), "visible before any primary committed"
        primaries[0].set_result(True)
        primaries[1].set_result(False)  # this primary failed: its row must never appear
        primaries[2].set_result(True)
        outcomes = await asyncio.gather(*results)
        assert [o.outcome if o else None for o in outcomes] == [
            ApplyOutcome.APPLIED, None, ApplyOutcome.APPLIED]
        assert await _ids(pg_dsn) == {mutations[0].row_id, mutations[2].row_id}
    finally:
        await pipeline.aclose()
        await store.close()


async def test_a_primary_never_confirmed_leaves_nothing(pg_dsn: str,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("proxy.mirror.CONFIRM_TIMEOUT_S", 0.5)
    store = PostgresStore(pg_dsn)
    await store.init_schema()
    pipeline = MirrorPipeline(store)
    try:
        lost: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        assert await pipeline.submit(_user(0), lost) is None
        assert await _ids(pg_dsn) == set()
    finally:
        await pipeline.aclose()
        await store.close()


async def test_a_rejected_primary_write_leaves_no_phantom_on_the_mirror(
    sqlite_path: Path, pg_dsn: str
) -> None:
    """Concurrent writes share a batch; the one SQLite rejects (a taken email) must not reach
    PostgreSQL, and the others must."""
    settings = Settings(sqlite_path=sqlite_path, postgres_dsn=pg_dsn, shadow_sample_rate=0.0)
    registry = CollectorRegistry()
    async with open_repository(settings, registry=registry) as repo:
        taken = await repo.create_user(name="first", email="taken@example.com")

        async def create(i: int) -> object:
            email = "taken@example.com" if i == 5 else f"w{i}@example.com"
            return await repo.create_user(name=f"w{i}", email=email)

        outcomes = await asyncio.gather(*(create(i) for i in range(12)),
                                        return_exceptions=True)
        assert isinstance(outcomes[5], ValidationError)
        assert sum(not isinstance(o, Exception) for o in outcomes) == 11
        postgres = repo.stores["postgres"]
        rows = await postgres.list_rows(USERS, None, limit=100, offset=0)
        assert [r["name"] for r in rows].count("w5") == 0
        assert len(rows) == 12 and taken.id in {r["id"] for r in rows}
        await assert_converged(repo.stores["sqlite"], postgres)
        await repo.replay_once()  # acknowledges what the mirror committed
        assert (await repo.outbox_stats())["postgres"].pending == 0
        failures = [s.value for m in registry.collect() for s in m.samples
                    if s.name == "cutover_mirror_failures_total"]
        assert sum(failures) == 0  # the rejected write did not fail the others' mirror


async def test_flush_wal_makes_asynchronous_commits_durable(pg_dsn: str) -> None:
    store = PostgresStore(pg_dsn)
    await store.init_schema()
    conn = await asyncpg.connect(pg_dsn)
    try:
        await conn.execute("BEGIN; SET LOCAL synchronous_commit TO off")
        await conn.execute("CREATE TABLE t (x int)")
        await conn.execute("COMMIT")
        written = await conn.fetchval("SELECT pg_current_wal_insert_lsn()::text")
        await store.flush_wal()
        flushed = await conn.fetchval(
            "SELECT pg_current_wal_flush_lsn() >= $1::text::pg_lsn", written)
        assert flushed
        # a database whose schema predates the counter table gets it on first use
        await conn.execute("DROP TABLE cutover_wal_flushes")
        await store.flush_wal()
        assert await conn.fetchval("SELECT flushes FROM cutover_wal_flushes") == 1
    finally:
        await conn.close()
        await store.close()


async def test_the_mirror_session_does_not_sit_idle_in_a_transaction(
    pg_dsn: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Between batches the next transaction is open (empty); idle, it is committed."""
    monkeypatch.setattr("proxy.stores.postgres.MIRROR_IDLE_S", 0.2)
    store = PostgresStore(pg_dsn)
    await store.init_schema()
    pipeline = MirrorPipeline(store)
    loop = asyncio.get_running_loop()
    conn = await asyncpg.connect(pg_dsn)
    states = ("SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
              "AND state = 'idle in transaction'")
    try:
        primary = loop.create_future()  # still committing: the batch waits in a transaction
        result = pipeline.submit(_user(0), primary)
        await asyncio.sleep(0.05)
        primary.set_result(True)
        assert await result is not None
        assert await conn.fetchval(states) == 1  # the next batch's transaction, opened ahead
        await asyncio.sleep(0.6)
        assert await conn.fetchval(states) == 0
        again = loop.create_future()
        again.set_result(True)
        assert await pipeline.submit(_user(1), again) is not None  # committed: no transaction
        assert await conn.fetchval(states) == 0
        assert len(await _ids(pg_dsn)) == 2
    finally:
        await conn.close()
        await pipeline.aclose()
        await store.close()
