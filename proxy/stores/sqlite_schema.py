"""The SQLite schema: the legacy tables as they are, plus what the cutover adds in place.

Added, never replacing a legacy column or row:
- `row_version` on every table (DEFAULT 0, so the legacy application's INSERTs still work): the
  repository's write version, which lets a mirror ignore replays older than what it holds.
- `questions_search`, an FTS5 index (porter stemming over unicode61 with diacritics folded) kept
  by triggers in the same transaction as the question it indexes. It is keyed by
  `question_search_rowids`, a stable integer id per question: the questions table has a TEXT
  primary key, so its implicit rowid may change on VACUUM and cannot key an external-content
  index. The legacy `questions_fts` table is left as it was (the old application's own index).
- `cutover_outbox` (mirror writes waiting to reach PostgreSQL), `cutover_tombstones` (deletes a
  late replay must not undo) and `legacy_ids` (original text of ids that were not UUIDs).
"""

from __future__ import annotations

import random
import sqlite3
import time

from proxy.legacy import upgrade_legacy_ids

LEGACY_TABLES = """
CREATE TABLE IF NOT EXISTS users (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    email TEXT UNIQUE NOT NULL,
    created_at TEXT NOT NULL,
    updated_at TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS study_books (
    id TEXT PRIMARY KEY,
    user_id TEXT NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    title TEXT NOT NULL,
    description TEXT,
    created_at TEXT NOT NULL,
    updated_at TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS idx_study_books_user_id ON study_books(user_id);
CREATE TABLE IF NOT EXISTS questions (
    id TEXT PRIMARY KEY,
    study_book_id TEXT NOT NULL REFERENCES study_books(id) ON DELETE CASCADE,
    language TEXT NOT NULL,
    category TEXT NOT NULL,
    difficulty TEXT NOT NULL,
    question TEXT NOT NULL,
    answer TEXT NOT NULL,
    created_at TEXT NOT NULL,
    updated_at TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS idx_questions_study_book_id ON questions(study_book_id);
CREATE TABLE IF NOT EXISTS typing_logs (
    id TEXT PRIMARY KEY,
    user_id TEXT NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    question_id TEXT REFERENCES questions(id) ON DELETE SET NULL,
    wpm INTEGER NOT NULL,
    accuracy REAL NOT NULL,
    took_ms INTEGER NOT NULL,
    created_at TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS learning_events (
    id TEXT PRIMARY KEY,
    user_id TEXT NOT NULL,
    app_id TEXT NOT NULL,
    action TEXT NOT NULL,
    object_id TEXT,
    score REAL,
    duration_ms INTEGER,
    occurred_at TEXT NOT NULL
);
"""

# The application's own search index in today's app.db: a standalone FTS5 table it filled beside
# each question. The cutover leaves it as it is (see the module docstring).
LEGACY_FTS = (
    "CREATE VIRTUAL TABLE IF NOT EXISTS questions_fts USING fts5(\n"
    "    question_id UNINDEXED,\n    question,\n    answer\n);\n"
)
# docs/legacy_schema.sql: the SQLite database the application runs on today
LEGACY_SCHEMA = LEGACY_TABLES + LEGACY_FTS

ADDED = """
CREATE INDEX IF NOT EXISTS idx_typing_logs_user_id ON typing_logs(user_id);
CREATE INDEX IF NOT EXISTS idx_typing_logs_question_id ON typing_logs(question_id);
CREATE INDEX IF NOT EXISTS idx_learning_events_user_occurred
    ON learning_events(user_id, occurred_at DESC);

CREATE TABLE IF NOT EXISTS question_search_rowids (
    rowid INTEGER PRIMARY KEY,
    question_id TEXT NOT NULL UNIQUE
);
CREATE VIRTUAL TABLE IF NOT EXISTS questions_search USING fts5(
    question, answer, tokenize = 'porter unicode61 remove_diacritics 2'
);
CREATE TRIGGER IF NOT EXISTS questions_search_ai AFTER INSERT ON questions BEGIN
    INSERT INTO question_search_rowids(question_id) VALUES (new.id);
    INSERT INTO questions_search(rowid, question, answer)
        VALUES (last_insert_rowid(), new.question, new.answer);
END;
CREATE TRIGGER IF NOT EXISTS questions_search_au AFTER UPDATE OF question, answer, id ON questions
BEGIN
    UPDATE question_search_rowids SET question_id = new.id WHERE question_id = old.id;
    UPDATE questions_search SET question = new.question, answer = new.answer
        WHERE rowid = (SELECT rowid FROM question_search_rowids WHERE question_id = new.id);
END;
CREATE TRIGGER IF NOT EXISTS questions_search_ad AFTER DELETE ON questions BEGIN
    DELETE FROM questions_search
        WHERE rowid = (SELECT rowid FROM question_search_rowids WHERE question_id = old.id);
    DELETE FROM question_search_rowids WHERE question_id = old.id;
END;

CREATE TABLE IF NOT EXISTS cutover_outbox (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    target TEXT NOT NULL,
    entity TEXT NOT NULL,
    op TEXT NOT NULL,
    row_id TEXT NOT NULL,
    version INTEGER NOT NULL,
    payload TEXT NOT NULL,
    created_at TEXT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    last_error TEXT,
    dead INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS idx_cutover_outbox_pending ON cutover_outbox(target, dead, seq);
CREATE TABLE IF NOT EXISTS cutover_control (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    read_primary TEXT NOT NULL,
    epoch INTEGER NOT NULL,
    dual_write INTEGER NOT NULL,
    env_applied TEXT NOT NULL,
    file_word TEXT
);
CREATE TABLE IF NOT EXISTS cutover_tombstones (
    entity TEXT NOT NULL,
    row_id TEXT NOT NULL,
    version INTEGER NOT NULL,
    PRIMARY KEY (entity, row_id)
);
CREATE TABLE IF NOT EXISTS legacy_ids (
    table_name TEXT NOT NULL,
    legacy_id TEXT NOT NULL,
    id TEXT NOT NULL,
    PRIMARY KEY (table_name, legacy_id)
);
"""

TABLES = ("users", "study_books", "questions", "typing_logs", "learning_events")


def add_cutover_schema(conn: sqlite3.Connection) -> None:
    """Add the cutover's tables, columns and triggers to the application's tables, in the
    caller's transaction (revision 0001_baseline); idempotent. The legacy id upgrade rewrites
    parents and children in turn, and a legacy file may hold orphans: the caller's connection
    has foreign keys off."""
    legacy = is_legacy_database(conn)
    for table in TABLES:
        cols = {r[1] for r in conn.execute(f"PRAGMA table_info({table})")}
        if "row_version" not in cols:
            conn.execute(f"ALTER TABLE {table} ADD COLUMN row_version INTEGER NOT NULL DEFAULT 0")
    fresh_index = conn.execute(
        "SELECT 1 FROM sqlite_master WHERE name = 'questions_search'"
    ).fetchone() is None
    for statement in statements(ADDED):
        conn.execute(statement)
    if fresh_index:
        # index the questions that were there before the triggers existed
        conn.execute("INSERT INTO question_search_rowids(question_id) "
                     "SELECT id FROM questions ORDER BY rowid")
        conn.execute(
            "INSERT INTO questions_search(rowid, question, answer) "
            "SELECT m.rowid, q.question, q.answer FROM question_search_rowids m "
            "JOIN questions q ON q.id = m.question_id"
        )
    if legacy:
        upgrade_legacy_ids(conn)


def statements(script: str) -> list[str]:
    """Split a script into statements, keeping trigger bodies whole."""
    out, buf = [], ""
    for line in script.splitlines(keepends=True):
        buf += line
        if sqlite3.complete_statement(buf):
            if buf.strip():
                out.append(buf.strip())
            buf = ""
    return out


def is_legacy_database(conn: sqlite3.Connection) -> bool:
    """True when the file holds the application's tables but not yet the cutover's additions."""
    names = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    return "users" in names and "cutover_outbox" not in names


def use_wal(conn: sqlite3.Connection, timeout_s: float) -> None:
    """Put the file in WAL mode (it stays so: the switch happens once per file).

    Switching needs the file to itself. Two connections switching at once each hold the shared
    lock the other must see gone, so SQLite answers "locked" at once, without its busy wait:
    retry with jitter until `timeout_s`. An in-memory database has no WAL and needs none."""
    deadline = time.monotonic() + timeout_s
    while True:
        mode = conn.execute("PRAGMA journal_mode").fetchone()[0]
        if mode in ("wal", "memory"):
            return
        try:
            if conn.execute("PRAGMA journal_mode=WAL").fetchone()[0] == "wal":
                return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) and "busy" not in str(exc):
                raise
            if time.monotonic() > deadline:
                raise
        else:  # refused without an error: retrying alone would never end
            if time.monotonic() > deadline:
                raise sqlite3.OperationalError(f"journal mode stays {mode}, not WAL")
        time.sleep(random.uniform(0.001, 0.02))
