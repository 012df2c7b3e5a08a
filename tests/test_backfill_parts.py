"""The backfill's parts: rowid ranges that cover every source row once, and the check that a
resumed pass's rowids still name the rows it planned and reached (no database server needed)."""

from __future__ import annotations

import sqlite3
import uuid
from pathlib import Path

import pytest

from proxy.errors import BadSource
from proxy.migrate.backfill import (
    Part,
    _nothing_slid,
    open_source,
    parts_hold,
    plan_parts,
    row_mark,
)
from proxy.stores.sqlite_schema import LEGACY_SCHEMA


def source(tmp_path: Path, rowids: list[int]) -> sqlite3.Connection:
    conn = sqlite3.connect(tmp_path / "legacy.db", isolation_level=None)
    conn.executescript(LEGACY_SCHEMA)
    conn.executemany("INSERT INTO learning_events (rowid, id, user_id, app_id, action, "
                     "occurred_at) VALUES (?, ?, 'u', 'a', 'view', '2024-01-01T00:00:00Z')",
                     [(r, str(uuid.uuid4())) for r in rowids])
    return conn


def covered(part: Part, rowid: int) -> bool:
    return (part.after is None or rowid > part.after) and (
        part.until is None or rowid <= part.until)


@pytest.mark.parametrize("n", [1, 2, 3, 4])
def test_the_parts_cover_every_rowid_once_negative_and_extreme_ones_too(
        tmp_path: Path, n: int) -> None:
    rowids = [-(2**63), -5, 0, 1, 10, 2**63 - 1]
    parts = plan_parts(source(tmp_path, rowids), "learning_events", n)
    assert len(parts) == n
    for r in rowids:
        assert sum(covered(p, r) for p in parts) == 1, r


def test_an_empty_table_plans_parts_that_read_nothing_twice(tmp_path: Path) -> None:
    parts = plan_parts(source(tmp_path, []), "learning_events", 3)
    assert [p.first_row for p in parts] == [None, None, None]
    assert sum(covered(p, 1) for p in parts) == 1


def renumber(conn: sqlite3.Connection, table: str) -> None:
    """The same rows in the same order with rowids 1..N, as a dump and restore gives them."""
    conn.executescript(f"""
        BEGIN;
        CREATE TEMP TABLE kept AS SELECT * FROM {table} ORDER BY rowid;
        DELETE FROM {table};
        INSERT INTO {table} SELECT * FROM kept ORDER BY rowid;
        DROP TABLE kept;
        COMMIT;""")


def mark(conn: sqlite3.Connection, rowid: int) -> str:
    return row_mark(rowid, conn.execute("SELECT id FROM learning_events WHERE rowid = ?",
                                        (rowid,)).fetchone()[0])


def test_rows_sliding_into_a_finished_part_are_caught_by_the_next_part_s_first_row(
        tmp_path: Path) -> None:
    """Part 0 finished at its last row (44: 45-55 were gone when it was planned), part 1 has
    not committed a batch; renumbering moves part 1's rows down to 45-50, below part 1's start.
    Only part 1's first row tells: the checkpoints alone would say nothing moved."""
    conn = source(tmp_path, [r for r in range(1, 101) if not 45 <= r <= 55])
    parts = plan_parts(conn, "learning_events", 2)
    assert parts[0].until == 50 and parts[1].first_row == mark(conn, 56)
    checkpoints = [mark(conn, 44), None]
    assert parts_hold(conn, parts, checkpoints)
    renumber(conn, "learning_events")
    assert not parts_hold(conn, parts, checkpoints)
    assert parts_hold(conn, [Part(p.table, p.index, p.after, p.until, None) for p in parts],
                      checkpoints)  # (what a check without the first rows would have said)


def test_a_checkpoint_that_moved_is_caught(tmp_path: Path) -> None:
    conn = source(tmp_path, list(range(1, 101)))
    parts = plan_parts(conn, "learning_events", 2)
    checkpoints = [mark(conn, 30), mark(conn, 80)]
    conn.execute("DELETE FROM learning_events WHERE rowid BETWEEN 60 AND 70")
    assert parts_hold(conn, parts, checkpoints)  # a gap alone moves nothing
    renumber(conn, "learning_events")
    assert not parts_hold(conn, parts, checkpoints)  # part 1's checkpoint moved down


@pytest.mark.parametrize("ddl", [
    "CREATE TABLE learning_events (id TEXT PRIMARY KEY, user_id TEXT, occurred_at TEXT) "
    "WITHOUT ROWID",
    "CREATE TABLE learning_events (id TEXT PRIMARY KEY, user_id TEXT, occurred_at TEXT, "
    "rowid TEXT)",
])
def test_a_table_without_a_rowid_of_its_own_is_refused_in_one_line(
        tmp_path: Path, ddl: str) -> None:
    path = tmp_path / "legacy.db"
    conn = sqlite3.connect(path)
    conn.execute(ddl)
    conn.executescript(LEGACY_SCHEMA)  # the other tables (this one exists already)
    conn.close()
    with pytest.raises(BadSource, match="learning_events has no rowid of its own"):
        open_source(path)


def read_rows(conn: sqlite3.Connection, lo: int, hi: int) -> list[tuple[int, str]]:
    return conn.execute("SELECT rowid, id FROM learning_events WHERE rowid BETWEEN ? AND ? "
                        "ORDER BY rowid", (lo, hi)).fetchall()


@pytest.mark.parametrize(("deleted", "renumbered", "slid"), [
    ((), False, False),
    ((20,), False, False),  # the row read last deleted by the application: no sign of a move
    ((15, 18, 20), False, False),
    ((15, 18, 20), True, True),  # rows above slid into the gap the deletes left
    ((5,), True, True),  # a gap below the rows read last: every one of them moved
    ((30, 40), True, False),  # gaps above: the unread rows move, but stay unread
    (tuple(range(11, 21)), False, False),  # all read last deleted, nothing can tell...
])
def test_a_running_part_tells_rows_sliding_below_it_from_deletes(
        tmp_path: Path, deleted: tuple[int, ...], renumbered: bool, slid: bool) -> None:
    """A part has read rows 11-20 and reads on after 20. Deletes through the application leave
    gaps; a renumbering closes them, moving every row above the lowest gap down."""
    conn = source(tmp_path, list(range(1, 51)))
    read_last = read_rows(conn, 11, 20)
    conn.executemany("DELETE FROM learning_events WHERE rowid = ?", [(r,) for r in deleted])
    if renumbered:
        renumber(conn, "learning_events")
    holds = _nothing_slid(conn, "learning_events", read_last)
    # ...then it says moved: reading the table again costs time, never a row
    assert holds == (not slid and len(deleted) < len(read_last))
