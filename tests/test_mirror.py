"""The inline mirror pipeline on a real PostgreSQL: batched, fed only with committed primary
writes, never leaving its connection inside a transaction."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

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

pytestmark = pytest.mark.slow  # see pyproject.toml's markers


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


async def test_writes_submitted_together_share_a_batch_and_all_land(pg_schema_dsn: str) -> None:
    store = PostgresStore(pg_schema_dsn)
    pipeline = MirrorPipeline(store)
    conn = await asyncpg.connect(pg_schema_dsn)
    try:
        mutations = [_user(i) for i in range(5)]
        outcomes = await asyncio.gather(*(pipeline.submit(m) for m in mutations))
        assert [o.outcome for o in outcomes] == [ApplyOutcome.APPLIED] * 5
        assert await _ids(pg_schema_dsn) == {m.row_id for m in mutations}
        idle_in_tx = await conn.fetchval(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
            "AND state = 'idle in transaction'")
        assert idle_in_tx == 0
    finally:
        await conn.close()
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


async def test_flush_wal_makes_asynchronous_commits_durable(pg_schema_dsn: str) -> None:
    store = PostgresStore(pg_schema_dsn)
    conn = await asyncpg.connect(pg_schema_dsn)
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


@pytest.mark.parametrize("inline", [False, True], ids=["replay", "inline"])
@pytest.mark.parametrize("flip_during", [True, False], ids=["flip-during", "already-primary"])
async def test_a_mirror_write_beside_a_primary_write_never_brings_back_a_row_it_deleted(
    pg_schema_dsn: str, flip_during: bool, inline: bool,
) -> None:
    """A mirror batch to PostgreSQL holding an older image of a row, still running when
    PostgreSQL, primary (named by a flip meanwhile, or already: writes owed from before a
    forced flip), deletes that row. The primary writes READ COMMITTED, outside SSI: a batch
    whose snapshot predated the delete brought the row back on PostgreSQL alone
    (test_concurrent_history_with_flips_converges[postgres] failed so, about one history in
    twenty). Now the two never overlap; whichever goes first, the delete wins."""
    from proxy.control import Control

    store = PostgresStore(pg_schema_dsn)
    blocker = await asyncpg.connect(pg_schema_dsn)

    async def waiting() -> int:
        return int(await blocker.fetchval("SELECT count(*) FROM pg_locks WHERE NOT granted"))

    async def until(condition: Callable[[], Awaitable[bool]]) -> None:
        for _ in range(500):  # the order comes from the locks, not from sleeping
            if await condition():
                return
            await asyncio.sleep(0.01)

    try:
        await store.advance_control(Control("sqlite" if flip_during else "postgres", 1))
        held, gone = _user(1), _user(2)
        await store.apply([held, gone])  # both as the mirror holds them, version 1
        late = Mutation("user", "update", gone.row_id, 5, {**gone.row, "name": "late"})
        # the batch takes its snapshot, then waits for a row lock the test holds
        lock = blocker.transaction()
        await lock.start()
        await blocker.execute("SELECT 1 FROM users WHERE id = $1 FOR UPDATE", held.row_id)
        apply = store.apply_inline if inline else store.apply
        batch = asyncio.create_task(apply([
            Mutation("user", "update", held.row_id, 5, {**held.row, "name": "h"}), late]))
        await until(lambda: _true(waiting(), 1))

        async def primary_delete() -> None:
            if flip_during:
                await store.advance_control(Control("postgres", 2))
            await store.delete_row(USERS, gone.row_id, clock=10, epoch=2 if flip_during else 1)

        delete = asyncio.create_task(primary_delete())
        # the delete commits, or waits for the batch
        await until(lambda: _done_or(delete, waiting(), 2))
        await lock.rollback()
        await asyncio.gather(batch, delete)
        assert await store.get_row(USERS, gone.row_id) is None
        assert (await store.get_row(USERS, held.row_id) or {})["name"] == "h"
    finally:
        await blocker.close()
        await store.close()


async def _true(count: Awaitable[int], at_least: int) -> bool:
    return await count >= at_least


async def _done_or(task: asyncio.Task[None], count: Awaitable[int], at_least: int) -> bool:
    return task.done() or await count >= at_least


async def test_a_mirror_write_that_saw_postgres_primary_reads_again_once_it_holds_the_record(
    pg_schema_dsn: str,
) -> None:
    """An owed write, replayed while PostgreSQL is primary, queues for the record FOR UPDATE
    behind the flip that names SQLite; once it holds the record it must go on as a mirror write
    (SERIALIZABLE), not READ COMMITTED: a SERIALIZABLE mirror write that took its snapshot
    while waiting behind it missed its delete and brought the row back (found by a red team)."""
    from proxy.control import Control

    store = PostgresStore(pg_schema_dsn)
    share, rows, watch = [await asyncpg.connect(pg_schema_dsn) for _ in range(3)]

    async def waiting(at_least: int, task: asyncio.Task[Any] | None = None) -> None:
        for _ in range(500):
            if await watch.fetchval("SELECT count(*) FROM pg_locks WHERE NOT granted") \
                    >= at_least or (task is not None and task.done()):
                return
            await asyncio.sleep(0.01)

    try:
        await store.advance_control(Control("postgres", 1))
        held, x = _user(1), _user(2)
        await store.apply([held, x])
        holding = share.transaction()  # a mirror transaction in flight: the fence waits for it
        await holding.start()
        await share.execute("SELECT 1 FROM cutover_control WHERE id = 1 FOR SHARE")
        locked = rows.transaction()
        await locked.start()
        await rows.execute("SELECT 1 FROM users WHERE id = $1 FOR UPDATE", held.row_id)
        fence = asyncio.create_task(store.fence_control(Control("sqlite", 2), expect_epoch=1))
        await waiting(1)
        owed = asyncio.create_task(store.apply([
            Mutation("user", "update", held.row_id, 5, {**held.row, "name": "h"}),
            Mutation("user", "delete", x.row_id, 3, None)]))
        await waiting(2)  # behind the fence
        await holding.rollback()
        assert await asyncio.wait_for(fence, 5)
        await waiting(1)  # the owed write holds the record, waits for `held`
        stale = asyncio.create_task(store.apply_inline([
            Mutation("user", "update", x.row_id, 2, {**x.row, "name": "stale"})]))
        await waiting(2, stale)
        await locked.rollback()
        await asyncio.gather(owed, stale)
        assert await store.get_row(USERS, x.row_id) is None
    finally:
        for conn in (share, rows, watch):
            await conn.close()
        await store.close()


@pytest.mark.parametrize("inline", [False, True], ids=["replay", "inline"])
async def test_without_a_control_record_a_mirror_write_still_keeps_the_flip_waiting(
    pg_schema_dsn: str, inline: bool,
) -> None:
    """PostgreSQL down when the fleet started has no copy of the record, so there is no row to
    hold: the flip's INSERT of it must still wait for the mirror writes in flight."""
    from proxy.control import Control

    store = PostgresStore(pg_schema_dsn)
    blocker = await asyncpg.connect(pg_schema_dsn)
    try:
        assert await store.read_control() is None
        held, gone = _user(1), _user(2)
        await store.apply([held, gone])
        lock = blocker.transaction()
        await lock.start()
        await blocker.execute("SELECT 1 FROM users WHERE id = $1 FOR UPDATE", held.row_id)
        apply = store.apply_inline if inline else store.apply
        batch = asyncio.create_task(apply([
            Mutation("user", "update", held.row_id, 5, {**held.row, "name": "h"}),
            Mutation("user", "update", gone.row_id, 5, {**gone.row, "name": "late"})]))
        for _ in range(500):
            if await blocker.fetchval("SELECT count(*) FROM pg_locks WHERE NOT granted"):
                break
            await asyncio.sleep(0.01)

        async def flip_then_delete() -> None:
            await store.advance_control(Control("postgres", 2))
            await store.delete_row(USERS, gone.row_id, clock=10, epoch=2)

        flip = asyncio.create_task(flip_then_delete())
        for _ in range(500):
            if flip.done() or await blocker.fetchval(
                    "SELECT count(*) FROM pg_locks WHERE NOT granted") >= 2:
                break
            await asyncio.sleep(0.01)
        await lock.rollback()
        await asyncio.gather(batch, flip)
        assert await store.get_row(USERS, gone.row_id) is None
    finally:
        await blocker.close()
        await store.close()


async def test_a_transaction_its_process_left_open_is_ended_by_the_server(
    pg_schema_dsn: str,
) -> None:
    """A frozen process's open transaction would hold the control record, which a flip waits
    for: every connection the store opens has the server end it (IDLE_IN_TRANSACTION)."""
    from proxy.stores.postgres import IDLE_IN_TRANSACTION

    store = PostgresStore(pg_schema_dsn)
    try:
        assert await store._fetch("SHOW idle_in_transaction_session_timeout") == [
            (IDLE_IN_TRANSACTION,)]
        await store.apply_inline([_user(1)])
        assert store._mirror is not None
        conn = await store._mirror._connection()
        assert await conn.fetchval("SHOW idle_in_transaction_session_timeout") == \
            IDLE_IN_TRANSACTION
    finally:
        await store.close()
