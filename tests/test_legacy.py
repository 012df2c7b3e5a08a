"""Reading legacy values, and upgrading a legacy app.db's ids in place."""

from __future__ import annotations

import re
import sqlite3
import uuid
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

import pytest

from proxy.legacy import (
    LEGACY_NAMESPACE,
    Change,
    Rejected,
    column_check,
    legacy_uuid,
    parse_timestamp,
    upgrade_legacy_ids,
)
from proxy.models import LEARNING_EVENTS, QUESTIONS, TYPING_LOGS, USERS
from proxy.stores.sqlite import SQLiteStore
from proxy.stores.sqlite_schema import LEGACY_TABLES

U = "2b1f0c8e-6f4e-4c31-9a0e-2f1d3c4b5a69"


@pytest.mark.parametrize(("text", "expected"), [
    ("2024-03-05T12:34:56Z", datetime(2024, 3, 5, 12, 34, 56, tzinfo=UTC)),
    ("2024-03-05T21:34:56+09:00", datetime(2024, 3, 5, 12, 34, 56, tzinfo=UTC)),
    ("2024-03-05T07:34:56-0500", datetime(2024, 3, 5, 12, 34, 56, tzinfo=UTC)),
    ("2024-03-05 12:34:56", datetime(2024, 3, 5, 12, 34, 56, tzinfo=UTC)),  # no offset: UTC
    ("2024-03-05T12:34:56.5Z", datetime(2024, 3, 5, 12, 34, 56, 500000, tzinfo=UTC)),
    ("2024-03-05 12:34:56.123456+00:00", datetime(2024, 3, 5, 12, 34, 56, 123456, tzinfo=UTC)),
    ("1709642096", datetime(2024, 3, 5, 12, 34, 56, tzinfo=UTC)),  # epoch seconds
    ("1709642096789", datetime(2024, 3, 5, 12, 34, 56, 789000, tzinfo=UTC)),  # epoch ms
    ("100000000000", datetime(5138, 11, 16, 9, 46, 40, tzinfo=UTC)),  # the threshold: seconds
    (1709642096, datetime(2024, 3, 5, 12, 34, 56, tzinfo=UTC)),
])
def test_timestamps_in_every_legacy_form_convert(text: str | int, expected: datetime) -> None:
    assert parse_timestamp(text) == expected


@pytest.mark.parametrize("text", ["2023-02-30T10:00:00Z", "", "   ", "yesterday",
                                  "2024-13-01", "12:00", "-5", "1.5e9", "99999999999999999999"])
def test_impossible_empty_or_garbage_timestamps_are_refused(text: str) -> None:
    with pytest.raises(ValueError):
        parse_timestamp(text)


def test_legacy_ids_map_to_uuid5_and_uuids_stay_themselves() -> None:
    assert legacy_uuid(U) == uuid.UUID(U)
    assert legacy_uuid(U.upper()) == uuid.UUID(U)
    assert legacy_uuid("user-1") == uuid.uuid5(LEGACY_NAMESPACE, "user-1")
    assert legacy_uuid("user-1") == legacy_uuid("user-1")


def _check(entity, name, raw):  # type: ignore[no-untyped-def]
    changes: list[Change] = []
    value = column_check(entity.column(name))(raw, changes)
    return value, changes


@pytest.mark.parametrize(("entity", "column", "raw", "reason"), [
    (TYPING_LOGS, "wpm", "fast", "not an integer"),
    (TYPING_LOGS, "wpm", 61.5, "not an integer"),
    (TYPING_LOGS, "wpm", -3, "out of range"),
    (TYPING_LOGS, "accuracy", 101.5, "out of range"),
    (TYPING_LOGS, "accuracy", "high", "not a number"),
    (TYPING_LOGS, "accuracy", float("inf"), "not a finite number"),
    (TYPING_LOGS, "accuracy", None, "NOT NULL"),
    (USERS, "name", "x" * 256, "longer than 255"),
    (USERS, "name", "a\x00b", "NUL"),
    (USERS, "name", b"\x00\x01", "BLOB"),
    (QUESTIONS, "created_at", "2023-02-30T00:00:00Z", "not a timestamp"),
    (QUESTIONS, "created_at", "", "not a timestamp"),
    (LEARNING_EVENTS, "score", 1e9, "exceeds NUMERIC(10,2)"),
])
def test_values_a_column_cannot_hold_are_rejected(entity, column, raw, reason) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(Rejected, match=re.escape(reason)):
        _check(entity, column, raw)


def test_a_real_that_does_not_fit_two_decimals_is_rounded_half_even_and_reported() -> None:
    value, changes = _check(TYPING_LOGS, "accuracy", 97.125)
    assert value == Decimal("97.12")
    assert changes == [Change("accuracy", 97.125, "97.12", "rounded to 2 decimals")]
    value, changes = _check(TYPING_LOGS, "accuracy", 97.5)
    assert (value, changes) == (Decimal("97.50"), [])  # fits exactly: nothing to report


def test_sub_microsecond_digits_are_reported_when_dropped() -> None:
    value, changes = _check(QUESTIONS, "created_at", "2024-03-05T12:34:56.1234567Z")
    assert value == datetime(2024, 3, 5, 12, 34, 56, 123456, tzinfo=UTC)
    assert [c.reason for c in changes] == ["truncated to microseconds"]
    assert _check(QUESTIONS, "created_at", "2024-03-05T12:34:56.1234560Z")[1] == []


# -- upgrading ids in place -------------------------------------------------------------------


def _legacy_db(path: Path) -> None:
    conn = sqlite3.connect(path)
    conn.executescript(LEGACY_TABLES + "CREATE VIRTUAL TABLE questions_fts USING fts5("
                       "question_id UNINDEXED, question, answer);")
    ts = "2024-01-01T00:00:00Z"
    conn.executemany("INSERT INTO users VALUES (?, ?, ?, ?, ?)", [
        ("user-1", "Aiko", "aiko@example.com", ts, ts),
        (U.upper(), "Ben", "ben@example.com", ts, ts),
    ])
    conn.executemany("INSERT INTO study_books VALUES (?, ?, ?, ?, ?, ?)", [
        ("book-1", "user-1", "Python", None, ts, ts),
        ("book-2", U.upper(), "Go", None, ts, ts),
        ("book-orphan", "user-gone", "Lost", None, ts, ts),
    ])
    conn.execute("INSERT INTO questions VALUES ('q-1', 'book-1', 'en', 'python', 'easy', "
                 "'What does json.dumps do?', 'Serialize obj to a JSON string.', ?, ?)", (ts, ts))
    conn.execute("INSERT INTO questions_fts SELECT id, question, answer FROM questions")
    conn.execute("INSERT INTO typing_logs VALUES ('log-1', 'user-1', 'q-1', 60, 97.5, 1000, ?)",
                 (ts,))
    conn.execute("INSERT INTO learning_events VALUES ('ev-1', 'user-1', 'app', 'view', 'q-1', "
                 "1.5, 10, ?)", (ts,))
    conn.commit()
    conn.close()


async def test_schema_init_rewrites_legacy_ids_and_every_reference(tmp_path: Path) -> None:
    path = tmp_path / "app.db"
    _legacy_db(path)
    store = SQLiteStore(path)
    await store.init_schema()
    try:
        user = str(legacy_uuid("user-1"))
        conn = sqlite3.connect(path)
        assert conn.execute("SELECT id FROM users ORDER BY name").fetchall() == [(user,), (U,)]
        assert conn.execute("SELECT user_id FROM study_books WHERE title = 'Python'").fetchone() \
            == (user,)
        # an orphan's reference follows the same mapping: it stays an orphan, with a UUID
        assert conn.execute("SELECT user_id FROM study_books WHERE title = 'Lost'").fetchone() \
            == (str(legacy_uuid("user-gone")),)
        q = str(legacy_uuid("q-1"))
        assert conn.execute("SELECT user_id, question_id FROM typing_logs").fetchone() \
            == (user, q)
        # learning_events.user_id is free text in the seed: left as it was
        assert conn.execute("SELECT id, user_id, object_id FROM learning_events").fetchone() \
            == (str(legacy_uuid("ev-1")), "user-1", "q-1")
        assert conn.execute("SELECT question_id FROM questions_fts").fetchone() == (q,)
        legacy = set(conn.execute("SELECT table_name, legacy_id, id FROM legacy_ids"))
        assert ("users", "user-1", user) in legacy
        assert ("users", U.upper(), U) in legacy
        assert ("questions", "q-1", q) in legacy
        assert ("typing_logs", "log-1", str(legacy_uuid("log-1"))) in legacy
        conn.close()
        # the store reads the rows, and its search index follows the new question id
        book = await store.get_study_book(legacy_uuid("book-1"))
        assert book.user_id == legacy_uuid("user-1")
        hits = await store.search_questions("json dumps", user_id=legacy_uuid("user-1"))
        assert [h.question_id for h in hits] == [legacy_uuid("q-1")]
    finally:
        await store.close()


def test_the_upgrade_is_idempotent_and_atomic(tmp_path: Path) -> None:
    path = tmp_path / "app.db"
    _legacy_db(path)
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("CREATE TABLE legacy_ids (table_name TEXT NOT NULL, legacy_id TEXT NOT NULL, "
                 "id TEXT NOT NULL, PRIMARY KEY (table_name, legacy_id))")
    assert upgrade_legacy_ids(conn) == 8  # 2 users, 3 books, a question, a log, an event
    assert upgrade_legacy_ids(conn) == 0
    # two legacy ids that map to one UUID cannot both keep their rows: nothing changes
    conn.execute("INSERT INTO users VALUES ('user-9', 'C', 'c@example.com', 'x', 'x')")
    conn.execute("INSERT INTO users VALUES (?, 'D', 'd@example.com', 'x', 'x')",
                 (str(legacy_uuid("user-9")).upper(),))
    with pytest.raises(ValueError, match="maps to"):
        upgrade_legacy_ids(conn)
    assert conn.execute("SELECT count(*) FROM users WHERE id = 'user-9'").fetchone() == (1,)
    conn.close()
