"""The SQLite store's group commit, on a real database file: writes queued together share one
transaction, and each still succeeds or fails on its own."""

from __future__ import annotations

import asyncio
import sqlite3
import threading
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from proxy import SQLiteStore, StoreUnavailable, ValidationError
from proxy.models import USERS
from proxy.stores.threads import Outcome


@pytest.fixture
async def store(sqlite_schema_path: Path) -> AsyncIterator[SQLiteStore]:
    s = SQLiteStore(sqlite_schema_path, busy_timeout_ms=200)
    yield s
    await s.close()


class Groups:
    """Records the size of each group the writer thread commits."""

    def __init__(self, store: SQLiteStore) -> None:
        self.sizes: list[int] = []
        runner = store._commit_group

        def recording(bodies: list[Callable[[], Any]]) -> list[Outcome]:
            self.sizes.append(len(bodies))
            return runner(bodies)

        store._writer._group = recording


async def _hold_writer(store: SQLiteStore) -> tuple[threading.Event, asyncio.Future[None]]:
    """Keep the writer thread busy, so the writes submitted next queue up as one group."""
    started, release = threading.Event(), threading.Event()

    def hold(_: sqlite3.Connection) -> None:
        started.set()
        release.wait(5)

    held = asyncio.ensure_future(store._run(hold, write=True))
    await asyncio.to_thread(started.wait, 5)
    return release, held


async def _queued_together(store: SQLiteStore, *writes: Awaitable[Any]
                           ) -> list[asyncio.Future[Any]]:
    """Start `writes` while the writer thread is held, so that they queue as one group; then
    let it go. Returns their futures, in order."""
    release, held = await _hold_writer(store)
    futures = [asyncio.ensure_future(w) for w in writes]
    await asyncio.sleep(0.05)  # every write is queued behind the held writer
    release.set()
    await held
    return futures


def _user(name: str, email: str) -> dict[str, Any]:
    now = datetime.now(UTC)
    return {"id": uuid.uuid4(), "name": name, "email": email, "created_at": now,
            "updated_at": now}


def _emails(path: Path) -> list[str]:
    with sqlite3.connect(path) as conn:
        return sorted(r[0] for r in conn.execute("SELECT email FROM users"))


def _outbox(path: Path) -> list[tuple[str, str]]:
    with sqlite3.connect(path) as conn:
        return conn.execute("SELECT op, row_id FROM cutover_outbox ORDER BY seq").fetchall()


async def test_writes_waiting_together_commit_as_one_group_each_with_its_outbox_entry(
    store: SQLiteStore,
) -> None:
    groups = Groups(store)
    writes = await _queued_together(store, *(store.insert_row(
        USERS, _user(f"u{i}", f"u{i}@example.com"), clock=1, outbox_targets=("postgres",))
        for i in range(20)))
    results = await asyncio.gather(*writes)
    assert groups.sizes == [20]
    seqs = [w.seq for w in results]
    assert seqs == sorted(seqs) and len(set(seqs)) == 20  # one entry each, in submission order
    assert _emails(store.path) == sorted(f"u{i}@example.com" for i in range(20))
    ids = [str(w.row["id"]) for w in results if w.row]
    assert [row_id for _, row_id in _outbox(store.path)] == ids


async def test_a_write_its_first_statement_refuses_fails_alone_and_the_group_commits(
    store: SQLiteStore,
) -> None:
    await store.insert_row(USERS, _user("a", "taken@example.com"), clock=1)
    groups = Groups(store)
    before, duplicate, after = await _queued_together(store, *(store.insert_row(
        USERS, _user(name, email), clock=1, outbox_targets=("postgres",))
        for name, email in (("b", "b@example.com"), ("c", "taken@example.com"),
                            ("d", "d@example.com"))))
    await before
    with pytest.raises(ValidationError, match="email"):
        await duplicate
    await after
    assert groups.sizes == [3]
    assert _emails(store.path) == ["b@example.com", "d@example.com", "taken@example.com"]
    assert len(_outbox(store.path)) == 2  # the refused write left no outbox entry


async def test_a_write_failing_after_it_wrote_is_undone_whole_and_the_others_still_land(
    store: SQLiteStore,
) -> None:
    groups = Groups(store)

    def half_written(conn: sqlite3.Connection) -> None:
        conn.execute("INSERT INTO users (id, name, email, created_at, updated_at) VALUES "
                     "('6f1c6f36-8a7e-4a4f-9d1e-2b7e0c1d5a01', 'half', 'half@example.com', "
                     "'2026-01-01T00:00:00Z', '2026-01-01T00:00:00Z')")
        raise RuntimeError("failed after its first statement")

    first, broken, last = await _queued_together(
        store, store.insert_row(USERS, _user("b", "b@example.com"), clock=1),
        store._run(half_written, write=True, grouped=True),
        store.insert_row(USERS, _user("d", "d@example.com"), clock=1))
    await first
    with pytest.raises(RuntimeError, match="after its first statement"):
        await broken
    await last
    assert groups.sizes == [3]  # rolled back whole, then each ran in its own transaction
    assert _emails(store.path) == ["b@example.com", "d@example.com"]


async def test_a_database_locked_by_another_connection_fails_the_group_and_writes_nothing(
    store: SQLiteStore,
) -> None:
    await store.insert_row(USERS, _user("a", "a@example.com"), clock=1)
    other = sqlite3.connect(store.path, isolation_level=None)
    other.execute("BEGIN IMMEDIATE")
    try:
        writes = [store.insert_row(USERS, _user(f"u{i}", f"u{i}@example.com"), clock=1,
                                   outbox_targets=("postgres",)) for i in range(5)]
        outcomes = await asyncio.gather(*writes, return_exceptions=True)
        assert all(isinstance(o, StoreUnavailable) for o in outcomes), outcomes
    finally:
        other.execute("ROLLBACK")
        other.close()
    assert _emails(store.path) == ["a@example.com"]
    assert _outbox(store.path) == []
    await store.insert_row(USERS, _user("b", "b@example.com"), clock=1)
    assert _emails(store.path) == ["a@example.com", "b@example.com"]


class _Abort(BaseException):
    """Not an Exception: what a body should never raise, and the writer must survive."""


async def test_a_group_cut_short_by_a_base_exception_leaves_no_transaction_open(
    store: SQLiteStore,
) -> None:
    def abort(conn: sqlite3.Connection) -> None:
        raise _Abort

    first, broken = await _queued_together(
        store, store.insert_row(USERS, _user("b", "b@example.com"), clock=1),
        store._run(abort, write=True, grouped=True))
    outcomes = await asyncio.gather(first, broken, return_exceptions=True)
    assert all(isinstance(o, _Abort) for o in outcomes), outcomes
    # the writer goes on: the group's transaction was rolled back, not left open
    await store.insert_row(USERS, _user("d", "d@example.com"), clock=1)
    assert _emails(store.path) == ["d@example.com"]
