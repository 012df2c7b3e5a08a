"""`cutover verify`: agreeing stores exit 0; every kind of difference is found, in bounded
reads; backfill findings and pending mirror writes are listed apart."""

from __future__ import annotations

import asyncio
import json
import sqlite3
import uuid
from collections import Counter
from collections.abc import AsyncIterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from typer.testing import CliRunner

from proxy.app.cli import app
from proxy.legacy import legacy_uuid
from proxy.migrate import verify as verify_mod
from proxy.migrate.backfill import open_pool, run_backfill
from proxy.migrate.verify import compare_stores, run_verify
from proxy.models import USERS
from proxy.stores.postgres import PostgresStore
from proxy.stores.sqlite import SQLiteStore
from tests.test_backfill import LegacyDB

pytestmark = pytest.mark.slow  # see pyproject.toml's markers


async def populate(store: SQLiteStore, *, users: int = 3, questions: int = 20) -> list[Any]:
    """Rows written through the SQLite store, as the application writes them."""
    made = []
    for i in range(users):
        user = await store.create_user(name=f"U{i}", email=f"u{i}@example.com")
        book = await store.create_study_book(user_id=user.id, title=f"Book {i}")
        for j in range(questions):
            q = await store.create_question(
                study_book_id=book.id, language="en", category="python", difficulty="easy",
                question=f"What does json.dumps do {i} {j}?", answer="Serialize obj to JSON.")
            made.append(q)
            await store.record_typing_log(user_id=user.id, question_id=q.id, wpm=60 + j,
                                          accuracy=Decimal("97.50"), took_ms=1000)
        await store.record_learning_event(user_id=str(user.id), app_id="app", action="view",
                                          score=Decimal("12.25"))
    return made


@pytest.fixture
async def both(sqlite_store: SQLiteStore, sqlite_path: Path, pg_dsn: str,
               tmp_path: Path) -> AsyncIterator[tuple[SQLiteStore, PostgresStore]]:
    """Two stores holding the same rows: written to SQLite, then backfilled."""
    await populate(sqlite_store)
    await run_backfill(sqlite_path, pg_dsn, rejects_path=tmp_path / "rejects.jsonl")
    pg = PostgresStore(pg_dsn)
    yield sqlite_store, pg
    await pg.close()


async def init_postgres(dsn: str) -> None:
    store = PostgresStore(dsn)
    try:
        await store.init_schema()
    finally:
        await store.close()


async def pg_exec(dsn: str, sql: str, *args: Any) -> None:
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute(sql, *args)
    finally:
        await conn.close()


def lite_exec(path: Path, sql: str, *args: Any) -> None:
    conn = sqlite3.connect(path)
    with conn:
        conn.execute(sql, args)
    conn.close()


async def test_stores_that_agree_verify_clean(both: Any, sqlite_path: Path, pg_dsn: str) -> None:
    report = await run_verify(sqlite_path, pg_dsn, queries=5)
    assert report.ok
    doc = report.to_json()
    assert doc["tables"]["questions"] == {"sqlite": 60, "postgres": 60, "differences": 0,
                                          "pending": 0, "backfill": 0,
                                          "sqlite_rows_without_id": 0}
    assert doc["foreign_keys"]["orphans"] == {"study_books.user_id": 0,
                                              "questions.study_book_id": 0,
                                              "typing_logs.user_id": 0,
                                              "typing_logs.question_id": 0}
    # search parity is measured, and informational only
    assert doc["search"]["queries"] == 5 and doc["search"]["informational"]
    assert 0.0 <= doc["search"]["mean_jaccard"] <= 1.0


async def test_every_kind_of_difference_is_found(both: Any, sqlite_path: Path,
                                                 pg_dsn: str) -> None:
    lite = sqlite3.connect(sqlite_path)
    q1, q2 = (r[0] for r in lite.execute("SELECT id FROM questions ORDER BY id LIMIT 2"))
    log = lite.execute("SELECT id FROM typing_logs ORDER BY id LIMIT 1").fetchone()[0]
    lite.close()
    await pg_exec(pg_dsn, "UPDATE questions SET answer = 'changed' WHERE id = $1",
                  uuid.UUID(q1))
    await pg_exec(pg_dsn, "DELETE FROM typing_logs WHERE id = $1", uuid.UUID(log))
    extra = uuid.uuid4()
    await pg_exec(pg_dsn, "INSERT INTO learning_events (id, user_id, app_id, action, "
                          "occurred_at) VALUES ($1, 'x', 'app', 'view', now())", extra)
    lite_exec(sqlite_path, "UPDATE typing_logs SET accuracy = 97.51 WHERE id <> ?", log)
    lite_exec(sqlite_path, "UPDATE questions SET updated_at = '2020-01-01T00:00:00Z' "
                           "WHERE id = ?", q2)
    report = await run_verify(sqlite_path, pg_dsn, queries=0)
    assert not report.ok
    found = {(d.table, d.id, d.kind, d.columns) for d in report.differences}
    assert ("questions", q1, "content", ("answer",)) in found
    assert ("questions", q2, "content", ("updated_at",)) in found
    assert ("typing_logs", log, "missing_in_postgres", ()) in found
    assert ("learning_events", str(extra), "missing_in_sqlite", ()) in found
    wrong_decimal = {d for d in found if d[0] == "typing_logs" and d[2] == "content"}
    assert len(wrong_decimal) == 59 and all(d[3] == ("accuracy",) for d in wrong_decimal)
    assert report.totals["differences"] == 4 + 59
    assert report.tables["typing_logs"].sqlite_rows == 60
    assert report.tables["typing_logs"].postgres_rows == 59


async def test_only_ranges_whose_checksums_differ_are_read_row_by_row(
        sqlite_store: SQLiteStore, sqlite_path: Path, pg_dsn: str, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    user = await sqlite_store.create_user(name="U", email="u@example.com")
    for _ in range(1500):
        await sqlite_store.record_learning_event(user_id=str(user.id), app_id="a", action="v")
    await run_backfill(sqlite_path, pg_dsn, rejects_path=tmp_path / "r.jsonl")
    ids = sorted(str(r[0]) for r in sqlite3.connect(sqlite_path).execute(
        "SELECT id FROM learning_events"))
    # a row whose 256-way group (its id's first two hex digits) holds more than leaf_rows rows,
    # so that the group must be split once more: with random ids about one row in 15 sits in a
    # group of three or fewer, which is read row by row at once
    group_sizes = Counter(i[:2] for i in ids)
    target = next(i for i in ids[700:] + ids[:700] if group_sizes[i[:2]] > 3)
    await pg_exec(pg_dsn, "UPDATE learning_events SET action = 'x' WHERE id = $1",
                  uuid.UUID(target))
    fetched: list[int] = []
    real_rows = verify_mod.SQLiteSide.rows

    def counting_rows(self: Any, spec: Any, prefix: str) -> Any:
        rows = real_rows(self, spec, prefix)
        fetched.append(len(rows))
        return rows

    monkeypatch.setattr(verify_mod.SQLiteSide, "rows", counting_rows)
    pool = await open_pool(pg_dsn)
    try:
        async def nothing_pending() -> set[str]:
            return set()

        report = await compare_stores(sqlite_path, pool, pending=nothing_pending, leaf_rows=3)
    finally:
        await pool.close()
    assert [(d.id, d.columns) for d in report.differences] == [(target, ("action",))]
    # 1500 rows in 256 groups of ~6: one group differed, was split (16^2 ways) and only the
    # sub-group holding the row was read row by row: one read, of at most leaf_rows rows (the
    # ids are random: now and then another row shares the differing row's sub-group)
    assert len(fetched) == 1 and 1 <= fetched[0] <= 3, fetched
    assert report.tables["learning_events"].groups_compared == 2


async def test_values_in_every_legacy_form_compare_equal_after_the_backfill(
        tmp_path: Path, pg_dsn: str) -> None:
    db = LegacyDB(tmp_path / "app.db")
    u = db.user(id="user-1", created_at="2024-03-05 21:34:56+09:00", updated_at="1709642096789")
    b = db.book(u, id="book-1", created_at="1709642096", updated_at="2024-03-05 12:34:56.5")
    q = db.question(b, id="q-1", created_at="2024-03-05T12:34:56.1234567Z")
    db.log(u, q, accuracy=97.125)  # rounded half-even on both sides
    db.event(score=-0.0, occurred_at="2024-03-05T12:34:56-05:00")
    db.event(score=2.675, duration_ms=None, object_id=None)
    db.conn.close()
    await run_backfill(db.path, pg_dsn, rejects_path=tmp_path / "r.jsonl")
    store = SQLiteStore(db.path)
    await store.init_schema()  # the upgrade: ids become UUIDs, as on PostgreSQL
    await store.close()
    report = await run_verify(db.path, pg_dsn, queries=0)
    # normalised alike: the rounded and truncated values are not even listed
    assert report.ok, report.to_json()
    assert report.totals == {"differences": 0, "pending": 0, "backfill": 0, "dead_letters": 0}


async def test_backfill_rejects_are_listed_apart(tmp_path: Path, pg_dsn: str) -> None:
    db = LegacyDB(tmp_path / "app.db")
    u = db.user()
    db.book(u, id="book-bad", created_at="2023-02-30T00:00:00Z")
    db.book("user-gone", id="book-orphan")
    db.conn.close()
    await run_backfill(db.path, pg_dsn, rejects_path=tmp_path / "r.jsonl")
    store = SQLiteStore(db.path)
    await store.init_schema()
    await store.close()
    report = await run_verify(db.path, pg_dsn, queries=0)
    assert report.ok
    listed = {(d.id, d.kind, why.split(":")[0]) for d, why in report.backfill}
    assert listed == {(str(legacy_uuid("book-bad")), "missing_in_postgres", "rejected"),
                      (str(legacy_uuid("book-orphan")), "missing_in_postgres", "rejected")}


async def test_rows_with_a_pending_mirror_write_are_listed_apart(
        both: Any, sqlite_path: Path, pg_dsn: str) -> None:
    sqlite_store, _ = both
    user = await sqlite_store.create_user(name="Late", email="late@example.com")
    # the primary's write and its outbox entry, the mirror not reached yet
    await sqlite_store.update_row(USERS, user.id, {"name": "Later"}, clock=2**53,
                                  outbox_targets=["postgres"])
    report = await run_verify(sqlite_path, pg_dsn, queries=0)
    assert report.ok
    assert [(d.table, d.id, d.kind) for d in report.pending] == [
        ("users", str(user.id), "missing_in_postgres")]


async def test_an_orphan_on_postgresql_is_a_failure(both: Any, sqlite_path: Path,
                                                    pg_dsn: str) -> None:
    conn = await asyncpg.connect(pg_dsn)
    try:
        async with conn.transaction():
            await conn.execute("SET LOCAL session_replication_role = replica")  # no FK checks
            await conn.execute("UPDATE typing_logs SET user_id = $1 WHERE id = "
                               "(SELECT id FROM typing_logs LIMIT 1)", uuid.uuid4())
    finally:
        await conn.close()
    report = await run_verify(sqlite_path, pg_dsn, queries=0)
    assert not report.ok
    assert report.orphans["typing_logs.user_id"] == 1


def test_the_command_exits_0_or_1_and_prints_one_json_document(
        both: Any, sqlite_path: Path, pg_dsn: str) -> None:
    env = {"POSTGRES_DSN": pg_dsn, "SQLITE_PATH": str(sqlite_path)}
    ok = CliRunner().invoke(app, ["verify", "--json", "--sample-queries", "3"], env=env)
    assert ok.exit_code == 0, ok.output
    assert json.loads(ok.stdout)["ok"] is True
    lite_exec(sqlite_path, "UPDATE users SET name = 'someone else'")
    differ = CliRunner().invoke(app, ["verify"], env=env)
    assert differ.exit_code == 1
    assert "the stores differ" in differ.stdout
    missing = CliRunner().invoke(app, ["verify"], env={**env, "SQLITE_PATH": "/nonexistent.db"})
    assert missing.exit_code == 2
    assert missing.output.strip() == ("error: SQLITE_PATH=/nonexistent.db: no such file "
                                      "(run `cutover schema init` first)")


def test_a_sqlite_file_whose_ids_were_never_upgraded_is_refused(tmp_path: Path,
                                                                pg_dsn: str) -> None:
    db = LegacyDB(tmp_path / "app.db")
    db.user(id="user-1")
    db.conn.close()
    env = {"POSTGRES_DSN": pg_dsn, "SQLITE_PATH": str(db.path)}
    result = CliRunner().invoke(app, ["verify"], env=env)
    assert result.exit_code == 2  # PostgreSQL has no schema yet
    assert result.output.strip() == ("error: postgres has no table learning_events: run "
                                     "`cutover schema init` first")
    asyncio.run(init_postgres(pg_dsn))
    result = CliRunner().invoke(app, ["verify"], env=env)
    assert result.exit_code == 2
    assert result.output.strip().splitlines() == [
        "error: users id 'user-1' is not a canonical UUID: run `cutover schema init` to "
        "upgrade the SQLite database first"]
