"""`cutover backfill`: every legacy row lands or is reported; resumable; idempotent; and the
repository's writes made meanwhile always win."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from typer.testing import CliRunner

from proxy.app.cli import app
from proxy.legacy import legacy_uuid
from proxy.migrate.backfill import (
    DEFAULT_JOBS,
    PartLoader,
    deferrable_indexes,
    iter_lines,
    run_backfill,
)
from proxy.migrate.checks import Batch
from proxy.migrate.columnar import ColumnarSource
from proxy.models import QUESTIONS
from proxy.stores import postgres_schema
from proxy.stores.base import Mutation
from proxy.stores.postgres import PostgresStore
from proxy.stores.sqlite_schema import LEGACY_SCHEMA
from tests.test_backfill_parts import renumber

pytestmark = pytest.mark.slow  # see pyproject.toml's markers

TS = "2024-03-05T12:34:56Z"
TS_DT = datetime(2024, 3, 5, 12, 34, 56, tzinfo=UTC)


def new_id() -> str:
    return str(uuid.uuid4())


class LegacyDB:
    """A legacy app.db (legacy_schema.sql) that takes any value, as the old one did."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.conn = sqlite3.connect(path, isolation_level=None)
        self.conn.executescript(LEGACY_SCHEMA)
        self.n = 0

    def _add(self, table: str, **values: Any) -> Any:
        cols = ", ".join(values)
        marks = ", ".join("?" * len(values))
        self.conn.execute(f"INSERT INTO {table} ({cols}) VALUES ({marks})", list(values.values()))
        return values["id"]

    def user(self, id: Any = None, **kw: Any) -> Any:
        self.n += 1
        row = {"id": id if id is not None else new_id(), "name": f"User {self.n}",
               "email": f"user{self.n}@example.com", "created_at": TS, "updated_at": TS}
        return self._add("users", **{**row, **kw})

    def book(self, user_id: Any, id: Any = None, **kw: Any) -> Any:
        row = {"id": id if id is not None else new_id(), "user_id": user_id, "title": "Python",
               "description": None, "created_at": TS, "updated_at": TS}
        return self._add("study_books", **{**row, **kw})

    def question(self, book_id: Any, id: Any = None, **kw: Any) -> Any:
        row = {"id": id if id is not None else new_id(), "study_book_id": book_id,
               "language": "en", "category": "python", "difficulty": "easy",
               "question": "What does json.dumps do?",
               "answer": "Serialize obj to a JSON formatted str.",
               "created_at": TS, "updated_at": TS}
        return self._add("questions", **{**row, **kw})

    def log(self, user_id: Any, question_id: Any, id: Any = None, **kw: Any) -> Any:
        row = {"id": id if id is not None else new_id(), "user_id": user_id,
               "question_id": question_id, "wpm": 60, "accuracy": 97.5, "took_ms": 1200,
               "created_at": TS}
        return self._add("typing_logs", **{**row, **kw})

    def event(self, id: Any = None, **kw: Any) -> Any:
        row = {"id": id if id is not None else new_id(), "user_id": "someone", "app_id": "app",
               "action": "view", "object_id": None, "score": 1.5, "duration_ms": 10,
               "occurred_at": TS}
        return self._add("learning_events", **{**row, **kw})

    def bulk(self, users: int = 5, questions: int = 200, logs: int = 200,
             events: int = 200) -> None:
        """Many clean rows (canonical ids) in one transaction."""
        self.conn.execute("BEGIN")
        uids = [self.user() for _ in range(users)]
        bids = [self.book(u) for u in uids]
        qids = [self.question(bids[i % len(bids)]) for i in range(questions)]
        for i in range(logs):
            self.log(uids[i % len(uids)], qids[i % len(qids)])
        for _ in range(events):
            self.event()
        self.conn.execute("COMMIT")


@pytest.fixture
def legacy(tmp_path: Path) -> Iterator[LegacyDB]:
    db = LegacyDB(tmp_path / "legacy.db")
    yield db
    db.conn.close()


async def backfill(db: LegacyDB, dsn: str, tmp_path: Path, **kw: Any) -> Any:
    return await run_backfill(db.path, dsn, rejects_path=tmp_path / "rejects.jsonl", **kw)


def rejects(tmp_path: Path) -> list[dict[str, Any]]:
    return list(iter_lines(tmp_path / "rejects.jsonl"))


async def pg_rows(dsn: str, sql: str, *args: Any) -> list[asyncpg.Record]:
    conn = await asyncpg.connect(dsn)
    try:
        return list(await conn.fetch(sql, *args))
    finally:
        await conn.close()


# -- clean data -----------------------------------------------------------------------------


async def test_every_row_lands_with_its_values_converted(
        legacy: LegacyDB, pg_dsn: str, tmp_path: Path) -> None:
    u = legacy.user(id="user-1", created_at="2024-03-05 21:34:56+09:00",
                    updated_at="1709642096789")
    b = legacy.book(u, id="book-1", created_at="1709642096", updated_at="2024-03-05 12:34:56")
    q = legacy.question(b, created_at="2024-03-05T12:34:56.123456Z")
    log = legacy.log(u, q, accuracy=88.25, wpm=72)
    ev = legacy.event(user_id="user-1", object_id=q, score=None, duration_ms=None)
    report = await backfill(legacy, pg_dsn, tmp_path)
    assert {t: r.inserted for t, r in report.tables.items()} == {
        "users": 1, "study_books": 1, "questions": 1, "typing_logs": 1, "learning_events": 1}
    assert rejects(tmp_path) == []
    store = PostgresStore(pg_dsn)
    try:
        user = await store.get_user(legacy_uuid("user-1"))
        assert user.created_at == TS_DT  # +09:00 converted to UTC
        assert user.updated_at == datetime(2024, 3, 5, 12, 34, 56, 789000, tzinfo=UTC)  # ms
        book = await store.get_study_book(legacy_uuid("book-1"))
        assert book.user_id == user.id  # the reference follows the id's mapping
        assert book.created_at == TS_DT and book.updated_at == TS_DT  # epoch s; no offset
        question = await store.get_question(uuid.UUID(q))
        assert question.created_at == datetime(2024, 3, 5, 12, 34, 56, 123456, tzinfo=UTC)
        typing = await store.get_typing_log(uuid.UUID(log))
        assert (typing.wpm, typing.accuracy, typing.question_id) == (72, Decimal("88.25"),
                                                                     question.id)
        event = await store.get_learning_event(uuid.UUID(ev))
        assert (event.user_id, event.score, event.duration_ms) == ("user-1", None, None)
        hits = await store.search_questions("json dumps", user_id=user.id)
        assert [h.question_id for h in hits] == [question.id]
    finally:
        await store.close()
    mapped = await pg_rows(pg_dsn, "SELECT table_name, legacy_id, id FROM legacy_ids "
                                   "ORDER BY table_name")
    assert [(r["table_name"], r["legacy_id"], r["id"]) for r in mapped] == [
        ("study_books", "book-1", legacy_uuid("book-1")), ("users", "user-1", user.id)]


async def test_every_index_is_in_place_at_the_end(legacy: LegacyDB, pg_dsn: str,
                                                  tmp_path: Path) -> None:
    legacy.bulk(questions=50, logs=50, events=50)
    report = await backfill(legacy, pg_dsn, tmp_path)
    names = {r["indexname"] for r in await pg_rows(
        pg_dsn, "SELECT indexname FROM pg_indexes WHERE schemaname = 'public'")}
    expected = {ix.name for ix in deferrable_indexes()}
    assert expected <= names
    assert set(report.indexes_built) == expected  # the tables were empty: built after the load
    assert report.fast_path  # and loaded by COPY straight in


async def test_the_planner_has_statistics_at_the_end(legacy: LegacyDB, pg_dsn: str,
                                                     tmp_path: Path) -> None:
    """Each table is analyzed once loaded and indexed (the search vector included), not left to
    autovacuum; `analyze=False` skips it. The fuzzy branch's vocabulary was kept as rows came."""
    legacy.bulk(questions=50, logs=50, events=50)
    report = await backfill(legacy, pg_dsn, tmp_path)
    assert "analyze" in report.timings
    analyzed = {r["tablename"] for r in await pg_rows(
        pg_dsn, "SELECT DISTINCT tablename FROM pg_stats WHERE schemaname = 'public'")}
    assert {"users", "study_books", "questions", "typing_logs", "learning_events"} <= analyzed
    [vocabulary] = await pg_rows(pg_dsn, "SELECT last_analyze FROM pg_stat_user_tables "
                                         "WHERE relname = 'cutover_search_words'")
    assert vocabulary["last_analyze"] is not None  # filled by the questions' trigger
    columns = {r["attname"] for r in await pg_rows(
        pg_dsn, "SELECT attname FROM pg_stats WHERE tablename = 'questions'")}
    assert {"study_book_id", "search_vector"} <= columns
    missing = await pg_rows(
        pg_dsn, "SELECT w FROM questions, cutover_document_words(question || ' ' || answer) w "
        "WHERE NOT EXISTS (SELECT 1 FROM cutover_search_words s WHERE s.word = w)")
    assert missing == []
    # ... though the questions went in as `replica`, foreign keys checked once at the end
    assert "questions" in report.fk_checked_after


async def test_a_table_with_a_trigger_of_its_own_keeps_per_row_checks(
        legacy: LegacyDB, pg_schema_dsn: str, tmp_path: Path) -> None:
    """A trigger someone added (an audit, say) would not fire as `replica`: that table is
    loaded with its triggers, and its foreign keys, checked row by row."""
    legacy.bulk(questions=20, logs=30, events=5)
    conn = await asyncpg.connect(pg_schema_dsn)
    try:
        await conn.execute(
            "CREATE TABLE audit (n INT); "
            "CREATE FUNCTION audit_row() RETURNS trigger LANGUAGE plpgsql AS "
            "$$ BEGIN INSERT INTO audit VALUES (1); RETURN NULL; END $$; "
            "CREATE TRIGGER audited AFTER INSERT ON typing_logs "
            "FOR EACH ROW EXECUTE FUNCTION audit_row()")
    finally:
        await conn.close()
    report = await backfill(legacy, pg_schema_dsn, tmp_path)
    assert "typing_logs" not in report.fk_checked_after
    assert "questions" in report.fk_checked_after
    [audited] = await pg_rows(pg_schema_dsn, "SELECT count(*) AS n FROM audit")
    assert audited["n"] == report.tables["typing_logs"].inserted == 30


async def test_analyze_can_be_left_to_autovacuum(legacy: LegacyDB, pg_dsn: str,
                                                 tmp_path: Path) -> None:
    legacy.bulk(questions=20, logs=20, events=20)
    report = await backfill(legacy, pg_dsn, tmp_path, analyze=False)
    assert "analyze" not in report.timings
    [row] = await pg_rows(pg_dsn, "SELECT last_analyze FROM pg_stat_user_tables "
                                  "WHERE relname = 'questions'")
    assert row["last_analyze"] is None  # autovacuum's runs are last_autoanalyze


# -- dirty data: each case lands changed-and-reported or is rejected-and-reported ----------

CASES: dict[str, Any] = {
    "impossible date": (
        lambda db, u, b, q: db.question(b, id="q-bad", created_at="2023-02-30T10:00:00Z"),
        ("questions", "q-bad", "created_at", "2023-02-30T10:00:00Z", "not a timestamp")),
    "empty timestamp": (
        lambda db, u, b, q: db.question(b, id="q-bad", updated_at=""),
        ("questions", "q-bad", "updated_at", "", "not a timestamp")),
    "garbage timestamp": (
        lambda db, u, b, q: db.event(id="ev-bad", occurred_at="yesterday"),
        ("learning_events", "ev-bad", "occurred_at", "yesterday", "not a timestamp")),
    "text in an INTEGER column": (
        lambda db, u, b, q: db.log(u, q, id="log-bad", wpm="fast"),
        ("typing_logs", "log-bad", "wpm", "fast", "not an integer")),
    "VARCHAR over its limit": (
        lambda db, u, b, q: db.question(b, id="q-bad", language="x" * 51),
        ("questions", "q-bad", "language", "x" * 51, "longer than 50 characters")),
    "accuracy outside 0-100": (
        lambda db, u, b, q: db.log(u, q, id="log-bad", accuracy=101.5),
        ("typing_logs", "log-bad", "accuracy", 101.5, "out of range 0..100")),
    "orphan: required parent missing": (
        lambda db, u, b, q: db.book("user-gone", id="book-bad"),
        ("study_books", "book-bad", "user_id", "user-gone", "orphan: users user-gone missing")),
    "orphan: parent rejected": (
        lambda db, u, b, q: db.question(db.book(u, id="book-bad", created_at="never"),
                                        id="q-bad"),
        ("questions", "q-bad", "study_book_id", "book-bad",
         "orphan: study_books book-bad rejected")),
}


@pytest.mark.parametrize("case", list(CASES), ids=list(CASES))
async def test_dirty_rows_are_rejected_and_reported(
        case: str, legacy: LegacyDB, pg_dsn: str, tmp_path: Path) -> None:
    add, (table, legacy_id, column, value, reason) = CASES[case]
    u = legacy.user()
    b = legacy.book(u)
    q = legacy.question(b)
    add(legacy, u, b, q)
    report = await backfill(legacy, pg_dsn, tmp_path)
    found = [r for r in rejects(tmp_path) if r["id"] == legacy_id]
    assert len(found) == 1, rejects(tmp_path)
    line = found[0]
    assert (line["table"], line["column"], line["value"]) == (table, column, value)
    assert line["reason"].startswith(reason) and line["kind"] == "rejected"
    assert report.tables[table].rejected == 1
    # not in PostgreSQL, and remembered there for verify
    assert not await pg_rows(pg_dsn, f"SELECT 1 FROM {table} WHERE id = $1",
                             legacy_uuid(legacy_id))
    kept = await pg_rows(pg_dsn, "SELECT table_name, row_id, mapped_id, column_name, reason "
                                 "FROM cutover_backfill_rejects WHERE row_id = $1", legacy_id)
    assert [(r["table_name"], r["mapped_id"], r["column_name"]) for r in kept] == [
        (table, legacy_uuid(legacy_id), column)]
    # the clean rows beside it landed
    assert report.tables["users"].inserted >= 1 and report.tables["questions"].inserted >= 1


async def test_null_where_postgresql_requires_a_value_is_rejected(
        tmp_path: Path, pg_dsn: str) -> None:
    # SQLite lets a TEXT PRIMARY KEY be NULL, and an app.db made by an older version of the
    # application may lack a NOT NULL the schema has now
    db = LegacyDB(tmp_path / "legacy.db")
    db.conn.execute("DROP TABLE learning_events")
    db.conn.execute("CREATE TABLE learning_events (id TEXT PRIMARY KEY, user_id TEXT, "
                    "app_id TEXT, action TEXT, object_id TEXT, score REAL, duration_ms INTEGER, "
                    "occurred_at TEXT)")
    db.conn.execute("INSERT INTO users VALUES (NULL, 'No id', 'x@example.com', ?, ?)", (TS, TS))
    db.event(id="ev-bad", app_id=None)
    report = await backfill(db, pg_dsn, tmp_path)
    assert sorted((r["table"], r["id"], r["column"], r["value"], r["reason"])
                  for r in rejects(tmp_path)) == [
        ("learning_events", "ev-bad", "app_id", None, "NOT NULL column is NULL"),
        ("users", None, "id", None, "NOT NULL column is NULL")]
    assert report.tables["users"].rejected == report.tables["learning_events"].rejected == 1
    db.conn.close()


async def test_a_missing_optional_parent_lands_as_null_and_is_reported(
        legacy: LegacyDB, pg_dsn: str, tmp_path: Path) -> None:
    u = legacy.user()
    log = legacy.log(u, "q-gone")
    report = await backfill(legacy, pg_dsn, tmp_path)
    assert [(r["table"], r["id"], r["column"], r["value"], r["kind"])
            for r in rejects(tmp_path)] == [("typing_logs", log, "question_id", "q-gone",
                                             "changed")]
    assert "reference set to NULL" in rejects(tmp_path)[0]["reason"]
    assert report.tables["typing_logs"].changed == 1
    row = await pg_rows(pg_dsn, "SELECT question_id FROM typing_logs WHERE id = $1",
                        uuid.UUID(log))
    assert row[0]["question_id"] is None


async def test_a_rounded_real_is_reported_with_old_and_new_value(
        legacy: LegacyDB, pg_dsn: str, tmp_path: Path) -> None:
    u = legacy.user()
    q = legacy.question(legacy.book(u))
    log = legacy.log(u, q, accuracy=97.125)
    ev = legacy.event(score=2.675)
    await backfill(legacy, pg_dsn, tmp_path)
    lines = {r["id"]: r for r in rejects(tmp_path)}
    assert lines[log] | {"reason": "x"} == {
        "table": "typing_logs", "id": log, "column": "accuracy", "value": 97.125,
        "new_value": "97.12", "reason": "x", "kind": "changed"}
    assert lines[log]["reason"] == "rounded to 2 decimals"
    assert (lines[ev]["value"], lines[ev]["new_value"]) == (2.675, "2.68")  # half-even of 2.675
    rows = await pg_rows(pg_dsn, "SELECT accuracy FROM typing_logs")
    assert rows[0]["accuracy"] == Decimal("97.12")


async def test_a_row_deleted_through_the_repository_is_not_resurrected(
        legacy: LegacyDB, pg_schema_dsn: str, pg_store: PostgresStore, tmp_path: Path) -> None:
    u = legacy.user()
    q = legacy.question(legacy.book(u))
    gone = legacy.question(legacy.book(u))
    # dual writes were on: the repository deleted `gone` on PostgreSQL (a tombstone, no row)
    await pg_store.apply([Mutation("question", "delete", uuid.UUID(gone), 5)])
    report = await backfill(legacy, pg_schema_dsn, tmp_path)
    assert report.tables["questions"].inserted == 1
    assert report.tables["questions"].skipped == 1
    assert await pg_store.get_question(uuid.UUID(q))
    assert await pg_store.get_row(QUESTIONS, uuid.UUID(gone)) is None
    assert [r["kind"] for r in rejects(tmp_path) if r["id"] == gone] == ["skipped"]


# -- idempotent, resumable, safe beside dual writes ----------------------------------------


async def test_a_second_run_changes_nothing(legacy: LegacyDB, pg_dsn: str,
                                            tmp_path: Path) -> None:
    legacy.bulk(questions=120, logs=80, events=60)
    legacy.log(legacy.user(), None, id="log-bad", wpm="fast")
    first = await backfill(legacy, pg_dsn, tmp_path, batch_size=100)
    before = await pg_rows(pg_dsn, "SELECT id, row_version FROM questions ORDER BY id")
    second = await backfill(legacy, pg_dsn, tmp_path, batch_size=100)
    assert sum(r.inserted for r in second.tables.values()) == 0
    assert {t: r.present for t, r in second.tables.items()} == {
        t: r.inserted for t, r in first.tables.items()}
    assert second.problems == first.problems == 1
    assert await pg_rows(pg_dsn, "SELECT id, row_version FROM questions ORDER BY id") == before


async def test_a_killed_run_resumes_without_gaps_or_duplicates(
        legacy: LegacyDB, pg_dsn: str, tmp_path: Path) -> None:
    legacy.bulk(users=10, questions=3000, logs=3000, events=3000)
    env = {**os.environ, "POSTGRES_DSN": pg_dsn}
    child = await asyncio.create_subprocess_exec(
        sys.executable, "-c", "from proxy.app.cli import app; app()", "backfill", "--from",
        str(legacy.path), "--rejects", str(tmp_path / "first.jsonl"), "--batch-size", "100",
        "--quiet", env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    conn = await asyncpg.connect(pg_dsn)
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            done = await conn.fetchval(
                "SELECT sum(read) FROM cutover_backfill_progress WHERE table_name = 'questions'"
            ) if await conn.fetchval("SELECT to_regclass('cutover_backfill_progress')") else 0
            if done and done >= 500:
                break
            assert child.returncode is None, "the backfill ended before it could be killed"
            await asyncio.sleep(0.02)
        child.send_signal(signal.SIGKILL)  # mid-run: no chance to clean up
        await child.wait()
        partial = await conn.fetchval("SELECT count(*) FROM questions")
        assert 0 < partial < 3000
    finally:
        await conn.close()
    report = await backfill(legacy, pg_dsn, tmp_path, batch_size=100)
    assert report.resumed
    for table in ("users", "study_books", "questions", "typing_logs", "learning_events"):
        source = {r[0] for r in legacy.conn.execute(f"SELECT id FROM {table}")}
        loaded = {str(r["id"]) for r in await pg_rows(pg_dsn, f"SELECT id FROM {table}")}
        assert loaded == source, table  # no gap (and a primary key allows no duplicate)
        assert report.tables[table].read == len(source)  # each row read once over both runs
        assert report.tables[table].inserted == len(source)
    names = {r["indexname"] for r in await pg_rows(pg_dsn, "SELECT indexname FROM pg_indexes")}
    assert {ix.name for ix in deferrable_indexes()} <= names
    # the killed run left the vocabulary to its recount, which the resumed run owed and did
    assert "vocabulary" in report.timings
    recount = postgres_schema.WORDS_FILL.replace("INSERT INTO cutover_search_words", "")
    [diff] = await pg_rows(pg_dsn, f"SELECT count(*) AS n, (SELECT count(*) FROM ({recount}) r)"
                           f" AS words FROM (({recount}) EXCEPT ALL "
                           "(SELECT * FROM cutover_search_words)) d")
    assert diff["words"] > 0 and diff["n"] == 0


class Stop(Exception):
    pass


@pytest.mark.parametrize("gaps", ["below", "above"])
async def test_a_resumed_run_copies_every_row_after_the_source_rowids_moved(
        legacy: LegacyDB, pg_dsn: str, tmp_path: Path, gaps: str) -> None:
    """A pass stopped part way, the source's rowids renumbered (gaps closed below the
    checkpoints, or only above every row a checkpoint names: rows move, but stay ahead of every
    checkpoint), then resumed: every source row is in PostgreSQL, and a table is read again only
    when its checkpoints moved."""
    legacy.bulk(users=4, questions=3000, logs=10, events=10)
    rowids = [r[0] for r in legacy.conn.execute("SELECT rowid FROM questions ORDER BY rowid")]
    # gaps at the start of each part (below the rows its checkpoint will name) or at the end
    doomed = ([*rowids[5:400], *rowids[1505:1900]] if gaps == "below" else rowids[2800:2900])
    legacy.conn.executemany("DELETE FROM questions WHERE rowid = ?", [(r,) for r in doomed])
    read = 0

    def stop_after_some_questions(table: str, n: int) -> None:
        nonlocal read
        read += n if table == "questions" else 0
        if read >= 1400:
            raise Stop

    with pytest.raises(Stop):
        await backfill(legacy, pg_dsn, tmp_path, batch_size=100,
                       progress=stop_after_some_questions)
    renumber(legacy.conn, "questions")
    report = await backfill(legacy, pg_dsn, tmp_path, batch_size=100)
    assert report.resumed
    source = {r[0] for r in legacy.conn.execute("SELECT id FROM questions")}
    loaded = {str(r["id"]) for r in await pg_rows(pg_dsn, "SELECT id FROM questions")}
    assert loaded == source
    q = report.tables["questions"]
    if gaps == "below":  # read again: what the stopped pass copied is found present
        assert q.read == len(source) and q.present > 0 and q.inserted + q.present == len(source)
    else:  # every checkpoint still names its row: nothing read twice
        assert q.read == len(source) and q.present == 0 and q.inserted == len(source)


@pytest.mark.parametrize("jobs", [1, 2])
async def test_rowids_renumbered_while_a_pass_runs_lose_no_row(
        legacy: LegacyDB, pg_dsn: str, tmp_path: Path, jobs: int) -> None:
    """The source's rowids renumbered between two batches of a running pass (a VACUUM may do
    it; here the table rebuilt): rows slide below the checkpoints. The pass notices at its next
    read and reads the table again; every row is copied, none twice."""
    legacy.bulk(users=4, questions=3000, logs=10, events=10)
    rowids = [r[0] for r in legacy.conn.execute("SELECT rowid FROM questions ORDER BY rowid")]
    # gaps at the start of each part: renumbering slides every row after them down
    legacy.conn.executemany("DELETE FROM questions WHERE rowid = ?",
                            [(r,) for r in (*rowids[5:400], *rowids[1505:1900])])
    read, renumbered = 0, False

    def renumber_once(table: str, n: int) -> None:
        nonlocal read, renumbered
        read += n if table == "questions" else 0
        if read >= 1000 and not renumbered:
            renumbered = True
            renumber(legacy.conn, "questions")

    report = await backfill(legacy, pg_dsn, tmp_path, batch_size=100, jobs=jobs,
                            progress=renumber_once)
    assert renumbered
    source = {r[0] for r in legacy.conn.execute("SELECT id FROM questions")}
    loaded = {str(r["id"]) for r in await pg_rows(pg_dsn, "SELECT id FROM questions")}
    assert loaded == source
    q = report.tables["questions"]  # read again: what was copied before is found present
    assert q.read == len(source) and q.present > 0 and q.inserted + q.present == len(source)


@pytest.mark.parametrize("deletes", ["batch ends", "retention", "purge ahead"])
async def test_rows_deleted_while_a_pass_runs_are_no_sign_of_renumbering(
        legacy: LegacyDB, pg_dsn: str, tmp_path: Path, deletes: str) -> None:
    """Every batch, the application deletes the last rows of the batch being read, or (a
    retention job) every row read so far, or (a purge of the rows older than a cutoff, running
    ahead of the pass) 250 rows, those being read among them: the check for renumbering must
    not take that for one (the table would be read again, and after three times the pass
    would stop)."""
    legacy.bulk(users=4, questions=2000, logs=10, events=10)
    before = {r[0] for r in legacy.conn.execute("SELECT id FROM questions")}
    read = 0

    def delete_ahead(table: str, n: int) -> None:
        nonlocal read
        if table == "questions":
            read += n
            legacy.conn.execute(
                "DELETE FROM questions WHERE rowid IN (SELECT rowid FROM questions "
                "WHERE rowid <= ? ORDER BY rowid LIMIT ? OFFSET ?)",
                {"batch ends": (2**62, 8, read + 92), "retention": (2**62, n, 0),
                 "purge ahead": (1500, 250, 0)}[deletes])

    report = await backfill(legacy, pg_dsn, tmp_path, batch_size=100, jobs=1,
                            progress=delete_ahead)
    after = {r[0] for r in legacy.conn.execute("SELECT id FROM questions")}
    loaded = {str(r["id"]) for r in await pg_rows(pg_dsn, "SELECT id FROM questions")}
    assert len(after) < len(before) and after <= loaded <= before
    assert report.tables["questions"].present == 0  # nothing read twice


async def test_rows_whose_rowid_is_zero_or_negative_are_copied(
        legacy: LegacyDB, pg_dsn: str, tmp_path: Path) -> None:
    legacy.bulk(users=2, questions=60, logs=10, events=10)
    # a row's rowid is whatever the application gave it: 0 and negative ones are allowed
    legacy.conn.execute("UPDATE questions SET rowid = -rowid WHERE rowid % 3 = 0")
    legacy.conn.execute("UPDATE questions SET rowid = 0 WHERE rowid = 1")
    report = await backfill(legacy, pg_dsn, tmp_path, batch_size=7, jobs=3)
    source = {r[0] for r in legacy.conn.execute("SELECT id FROM questions")}
    loaded = {str(r["id"]) for r in await pg_rows(pg_dsn, "SELECT id FROM questions")}
    assert loaded == source and report.tables["questions"].read == len(source)


@pytest.mark.parametrize("ends", ["failing", "cancelled planning", "cancelled loading"])
async def test_a_failing_batch_never_closes_the_source_under_a_read(
        legacy: LegacyDB, pg_dsn: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        ends: str) -> None:
    """A part reads its next batch while it writes the last one. When the write (here the
    progress callback) fails, or the pass is cancelled (Ctrl-C: the task is, the reading
    thread is not), the connection must outlive that read: closed under it, SQLite crashed
    the whole process (a segfault, once in a few runs of the suite)."""
    import proxy.migrate.source as source_mod

    legacy.bulk(users=2, questions=400, logs=10, events=10)
    closed_under_read: list[str] = []
    fetch = source_mod._fetch

    def slow_fetch(conn: sqlite3.Connection, sql: str, params: Any) -> list[Any]:
        time.sleep(0.2)  # still reading when the batch before fails
        try:
            return fetch(conn, sql, params)
        except sqlite3.ProgrammingError:  # "Cannot operate on a closed database"
            closed_under_read.append(sql)
            raise

    monkeypatch.setattr(source_mod, "_fetch", slow_fetch)
    read = ColumnarSource.read

    def slow_read(self: ColumnarSource, *args: Any) -> Any:  # the columnar lane's reads
        time.sleep(0.2)
        try:
            return read(self, *args)
        except Exception as exc:  # an ADBC call on a closed connection
            closed_under_read.append(repr(exc))
            raise

    monkeypatch.setattr(ColumnarSource, "read", slow_read)
    if ends == "failing":
        with pytest.raises(Stop):
            await backfill(legacy, pg_dsn, tmp_path, batch_size=50, progress=lambda table, n:
                           _raise(Stop) if table == "questions" else None)
    else:
        run = asyncio.ensure_future(backfill(legacy, pg_dsn, tmp_path, batch_size=50))
        await asyncio.sleep(0.7 if ends == "cancelled planning" else 3.5)
        run.cancel()
        with pytest.raises(asyncio.CancelledError):
            await run
    await asyncio.sleep(0.5)  # any read left running ends meanwhile
    assert closed_under_read == []


async def test_a_pass_keeps_the_parts_it_planned_when_resumed_with_other_jobs(
        legacy: LegacyDB, pg_dsn: str, tmp_path: Path) -> None:
    legacy.bulk(users=4, questions=1500, logs=900, events=600)
    with pytest.raises(Stop):
        await backfill(legacy, pg_dsn, tmp_path, batch_size=100, jobs=3,
                       progress=lambda table, n: _raise(Stop) if table == "questions" else None)
    parts = await pg_rows(pg_dsn, "SELECT table_name, count(*) AS n FROM "
                          "cutover_backfill_progress GROUP BY 1")
    assert {r["table_name"]: r["n"] for r in parts} == {
        "users": 1, "study_books": 1, "questions": 3, "typing_logs": 3, "learning_events": 3,
        "cutover_search_words": 1}
    report = await backfill(legacy, pg_dsn, tmp_path, batch_size=100, jobs=1)
    assert report.resumed
    for table in ("questions", "typing_logs", "learning_events"):
        source = {r[0] for r in legacy.conn.execute(f"SELECT id FROM {table}")}
        loaded = {str(r["id"]) for r in await pg_rows(pg_dsn, f"SELECT id FROM {table}")}
        assert loaded == source, table
        t = report.tables[table]  # each row read once, none twice
        assert (t.read, t.inserted, t.present) == (len(source), len(source), 0), table
    parts = await pg_rows(pg_dsn, "SELECT count(*) AS n FROM cutover_backfill_progress "
                          "WHERE table_name = 'questions'")
    assert parts[0]["n"] == 3


async def test_a_pass_an_older_version_recorded_is_started_afresh(
        legacy: LegacyDB, pg_dsn: str, tmp_path: Path) -> None:
    """Progress rows from before rowid order (id ranges, a part for ids that were not text) say
    nothing of rowids: resuming them would read nothing. The pass starts again instead."""
    legacy.bulk(users=3, questions=300, logs=100, events=100)
    conn = await asyncpg.connect(pg_dsn)
    try:
        await conn.execute("""CREATE TABLE cutover_backfill_progress (
            table_name TEXT NOT NULL, part INTEGER NOT NULL, source TEXT NOT NULL,
            last_id TEXT, done BOOLEAN NOT NULL DEFAULT false,
            read BIGINT NOT NULL DEFAULT 0, inserted BIGINT NOT NULL DEFAULT 0,
            present BIGINT NOT NULL DEFAULT 0, skipped BIGINT NOT NULL DEFAULT 0,
            rejected BIGINT NOT NULL DEFAULT 0, changed BIGINT NOT NULL DEFAULT 0,
            updated_at TIMESTAMPTZ NOT NULL DEFAULT now(), PRIMARY KEY (table_name, part))""")
        old = [("users", 2), ("study_books", 2), ("questions", 3), ("typing_logs", 3),
               ("learning_events", 3), ("cutover_search_words", 1)]
        await conn.executemany(
            "INSERT INTO cutover_backfill_progress (table_name, part, source, last_id, done) "
            "VALUES ($1, $2, $3, $4, $5)",
            [(t, i, str(legacy.path.resolve()), "8", t in ("users", "study_books"))
             for t, n in old for i in range(n)])
    finally:
        await conn.close()
    report = await backfill(legacy, pg_dsn, tmp_path)
    assert not report.resumed
    for table in ("users", "study_books", "questions", "typing_logs", "learning_events"):
        source = {r[0] for r in legacy.conn.execute(f"SELECT id FROM {table}")}
        loaded = {str(r["id"]) for r in await pg_rows(pg_dsn, f"SELECT id FROM {table}")}
        assert loaded == source, table


def _raise(exc: type[Exception]) -> None:
    raise exc


async def test_a_pass_failing_before_its_recount_stops_whole_and_resumes(
        legacy: LegacyDB, pg_dsn: str, tmp_path: Path) -> None:
    """learning_events waits for the vocabulary's count (it loads beside the recount's
    one-backend end). When the questions fail first, no recount comes: the pass must stop
    whole, nothing of it left waiting or running, and the next run resume to the end."""
    legacy.bulk(users=3, questions=400, logs=200, events=300)
    others = asyncio.all_tasks()  # the fixtures' own, and this test's
    with pytest.raises(Stop):
        await asyncio.wait_for(backfill(
            legacy, pg_dsn, tmp_path, batch_size=50,
            progress=lambda table, n: _raise(Stop) if table == "questions" else None), 60)
    await asyncio.sleep(0)
    assert asyncio.all_tasks() - others == set()  # no lane left behind
    report = await backfill(legacy, pg_dsn, tmp_path, batch_size=50)
    assert report.resumed
    for table in ("users", "study_books", "questions", "typing_logs", "learning_events"):
        source = {r[0] for r in legacy.conn.execute(f"SELECT id FROM {table}")}
        loaded = {str(r["id"]) for r in await pg_rows(pg_dsn, f"SELECT id FROM {table}")}
        assert loaded == source, table
    recount = postgres_schema.WORDS_FILL.replace("INSERT INTO cutover_search_words", "")
    [diff] = await pg_rows(pg_dsn, f"SELECT count(*) AS n, (SELECT count(*) FROM ({recount}) r)"
                           f" AS words FROM (({recount}) EXCEPT ALL "
                           "(SELECT * FROM cutover_search_words)) d")
    assert diff["words"] > 0 and diff["n"] == 0


async def test_writes_made_through_the_repository_during_the_backfill_win(
        legacy: LegacyDB, pg_schema_dsn: str, pg_store: PostgresStore, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    legacy.bulk(users=4, questions=600, logs=300, events=100)
    ids = sorted(r[0] for r in legacy.conn.execute("SELECT id FROM questions"))
    early, late, doomed = ids[:5], ids[-5:], [ids[-6], ids[10]]
    copying, written = asyncio.Event(), asyncio.Event()
    batches = 0
    write = PartLoader._write

    async def paused_write(self: PartLoader, batch: Batch, *args: Any, **kw: Any) -> None:
        # once some batches of questions are in, the copy waits for the repository's writes.
        # A part writes one batch at a time, so the write of one batch more than there are
        # parts begins after one has committed.
        nonlocal batches
        if self.entity.table == "questions" and batch.size:
            batches += 1
            if batches > DEFAULT_JOBS:
                copying.set()
                await asyncio.wait_for(written.wait(), 30)
        await write(self, batch, *args, **kw)

    monkeypatch.setattr(PartLoader, "_write", paused_write)

    async def repository() -> int:
        await copying.wait()
        try:
            version = 10**15
            for i, qid in enumerate(early + late):
                row = await pg_store.get_row(QUESTIONS, uuid.UUID(qid))
                if row is None:  # not copied yet: the mirror write inserts it whole
                    source = legacy.conn.execute(
                        "SELECT study_book_id FROM questions WHERE id = ?", (qid,)).fetchone()
                    row = {"id": uuid.UUID(qid), "study_book_id": uuid.UUID(source[0]),
                           "language": "en", "category": "python", "difficulty": "easy",
                           "question": "q", "answer": "a", "created_at": TS_DT,
                           "updated_at": TS_DT}
                row = {**row, "answer": f"written by the repository {i}"}
                await pg_store.apply([Mutation("question", "update", uuid.UUID(qid),
                                               version + i, row)])
            for qid in doomed:
                await pg_store.apply([Mutation("question", "delete", uuid.UUID(qid), version)])
            await pg_store.create_user(name="New", email="new@example.com")
            copied = await pg_rows(pg_schema_dsn,
                                   "SELECT count(*) AS n FROM questions WHERE row_version = 0")
            return int(copied[0]["n"])
        finally:
            written.set()

    writer = asyncio.create_task(repository())
    report = await backfill(legacy, pg_schema_dsn, tmp_path, batch_size=20)
    assert 0 < await writer < 600 - len(late)  # the writes landed in the middle of the copy
    answers = {str(r["id"]): r["answer"] for r in await pg_rows(
        pg_schema_dsn, "SELECT id, answer FROM questions WHERE row_version > 0")}
    assert answers == {qid: f"written by the repository {i}"
                       for i, qid in enumerate(early + late)}
    assert not await pg_rows(pg_schema_dsn, "SELECT 1 FROM questions WHERE id = ANY($1::uuid[])",
                             doomed)
    assert await pg_rows(pg_schema_dsn, "SELECT 1 FROM users WHERE email = 'new@example.com'")
    total = await pg_rows(pg_schema_dsn, "SELECT count(*) AS n FROM questions")
    assert total[0]["n"] == 600 - len(doomed)
    q = report.tables["questions"]
    assert q.read == 600 and q.inserted + q.present + q.skipped == 600
    assert q.present >= len(late)  # written by the repository before the copy reached them


async def test_a_table_with_rows_keeps_its_search_indexes(
        legacy: LegacyDB, pg_schema_dsn: str, pg_store: PostgresStore, tmp_path: Path) -> None:
    user = await pg_store.create_user(name="Live", email="live@example.com")
    book = await pg_store.create_study_book(user_id=user.id, title="Live")
    await pg_store.create_question(study_book_id=book.id, language="en", category="c",
                                   difficulty="easy", question="live question", answer="yes")
    oids = {r["indexrelid"] for r in await pg_rows(
        pg_schema_dsn, "SELECT indexrelid FROM pg_index WHERE indrelid = 'questions'::regclass")}
    legacy.bulk(questions=30, logs=10, events=10)
    report = await backfill(legacy, pg_schema_dsn, tmp_path)
    after = {r["indexrelid"] for r in await pg_rows(
        pg_schema_dsn, "SELECT indexrelid FROM pg_index WHERE indrelid = 'questions'::regclass")}
    assert oids == after  # never dropped: live searches may be using them
    assert not any(ix.startswith("idx_questions") for ix in report.indexes_built)
    assert "questions" not in report.fast_path  # through the conflict-safe staging table
    assert report.tables["questions"].inserted == 30


# -- the command line -----------------------------------------------------------------------


def test_a_missing_source_is_one_line_and_exit_2(tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["backfill", "--from", str(tmp_path / "nope.db")],
                                env={"POSTGRES_DSN": "postgresql://u:secret@127.0.0.1:1/x"})
    assert result.exit_code == 2
    assert result.output.strip().splitlines() == [f"error: --from {tmp_path / 'nope.db'}: "
                                                  "no such file: run `cutover backfill --from "
                                                  "PATH` with the legacy app.db"]


def test_the_command_prints_a_json_summary_and_writes_the_report(
        legacy: LegacyDB, pg_dsn: str, tmp_path: Path) -> None:
    legacy.bulk(users=2, questions=10, logs=10, events=10)
    legacy.event(id="ev-bad", occurred_at="")
    out = tmp_path / "r.jsonl"
    result = CliRunner().invoke(app, ["backfill", "--from", str(legacy.path), "--rejects",
                                      str(out), "--json"], env={"POSTGRES_DSN": pg_dsn})
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    assert doc["tables"]["learning_events"] == {
        "read": 11, "inserted": 10, "present": 0, "skipped": 0, "rejected": 1, "changed": 0}
    assert "secret" not in result.output
    [line] = iter_lines(out)
    assert set(line) >= {"table", "id", "column", "value", "reason"}



@pytest.fixture(params=["superuser", "owner"])
def loader_dsn(request: pytest.FixtureRequest) -> str:
    """The test database, reached as a superuser, then as a role that owns it but is not a
    superuser (as on a managed server): that one may not switch per-row foreign key checks off."""
    return str(request.getfixturevalue("pg_dsn" if request.param == "superuser" else "owner_dsn"))


async def test_a_parent_deleted_meanwhile_takes_its_children_with_it(
        legacy: LegacyDB, loader_dsn: str, tmp_path: Path) -> None:
    dsn = loader_dsn
    kept, gone = legacy.user(), legacy.user()
    book = legacy.book(kept)
    q = legacy.question(book)
    lost_q = legacy.question(legacy.book(gone))
    for _ in range(3):
        legacy.log(kept, q)
    logs_of_gone = [legacy.log(gone, q), legacy.log(kept, lost_q)]
    store = PostgresStore(dsn)
    try:
        await store.init_schema()
        # dual writes on: the repository deleted a user (and, by cascade, everything of it)
        await store.apply([Mutation("user", "delete", uuid.UUID(gone), 7)])
    finally:
        await store.close()
    report = await backfill(legacy, dsn, tmp_path)
    [me] = await pg_rows(dsn, "SELECT rolsuper FROM pg_roles WHERE rolname = current_user")
    # a superuser checks the foreign keys once per table; the owner has them checked per row
    assert bool(report.fk_checked_after) == me["rolsuper"]
    rows = {str(r["id"]): r["question_id"] for r in await pg_rows(
        dsn, "SELECT id, question_id FROM typing_logs")}
    assert len(rows) == 4 and logs_of_gone[0] not in rows  # its user is gone
    assert rows[logs_of_gone[1]] is None  # its question went with the user: ON DELETE SET NULL
    assert report.tables["users"].skipped == 1
    assert report.tables["study_books"].skipped == 1  # the book of the deleted user
    lines = {r["id"]: r for r in rejects(tmp_path)}
    assert lines[logs_of_gone[0]]["kind"] == "skipped"
    assert lines[logs_of_gone[1]]["kind"] == "changed"
    assert not [r for r in rejects(tmp_path) if r["kind"] == "rejected"]
