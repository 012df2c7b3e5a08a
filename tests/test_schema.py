"""`cutover schema init` on both stores: idempotent, upgrades a legacy app.db in place (after a
backup), keeps the legacy application working, and gives PostgreSQL the seed's types."""

from __future__ import annotations

import asyncio
import os
import sqlite3
import subprocess
import sys
import uuid
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from proxy import LEGACY_NAMESPACE, NotFoundError, PostgresStore, SQLiteStore
from proxy.legacy import legacy_uuid
from proxy.stores.sqlite_schema import LEGACY_SCHEMA as SQLITE_LEGACY_SCHEMA

pytestmark = pytest.mark.slow  # see pyproject.toml's markers

ROOT = Path(__file__).resolve().parents[1]
LEGACY_SCHEMA_CANDIDATES = [ROOT / "docs" / "legacy_schema.sql",
                            ROOT.parent / "shared" / "legacy_schema.sql",
                            Path("/work/shared/legacy_schema.sql")]
LEGACY_TABLES = ["users", "study_books", "questions", "typing_logs", "learning_events"]
LEGACY_COLUMNS = {
    "users": "id, name, email, created_at, updated_at",
    "study_books": "id, user_id, title, description, created_at, updated_at",
    "questions": "id, study_book_id, language, category, difficulty, question, answer, "
                 "created_at, updated_at",
    "typing_logs": "id, user_id, question_id, wpm, accuracy, took_ms, created_at",
    "learning_events": "id, user_id, app_id, action, object_id, score, duration_ms, occurred_at",
}
U1 = "0d5b8f3e-8a47-4c0e-9a8e-0c1f2d3e4f50"
B1 = "1a2b3c4d-5e6f-4a7b-8c9d-0e1f2a3b4c5d"
Q_JSON = "2b3c4d5e-6f70-4b8c-9d0e-1f2a3b4c5d6e"
Q_LIST = "3c4d5e6f-7081-4c9d-8e1f-2a3b4c5d6e7f"
Q_CJK = "4d5e6f70-8192-4dae-9f20-3b4c5d6e7f80"
TS = "2023-05-01T10:00:00Z"


def _legacy_schema() -> str:
    for path in LEGACY_SCHEMA_CANDIDATES:
        if path.exists():
            return path.read_text()
    return SQLITE_LEGACY_SCHEMA  # the project's copy, when shared/ is not beside the checkout


def _make_legacy_db(path: Path) -> None:
    """An app.db as the application keeps it today, search rows in the standalone FTS table."""
    conn = sqlite3.connect(path)
    conn.executescript(_legacy_schema())
    with conn:
        conn.executemany("INSERT INTO users VALUES (?, ?, ?, ?, ?)", [
            (U1, "Aiko", "aiko@example.com", TS, TS),
            ("legacy-user-1", "Old Timer", "old@example.com", "2019-01-01 09:00:00",
             "1546333200"),
        ])
        conn.executemany("INSERT INTO study_books VALUES (?, ?, ?, ?, ?, ?)", [
            (B1, U1, "Python", None, TS, TS),
            ("legacy-book-1", "legacy-user-1", "Old book", "desc", TS, TS),
            ("orphan-book", "ghost-user", "Orphan (FKs were not enforced)", None, TS, TS),
        ])
        questions = [
            (Q_JSON, B1, "en", "python", "easy", "How do I parse JSON in Python?",
             "Use json.loads on the string.", TS, TS),
            (Q_LIST, B1, "en", "python", "easy", "What is a list comprehension?",
             "A compact way to build lists from iterables.", TS, TS),
            (Q_CJK, B1, "ja", "ml", "easy", "機械学習の基礎", "教師あり学習とは何か", TS, TS),
            ("legacy-q-1", "legacy-book-1", "en", "misc", "hard", "Old question about zebras",
             "Zebras have stripes.", TS, TS),
            ("orphan-q", "orphan-book", "en", "misc", "easy", "Orphan question", "Still kept.",
             TS, TS),
            ("legacy-q-2", B1, "en", "misc", "easy", "Why do walruses have tusks?",
             "To haul out onto the ice.", TS, TS),
        ]
        conn.executemany("INSERT INTO questions VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)", questions)
        conn.executemany("INSERT INTO questions_fts (question_id, question, answer) "
                         "VALUES (?, ?, ?)", [(q[0], q[5], q[6]) for q in questions])
        conn.executemany("INSERT INTO typing_logs VALUES (?, ?, ?, ?, ?, ?, ?)", [
            ("5e6f7081-92a3-4bcd-8e0f-4c5d6e7f8091", U1, Q_JSON, 61, 97.5, 1200, TS),
            ("legacy-log-1", U1, "missing-question", 40, 88.123, 900, TS),
        ])
        conn.executemany("INSERT INTO learning_events VALUES (?, ?, ?, ?, ?, ?, ?, ?)", [
            ("6f708192-a3b4-4cde-9f10-5d6e7f8091a2", U1, "typing", "view", None, None, None, TS),
            ("legacy-ev-1", "legacy-user-1", "typing", "answer", "legacy-q-1", 3.14159, 1500,
             "1700000000000"),
        ])
    conn.close()


# the columns holding ids (learning_events.user_id and object_id are free text in the seed)
ID_COLUMNS = {"users": ("id",), "study_books": ("id", "user_id"),
              "questions": ("id", "study_book_id"),
              "typing_logs": ("id", "user_id", "question_id"), "learning_events": ("id",),
              "questions_fts": ("question_id",)}


def _mapped(snapshot: dict[str, list[tuple[Any, ...]]]) -> dict[str, list[tuple[Any, ...]]]:
    """The contract's mapping: an id that is not a UUID becomes uuid5(LEGACY_NAMESPACE, id),
    and so does every reference to it."""
    out = {}
    for table, rows in snapshot.items():
        names = (["question_id", "question", "answer"] if table == "questions_fts"
                 else [c.strip() for c in LEGACY_COLUMNS[table].split(",")])
        idx = [names.index(c) for c in ID_COLUMNS[table]]
        new_rows = []
        for row in rows:
            values = list(row)
            for i in idx:
                if values[i] is not None:
                    values[i] = str(legacy_uuid(values[i]))
            new_rows.append(tuple(values))
        out[table] = sorted(new_rows, key=lambda r: r[0])
    return out


def _snapshot(path: Path) -> dict[str, list[tuple[Any, ...]]]:
    conn = sqlite3.connect(path)
    try:
        out = {t: conn.execute(f"SELECT {LEGACY_COLUMNS[t]} FROM {t} ORDER BY id").fetchall()
               for t in LEGACY_TABLES}
        out["questions_fts"] = conn.execute(
            "SELECT question_id, question, answer FROM questions_fts ORDER BY question_id"
        ).fetchall()
        return out
    finally:
        conn.close()


def _env(sqlite_path: Path, dsn: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in (
        "READ_PRIMARY", "READ_PRIMARY_FILE", "DUAL_WRITE", "METRICS_PORT")}
    env.update(SQLITE_PATH=str(sqlite_path), POSTGRES_DSN=dsn)
    return env


async def _cutover(sqlite_path: Path, dsn: str, *args: str) -> subprocess.CompletedProcess[str]:
    exe = Path(sys.executable).parent / "cutover"
    return await asyncio.to_thread(
        subprocess.run, [str(exe), "schema", "init", *args], env=_env(sqlite_path, dsn),
        capture_output=True, text=True, timeout=120,
    )


def _backups(path: Path) -> list[Path]:
    return sorted(path.parent.glob(path.name + ".bak*"))


async def _pg_catalog(dsn: str) -> tuple[list[Any], list[Any]]:
    conn = await asyncpg.connect(dsn)
    try:
        tables = await conn.fetch(
            "SELECT table_name FROM information_schema.tables "
            "WHERE table_schema = 'public' ORDER BY 1")
        indexes = await conn.fetch(
            "SELECT indexname, indexdef FROM pg_indexes WHERE schemaname = 'public' ORDER BY 1")
        return [r[0] for r in tables], [tuple(r) for r in indexes]
    finally:
        await conn.close()


async def test_schema_init_twice_creates_tables_on_both(sqlite_path: Path, pg_dsn: str) -> None:
    first = await _cutover(sqlite_path, pg_dsn)
    assert first.returncode == 0, first.stderr
    conn = sqlite3.connect(sqlite_path)
    sqlite_objects = conn.execute("SELECT type, name, sql FROM sqlite_master ORDER BY name")
    before = sqlite_objects.fetchall()
    conn.close()
    tables, indexes = await _pg_catalog(pg_dsn)
    assert set(LEGACY_TABLES) <= set(tables)
    assert {"users", "questions", "questions_search"} <= {name for _, name, _ in before}

    second = await _cutover(sqlite_path, pg_dsn)
    assert second.returncode == 0, second.stderr
    conn = sqlite3.connect(sqlite_path)
    assert conn.execute("SELECT type, name, sql FROM sqlite_master ORDER BY name").fetchall() \
        == before
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    conn.close()
    assert await _pg_catalog(pg_dsn) == (tables, indexes)
    assert _backups(sqlite_path) == []  # a new file is not a legacy one: nothing to back up
    assert "postgres" in second.stdout and "sqlite" in second.stdout


async def test_legacy_app_db_is_backed_up_and_upgraded_in_place(
    sqlite_path: Path, pg_dsn: str
) -> None:
    _make_legacy_db(sqlite_path)
    legacy = _snapshot(sqlite_path)

    result = await _cutover(sqlite_path, pg_dsn)
    assert result.returncode == 0, result.stderr

    # a backup copy beside it, holding the database as it was
    (backup,) = _backups(sqlite_path)
    assert backup.parent == sqlite_path.parent
    assert _snapshot(backup) == legacy
    conn = sqlite3.connect(backup)
    assert "row_version" not in {r[1] for r in conn.execute("PRAGMA table_info(questions)")}
    conn.close()

    # upgraded in place without losing a row (the legacy FTS table included); the only change
    # is the contract's: ids that are not UUIDs, and references to them, become their uuid5,
    # and the original text is kept in legacy_ids
    upgraded = _snapshot(sqlite_path)
    assert upgraded == _mapped(legacy)
    conn = sqlite3.connect(sqlite_path)
    assert "row_version" in {r[1] for r in conn.execute("PRAGMA table_info(questions)")}
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    kept = {(t, old): new for t, old, new in conn.execute(
        "SELECT table_name, legacy_id, id FROM legacy_ids")}
    conn.close()
    for table, old in [("users", "legacy-user-1"), ("study_books", "orphan-book"),
                       ("questions", "legacy-q-2"), ("typing_logs", "legacy-log-1")]:
        assert kept[(table, old)] == str(uuid.uuid5(LEGACY_NAMESPACE, old))

    # a second run leaves it alone: no second backup
    again = await _cutover(sqlite_path, pg_dsn)
    assert again.returncode == 0, again.stderr
    assert len(_backups(sqlite_path)) == 1
    assert _snapshot(sqlite_path) == upgraded

    # the old rows are searchable through the new index
    store = SQLiteStore(sqlite_path)
    try:
        hits = await store.search_questions("json", user_id=U1)
        assert [str(h.question_id) for h in hits] == [Q_JSON]
        assert "<mark>JSON</mark>" in hits[0].highlight
        hits = await store.search_questions("lists", user_id=U1)
        assert [str(h.question_id) for h in hits] == [Q_LIST]
        hits = await store.search_questions("学習", user_id=U1)
        assert [(str(h.question_id), h.match_kind) for h in hits] == [(Q_CJK, "substring")]
        hits = await store.search_questions("walruses", user_id=U1)  # a legacy, non-UUID id
        assert [h.question_id for h in hits] == [legacy_uuid("legacy-q-2")]
        # legacy rows read back through the store with aware timestamps
        q = await store.get_question(uuid.UUID(Q_JSON))
        assert q.created_at == datetime(2023, 5, 1, 10, 0, tzinfo=UTC)
    finally:
        await store.close()


async def test_no_backup_flag_skips_the_copy(sqlite_path: Path, pg_dsn: str) -> None:
    _make_legacy_db(sqlite_path)
    legacy = _snapshot(sqlite_path)
    result = await _cutover(sqlite_path, pg_dsn, "--no-backup")
    assert result.returncode == 0, result.stderr
    assert _backups(sqlite_path) == []
    assert _snapshot(sqlite_path) == _mapped(legacy)


async def test_legacy_application_keeps_working_after_the_upgrade(
    sqlite_path: Path, pg_dsn: str
) -> None:
    _make_legacy_db(sqlite_path)
    assert (await _cutover(sqlite_path, pg_dsn, "--no-backup")).returncode == 0

    # the old application: its own connection, no foreign keys pragma, the seed's columns only
    new_id = "7a8b9c0d-1e2f-4a3b-8c4d-5e6f7a8b9c0d"
    conn = sqlite3.connect(sqlite_path)
    with conn:
        conn.execute(
            "INSERT INTO questions (id, study_book_id, language, category, difficulty, question,"
            " answer, created_at, updated_at) VALUES (?, ?, 'en', 'go', 'easy', ?, ?, ?, ?)",
            (new_id, B1, "What is a goroutine?", "A lightweight thread managed by Go.", TS, TS),
        )
        conn.execute("INSERT INTO questions_fts (question_id, question, answer) VALUES (?, ?, ?)",
                     (new_id, "What is a goroutine?", "A lightweight thread managed by Go."))
        conn.execute("INSERT INTO users (id, name, email, created_at, updated_at) "
                     "VALUES ('legacy-2', 'N', 'n@example.com', ?, ?)", (TS, TS))
        conn.execute("UPDATE questions SET answer = 'Use json.loads or json.load.' WHERE id = ?",
                     (Q_JSON,))
        conn.execute("DELETE FROM questions WHERE id = ?", (Q_LIST,))
    assert conn.execute("SELECT row_version FROM questions WHERE id = ?", (new_id,)).fetchone() \
        == (0,)
    conn.close()

    store = SQLiteStore(sqlite_path)
    try:
        hits = await store.search_questions("goroutine", user_id=U1)
        assert [str(h.question_id) for h in hits] == [new_id]
        assert [str(h.question_id) for h in await store.search_questions("json load",
                                                                          user_id=U1)] == [Q_JSON]
        assert await store.search_questions("comprehension", user_id=U1) == []
    finally:
        await store.close()
    _assert_index_consistent(sqlite_path)


def _assert_index_consistent(path: Path) -> None:
    conn = sqlite3.connect(path)
    try:
        conn.execute("INSERT INTO questions_search(questions_search, rank) "
                     "VALUES('integrity-check', 1)")
        n_questions = conn.execute("SELECT count(*) FROM questions").fetchone()[0]
        assert conn.execute("SELECT count(*) FROM questions_search").fetchone()[0] == n_questions
        mismatched = conn.execute(
            "SELECT q.id FROM questions q "
            "LEFT JOIN question_search_rowids m ON m.question_id = q.id "
            "LEFT JOIN questions_search s ON s.rowid = m.rowid "
            "WHERE s.question IS NOT q.question OR s.answer IS NOT q.answer"
        ).fetchall()
        assert mismatched == []
    finally:
        conn.close()


async def test_search_index_changes_in_the_questions_transaction(
    sqlite_store: SQLiteStore, sqlite_path: Path
) -> None:
    user = await sqlite_store.create_user(name="A", email="a@example.com")
    book = await sqlite_store.create_study_book(user_id=user.id, title="B")
    q = await sqlite_store.create_question(study_book_id=book.id, language="en", category="c",
                                           difficulty="d", question="Where is the json module?",
                                           answer="In the standard library.")
    conn = sqlite3.connect(sqlite_path, isolation_level=None)
    conn.execute("BEGIN IMMEDIATE")
    conn.execute("UPDATE questions SET question = 'zebra crossing' WHERE id = ?", (str(q.id),))
    inside = conn.execute("SELECT count(*) FROM questions_search WHERE questions_search "
                          "MATCH 'zebra'").fetchone()[0]
    assert inside == 1  # the index changed with the row, inside the transaction
    with pytest.raises(sqlite3.IntegrityError):
        conn.execute("INSERT INTO users (id, name, email, created_at, updated_at) "
                     "VALUES (?, 'dup', 'd@example.com', 'x', 'x')", (str(user.id),))
    conn.execute("ROLLBACK")
    conn.close()

    assert await sqlite_store.search_questions("zebra", user_id=user.id) == []
    assert [h.question_id for h in await sqlite_store.search_questions(
        "json", user_id=user.id)] == [q.id]

    # a store write that fails leaves the index as it was
    with pytest.raises(NotFoundError):
        await sqlite_store.create_question(study_book_id=uuid.uuid4(), language="en",
                                           category="c", difficulty="d",
                                           question="zebra orphan", answer="x")
    assert await sqlite_store.search_questions("zebra", user_id=user.id) == []
    _assert_index_consistent(sqlite_path)


async def test_search_index_survives_churn(sqlite_store: SQLiteStore, sqlite_path: Path) -> None:
    user = await sqlite_store.create_user(name="A", email="a@example.com")
    book = await sqlite_store.create_study_book(user_id=user.id, title="B")
    ids = []
    for i in range(120):
        q = await sqlite_store.create_question(
            study_book_id=book.id, language="en", category="c", difficulty="d",
            question=f"question token{i} about parsing", answer=f"answer body{i} text")
        ids.append(q.id)
    for i in range(0, 120, 2):
        await sqlite_store.update_question(ids[i], question=f"renamed newtok{i} item")
    for i in range(0, 120, 3):
        await sqlite_store.update_question(ids[i], answer=f"changed ansnew{i}")
    for i in range(0, 120, 5):
        await sqlite_store.delete_question(ids[i])
    # the legacy application writes too (plain SQL, trigger-maintained)
    conn = sqlite3.connect(sqlite_path)
    with conn:
        conn.execute("UPDATE questions SET question = 'raw sqlupdated' WHERE id = ?",
                     (str(ids[1]),))
        conn.execute("DELETE FROM questions WHERE id = ?", (str(ids[7]),))
    conn.close()
    _assert_index_consistent(sqlite_path)

    async def found(text: str) -> list[uuid.UUID]:
        return [h.question_id for h in await sqlite_store.search_questions(text, user_id=user.id)]

    assert await found("newtok4") == [ids[4]]
    assert await found("token4") == []  # the old text left the index
    assert await found("ansnew3") == [ids[3]]
    assert await found("newtok10") == []  # deleted
    assert await found("sqlupdated") == [ids[1]]
    assert await found("token7") == []
    assert await found("token9") == [ids[9]]


# -- PostgreSQL: the seed's types --

SEED_TYPES: dict[str, dict[str, tuple[str, Any]]] = {
    "users": {"id": ("uuid", None), "name": ("character varying", 255),
              "email": ("character varying", 255),
              "created_at": ("timestamp with time zone", None),
              "updated_at": ("timestamp with time zone", None)},
    "study_books": {"id": ("uuid", None), "user_id": ("uuid", None),
                    "title": ("character varying", 500), "description": ("text", None),
                    "created_at": ("timestamp with time zone", None),
                    "updated_at": ("timestamp with time zone", None)},
    "questions": {"id": ("uuid", None), "study_book_id": ("uuid", None),
                  "language": ("character varying", 50), "category": ("character varying", 100),
                  "difficulty": ("character varying", 50), "question": ("text", None),
                  "answer": ("text", None), "created_at": ("timestamp with time zone", None),
                  "updated_at": ("timestamp with time zone", None),
                  "search_vector": ("tsvector", None)},
    "typing_logs": {"id": ("uuid", None), "user_id": ("uuid", None),
                    "question_id": ("uuid", None), "wpm": ("integer", None),
                    "accuracy": ("numeric", (5, 2)), "took_ms": ("integer", None),
                    "created_at": ("timestamp with time zone", None)},
    "learning_events": {"id": ("uuid", None), "user_id": ("character varying", 255),
                        "app_id": ("character varying", 100),
                        "action": ("character varying", 100),
                        "object_id": ("character varying", 255), "score": ("numeric", (10, 2)),
                        "duration_ms": ("integer", None),
                        "occurred_at": ("timestamp with time zone", None)},
}
SEED_DELETE_RULES = {
    ("study_books", "user_id"): "CASCADE", ("questions", "study_book_id"): "CASCADE",
    ("typing_logs", "user_id"): "CASCADE", ("typing_logs", "question_id"): "SET NULL",
}


async def test_postgres_columns_have_the_seeds_types(
    pg_store: PostgresStore, pg_schema_dsn: str
) -> None:
    conn = await asyncpg.connect(pg_schema_dsn)
    try:
        rows = await conn.fetch(
            "SELECT table_name, column_name, data_type, character_maximum_length, "
            "numeric_precision, numeric_scale, is_generated, is_nullable "
            "FROM information_schema.columns WHERE table_schema = 'public'")
        cols = {(r["table_name"], r["column_name"]): r for r in rows}
        for table, spec in SEED_TYPES.items():
            for column, (data_type, size) in spec.items():
                r = cols[(table, column)]
                assert r["data_type"] == data_type, (table, column, r["data_type"])
                if data_type == "character varying":
                    assert r["character_maximum_length"] == size, (table, column)
                if data_type == "numeric":
                    assert (r["numeric_precision"], r["numeric_scale"]) == size, (table, column)
        assert cols[("questions", "search_vector")]["is_generated"] == "ALWAYS"
        assert cols[("study_books", "description")]["is_nullable"] == "YES"
        assert cols[("questions", "question")]["is_nullable"] == "NO"
        # anything the project adds has a default, so the seed's INSERTs still work
        added = [r for (t, c), r in cols.items() if t in SEED_TYPES and c not in SEED_TYPES[t]]
        for r in added:
            default = await conn.fetchval(
                "SELECT column_default FROM information_schema.columns "
                "WHERE table_name = $1 AND column_name = $2", r["table_name"], r["column_name"])
            assert default is not None or r["is_nullable"] == "YES", dict(r)

        rules = await conn.fetch(
            "SELECT kcu.table_name, kcu.column_name, rc.delete_rule "
            "FROM information_schema.referential_constraints rc "
            "JOIN information_schema.key_column_usage kcu "
            "  ON kcu.constraint_name = rc.constraint_name")
        assert {(r[0], r[1]): r[2] for r in rules} == SEED_DELETE_RULES

        indexes = dict(await conn.fetch(
            "SELECT indexname, indexdef FROM pg_indexes WHERE tablename = 'questions'"))
        assert "USING gin (search_vector)" in indexes["idx_questions_search_vector"]
        assert "idx_questions_trigram" not in indexes  # the vocabulary's index replaced it
        vocabulary = dict(await conn.fetch(
            "SELECT indexname, indexdef FROM pg_indexes WHERE tablename = 'cutover_search_words'"))
        assert "(study_book_id, word gin_trgm_ops)" in vocabulary[
            "cutover_search_words_book_trigram"]  # a lookup reads one user's books only
        assert "idx_questions_study_book_id" in indexes
        assert await conn.fetchval(
            "SELECT count(*) FROM pg_extension "
            "WHERE extname IN ('pg_trgm', 'unaccent', 'fuzzystrmatch', 'btree_gin')") == 4
    finally:
        await conn.close()


async def test_postgres_plain_insert_and_copy_of_the_seeds_columns(
    pg_store: PostgresStore, pg_schema_dsn: str
) -> None:
    conn = await asyncpg.connect(pg_schema_dsn)
    try:
        uid = await conn.fetchval(
            "INSERT INTO users (name, email) VALUES ('Plain', 'plain@example.com') RETURNING id")
        bid = await conn.fetchval(
            "INSERT INTO study_books (id, user_id, title, description, created_at, updated_at) "
            "VALUES (gen_random_uuid(), $1, 'T', NULL, now(), now()) RETURNING id", uid)
        qid = await conn.fetchval(
            "INSERT INTO questions (study_book_id, language, category, difficulty, question, "
            "answer) VALUES ($1, 'en', 'go', 'easy', 'What is a goroutine?', "
            "'A lightweight thread.') RETURNING id", bid)
        await conn.execute(
            "INSERT INTO typing_logs (user_id, question_id, wpm, accuracy, took_ms) "
            "VALUES ($1, $2, 50, 97.5, 1000)", uid, qid)
        await conn.execute(
            "INSERT INTO learning_events (user_id, app_id, action) VALUES ('u', 'a', 'view')")
        copied = uuid.uuid4()
        now = datetime.now(UTC)
        await conn.copy_records_to_table(
            "questions", columns=["id", "study_book_id", "language", "category", "difficulty",
                                  "question", "answer", "created_at", "updated_at"],
            records=[(copied, bid, "en", "go", "easy", "How do channels work?",
                      "They pass values between goroutines.", now, now)])
    finally:
        await conn.close()

    q = await pg_store.get_question(qid)
    assert q.question == "What is a goroutine?" and q.created_at.tzinfo is not None
    log = (await pg_store.list_typing_logs(uid))[0]
    assert log.accuracy == Decimal("97.50")
    hits = await pg_store.search_questions("lightweight", user_id=uid)
    assert [h.question_id for h in hits] == [qid]  # the generated vector is there
    hits = await pg_store.search_questions("goroutine", user_id=uid)
    assert {h.question_id for h in hits} == {qid, copied}
    hits = await pg_store.search_questions("channels", user_id=uid)
    assert [h.question_id for h in hits] == [copied]
    updated = await pg_store.update_question(copied, answer="Typed conduits.")
    assert updated.answer == "Typed conduits."


def test_the_project_copy_of_the_legacy_schema_matches_the_shared_one() -> None:
    """sqlite_schema.LEGACY_SCHEMA is legacy_schema.sql (plus IF NOT EXISTS), statement by
    statement, so tests and benches that build a legacy app.db from it build the real one."""
    shared = next((p for p in LEGACY_SCHEMA_CANDIDATES if p.exists()), None)
    if shared is None:
        pytest.skip("shared/legacy_schema.sql is not beside this checkout")

    def statements(sql: str) -> list[str]:
        sql = "\n".join(line.split("--")[0] for line in sql.splitlines())
        sql = sql.replace("IF NOT EXISTS ", "")
        return sorted(" ".join(s.split()) for s in sql.split(";") if s.strip())

    assert statements(SQLITE_LEGACY_SCHEMA) == statements(shared.read_text())


async def test_the_vocabulary_follows_every_write_of_a_question(pg_store: PostgresStore,
                                                                pg_schema_dsn: str) -> None:
    """The fuzzy branch corrects query words against the words of the questions: triggers add
    the words of every question inserted (COPY and plain INSERT included) or updated, and
    init_schema fills the vocabulary of a database whose schema predates it."""
    user = await pg_store.create_user(name="v", email="v@example.com")
    book = await pg_store.create_study_book(user_id=user.id, title="b")
    q = await pg_store.create_question(study_book_id=book.id, language="en", category="c",
                                       difficulty="d", question="What is Zyxwvut.Frobnicate?",
                                       answer="It frobnicates quuxes.")
    conn = await asyncpg.connect(pg_schema_dsn)
    words = "SELECT word FROM cutover_search_words WHERE word = ANY($1::text[]) ORDER BY word"
    try:
        assert [r[0] for r in await conn.fetch(
            words, ["zyxwvut", "frobnicate", "frobnicates", "quuxes"])] == [
            "frobnicate", "frobnicates", "quuxes", "zyxwvut"]
        await pg_store.update_question(q.id, answer="Now it grommets.")
        assert [r[0] for r in await conn.fetch(words, ["grommets"])] == ["grommets"]
        await conn.copy_records_to_table(
            "questions", columns=["study_book_id", "language", "category", "difficulty",
                                  "question", "answer"],
            records=[(book.id, "en", "c", "d", "Copied flibbertigibbet", "a")])
        assert [r[0] for r in await conn.fetch(words, ["flibbertigibbet"])] == [
            "flibbertigibbet"]
        # a schema from before the vocabulary, and so from before revisions were recorded: it
        # is stamped 0000_legacy and brought to the baseline, which builds the vocabulary
        await conn.execute("DROP TABLE cutover_search_words")
        await conn.execute("DROP TABLE alembic_version")
        await pg_store.init_schema()
        assert [r[0] for r in await conn.fetch(
            words, ["zyxwvut", "grommets", "flibbertigibbet"])] == [
            "flibbertigibbet", "grommets", "zyxwvut"]
        hits = await pg_store.search_questions("zyxwuvt", user_id=user.id)  # a typo
        assert [h.question_id for h in hits] == [q.id] and hits[0].match_kind == "fuzzy"
    finally:
        await conn.close()


async def test_a_documents_words_split_on_every_non_alphanumeric_run(pg_store: PostgresStore,
                                                                      pg_schema_dsn: str) -> None:
    """What the vocabulary holds of a document: lower-case runs of letters and digits (any
    script), split on punctuation and on every kind of blank, none longer than 64 characters;
    a NULL document has none. And the planner inlines it where it is called in FROM."""
    conn = await asyncpg.connect(pg_schema_dsn)
    doc = ("JSON.dumps(obj)\tUTF8\u00a0\u00dcn\u00efcode\n\n\u65e5\u672c\u8a9e\u306e\u57fa\u790e"
           "--x_y  " + "a" * 64 + " " + "b" * 65 + " 3.14")
    try:
        words = [r[0] for r in await conn.fetch("SELECT cutover_document_words($1)", doc)]
        assert words == ["json", "dumps", "obj", "utf8", "\u00fcn\u00efcode",
                         "\u65e5\u672c\u8a9e\u306e\u57fa\u790e", "x", "y", "a" * 64, "3", "14"]
        assert await conn.fetch("SELECT cutover_document_words(NULL)") == []
        plan = await conn.fetchval(
            "EXPLAIN (FORMAT JSON, VERBOSE) SELECT w FROM unnest($1::text[]) AS t, "
            "cutover_document_words(t) AS w", ["a b"])
        assert "cutover_document_words" not in plan and "string_to_table" in plan
    finally:
        await conn.close()


async def test_init_tells_the_planner_what_word_similarity_costs(pg_store: PostgresStore,
                                                                 pg_schema_dsn: str) -> None:
    conn = await asyncpg.connect(pg_schema_dsn)
    try:
        assert await conn.fetchval(WORD_SIMILARITY_COST) == 500
    finally:
        await conn.close()


async def test_init_works_for_a_database_owner_who_may_not_change_that_cost(
    owner_dsn: str,
) -> None:
    """A role that owns the database but not pg_trgm's functions (a managed server): init
    still succeeds, and the planner keeps pg_trgm's own estimate."""
    store = PostgresStore(owner_dsn)
    try:
        await store.init_schema()  # pg_trgm is a trusted extension: the owner may create it
    finally:
        await store.close()
    conn = await asyncpg.connect(owner_dsn)
    try:
        assert await conn.fetchval(
            "SELECT rolsuper FROM pg_roles WHERE rolname = current_user") is False
        assert await conn.fetchval(WORD_SIMILARITY_COST) == 1
        assert await conn.fetchval("SELECT count(*) FROM questions") == 0
    finally:
        await conn.close()


WORD_SIMILARITY_COST = "SELECT procost FROM pg_proc WHERE proname = 'word_similarity_op'"
