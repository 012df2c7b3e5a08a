"""`cutover reconcile`: pending mirror writes are replayed, and rows made different on either
side are repaired from the primary, after which verify agrees."""

from __future__ import annotations

import asyncio
import sqlite3
import uuid
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from typer.testing import CliRunner

from proxy.app.cli import app
from proxy.deadletters import MAX_ATTEMPTS
from proxy.migrate.reconcile import drain_outboxes, run_reconcile
from proxy.migrate.verify import run_verify
from proxy.models import USERS
from proxy.stores.postgres import PostgresStore
from proxy.stores.sqlite import SQLiteStore
from tests.test_verify import both, lite_exec, pg_exec

__all__ = ["both"]  # the fixture, shared with test_verify


async def test_pending_mirror_writes_are_replayed_both_ways(
        sqlite_store: SQLiteStore, pg_store: PostgresStore) -> None:
    a = uuid.uuid4()
    row = {"id": a, "name": "A", "email": "a@example.com"}
    stamp = {"created_at": _now(), "updated_at": _now()}
    await sqlite_store.insert_row(USERS, {**row, **stamp}, clock=10,
                                  outbox_targets=["postgres"])
    b = uuid.uuid4()
    await pg_store.insert_row(USERS, {"id": b, "name": "B", "email": "b@example.com", **stamp},
                              clock=11, outbox_targets=["sqlite"])
    report = await drain_outboxes(sqlite_store, pg_store)
    assert report["sqlite->postgres"]["applied"] == 1
    assert report["postgres->sqlite"]["applied"] == 1
    assert (await pg_store.get_user(a)).name == "A"
    assert (await sqlite_store.get_user(b)).name == "B"
    assert (await sqlite_store.outbox_stats("postgres")).pending == 0
    assert (await pg_store.outbox_stats("sqlite")).pending == 0


async def test_a_write_that_keeps_failing_becomes_a_dead_letter(
        sqlite_store: SQLiteStore, pg_store: PostgresStore, pg_schema_dsn: str) -> None:
    await pg_exec(pg_schema_dsn, "ALTER TABLE users ADD CONSTRAINT no_bob CHECK (name <> 'bob')")
    stamp = {"created_at": _now(), "updated_at": _now()}
    await sqlite_store.insert_row(
        USERS, {"id": uuid.uuid4(), "name": "bob", "email": "bob@example.com", **stamp},
        clock=12, outbox_targets=["postgres"])
    for attempt in range(1, MAX_ATTEMPTS + 1):
        report = await drain_outboxes(sqlite_store, pg_store)
        # a constraint only PostgreSQL enforces: retried, then given up on
        expected = "dead" if attempt == MAX_ATTEMPTS else "failed"
        assert report["sqlite->postgres"][expected] == 1, (attempt, report)
    stats = await sqlite_store.outbox_stats("postgres")
    assert (stats.pending, stats.dead) == (0, 1)
    [dead] = await sqlite_store.outbox_dead("postgres", 10)
    assert dead.attempts == MAX_ATTEMPTS and "no_bob" in (dead.last_error or "")


async def corrupt_both_sides(sqlite_path: Path, pg_dsn: str) -> None:
    lite = sqlite3.connect(sqlite_path)
    q1, q2, q3 = (r[0] for r in lite.execute("SELECT id FROM questions ORDER BY id LIMIT 3"))
    # not q2's own log, which the deletion below changes too (ids are random)
    log = lite.execute("SELECT id FROM typing_logs WHERE question_id != ? ORDER BY id LIMIT 1",
                       (q2,)).fetchone()[0]
    lite.close()
    # on PostgreSQL: a changed text, a missing row, an extra row, a wrong decimal
    await pg_exec(pg_dsn, "UPDATE questions SET answer = 'tampered' WHERE id = $1",
                  uuid.UUID(q1))
    await pg_exec(pg_dsn, "DELETE FROM questions WHERE id = $1", uuid.UUID(q2))
    await pg_exec(pg_dsn, "INSERT INTO learning_events (id, user_id, app_id, action, "
                          "occurred_at) VALUES ($1, 'x', 'app', 'view', now())", uuid.uuid4())
    await pg_exec(pg_dsn, "UPDATE typing_logs SET accuracy = 12.34 WHERE id = $1",
                  uuid.UUID(log))
    # on SQLite: a changed text, a missing row, an extra row, a wrong decimal
    lite_exec(sqlite_path, "UPDATE questions SET question = 'edited' WHERE id = ?", q3)
    lite_exec(sqlite_path, "DELETE FROM learning_events WHERE id = "
                           "(SELECT id FROM learning_events ORDER BY id LIMIT 1)")
    lite_exec(sqlite_path, "INSERT INTO users (id, name, email, created_at, updated_at) "
                           "VALUES (?, 'extra', 'extra@example.com', '2024-01-01T00:00:00Z', "
                           "'2024-01-01T00:00:00Z')", str(uuid.uuid4()))
    lite_exec(sqlite_path, "UPDATE learning_events SET score = 99.99 WHERE id = "
                           "(SELECT id FROM learning_events ORDER BY id LIMIT 1)")


@pytest.mark.slow
async def test_repairs_from_sqlite_make_verify_agree(both: Any, sqlite_path: Path,
                                                     pg_dsn: str) -> None:
    await corrupt_both_sides(sqlite_path, pg_dsn)
    before = await run_verify(sqlite_path, pg_dsn, queries=0)
    assert not before.ok and before.totals["differences"] >= 7
    report = await run_reconcile(sqlite_path, pg_dsn, "sqlite")
    assert report.after.ok, report.after.to_json()
    assert report.failed == []
    # 4 + 3 rows copied (one a typing log the deleted question took with it by cascade), the
    # extra row and the one SQLite lost deleted
    assert report.repaired == {"copied to postgres": 7, "deleted on postgres": 2}
    after = await run_verify(sqlite_path, pg_dsn, queries=0)
    assert after.ok
    # the primary's values won
    conn = await asyncpg.connect(pg_dsn)
    try:
        assert await conn.fetchval("SELECT count(*) FROM questions WHERE answer = 'tampered'") == 0
        assert await conn.fetchval("SELECT count(*) FROM questions WHERE question = 'edited'") == 1
        assert await conn.fetchval("SELECT count(*) FROM users WHERE name = 'extra'") == 1
    finally:
        await conn.close()


@pytest.mark.slow
def test_repairs_from_postgres_when_the_primary_file_says_so(
        both: Any, sqlite_path: Path, pg_dsn: str, tmp_path: Path) -> None:
    asyncio.run(corrupt_both_sides(sqlite_path, pg_dsn))
    primary_file = tmp_path / "primary"
    primary_file.write_text("postgres\n")
    env = {"POSTGRES_DSN": pg_dsn, "SQLITE_PATH": str(sqlite_path), "READ_PRIMARY": "sqlite",
           "READ_PRIMARY_FILE": str(primary_file)}
    result = CliRunner().invoke(app, ["reconcile"], env=env)
    assert result.exit_code == 0, result.output
    assert "primary: postgres" in result.stdout
    assert "the stores agree" in result.stdout
    assert CliRunner().invoke(app, ["verify"], env=env).exit_code == 0
    lite = sqlite3.connect(sqlite_path)
    assert lite.execute("SELECT count(*) FROM questions WHERE answer = 'tampered'").fetchone() \
        == (1,)  # PostgreSQL's value won
    assert lite.execute("SELECT count(*) FROM users WHERE name = 'extra'").fetchone() == (0,)
    lite.close()


def test_a_bad_primary_file_refuses_to_guess(both: Any, sqlite_path: Path, pg_dsn: str,
                                             tmp_path: Path) -> None:
    primary_file = tmp_path / "primary"
    primary_file.write_text("mysql")
    result = CliRunner().invoke(app, ["reconcile"], env={
        "POSTGRES_DSN": pg_dsn, "SQLITE_PATH": str(sqlite_path),
        "READ_PRIMARY_FILE": str(primary_file)})
    assert result.exit_code == 2
    assert "READ_PRIMARY_FILE" in result.output and "mysql" in result.output


def _now() -> Any:
    from proxy.codec import now_utc

    return now_utc()

