"""The backfill's parts: rowid ranges that cover every source row once, and the check that a
resumed pass's rowids still name the rows it planned and reached (no database server needed)."""

from __future__ import annotations

import random
import sqlite3
import uuid
from pathlib import Path
from typing import Any

import pytest

from proxy.errors import BadSource
from proxy.migrate.source import (
    Part,
    open_source,
    parts_hold,
    plan_parts,
    read_batch,
    row_mark,
)
from proxy.models import BY_TABLE
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


EVENTS = BY_TABLE["learning_events"]


def history(seed: int, tmp_path: Path) -> tuple[set[str], set[str], list[str], int, int]:
    """One random history of a pass reading learning_events in 1-4 parts, batch by batch, with
    the application deleting rows (one, or a purge of the oldest) and inserting rows (new rows
    get max(rowid) + 1) and the table
    renumbered (the same rows in order, rowids 1..N) between any two reads; a part that finds
    its rowids moved has the table planned and read again, as the backfill does. Some ids are
    NULL (SQLite allows it in a TEXT PRIMARY KEY; the checks reject such a row): `action`
    names every row. Returns the rows there from start to end, the rows read, each read of a
    row (a list: twice means read twice), how many renumberings and re-plans."""
    rng = random.Random(seed)
    path = tmp_path / f"h{seed}.db"
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA synchronous = OFF")  # a throwaway file: no fsync per write
    conn.executescript(LEGACY_SCHEMA)
    low = rng.choice([1, 1, -40])
    insert = ("INSERT INTO learning_events (rowid, id, user_id, app_id, action, occurred_at) "
              "VALUES (?, ?, 'u', 'a', ?, '2024-01-01T00:00:00Z')")
    for k, r in enumerate(sorted(rng.sample(range(low, low + 120), rng.randint(0, 60)))):
        null = rng.random() < 0.1
        conn.execute(insert, (r, None if null else f"id{k}", f"{'null' if null else 'old'}{k}"))
    names = lambda: {r[0] for r in conn.execute("SELECT action FROM learning_events")}  # noqa: E731
    before = names()
    source = open_source(path)
    n, size = rng.randint(1, 4), rng.randint(1, 6)
    reads: list[str] = []
    renumbered = replans = fresh_rows = 0

    def plan() -> list[dict[str, Any]]:
        return [{"part": part, "last": [], "done": False}
                for part in plan_parts(source, "learning_events", n)]

    parts = plan()
    while not all(p["done"] for p in parts):
        roll = rng.random()
        if roll < 0.07:
            renumber(conn, "learning_events")
            renumbered += 1
        elif roll < 0.2 and (rowids := conn.execute("SELECT rowid FROM learning_events")
                             .fetchall()):
            conn.execute("DELETE FROM learning_events WHERE rowid = ?", rng.choice(rowids))
        elif roll < 0.23:  # a purge of the oldest rows
            conn.execute("DELETE FROM learning_events WHERE rowid IN (SELECT rowid FROM "
                         "learning_events ORDER BY rowid LIMIT ?)", (rng.randint(1, 12),))
        elif roll < 0.3:
            fresh_rows += 1
            conn.execute(insert, (None, f"new{fresh_rows}", f"new{fresh_rows}"))
        else:
            p = rng.choice([p for p in parts if not p["done"]])
            part, last = p["part"], p["last"]
            got = read_batch(source, EVENTS, size, part.until, (part.after, part.first_row),
                             last, part.end_row)
            if got is None:
                replans += 1
                parts = plan()
                continue
            rows, fresh = got
            p["done"], p["last"] = not rows, rows or last
            reads += [r[3] for r in fresh]
    source.close()
    return before & names(), set(reads), reads, renumbered, replans


@pytest.mark.parametrize("seeds", [range(0, 250), range(250, 500)])
def test_random_histories_of_deletes_inserts_and_renumbering_lose_no_row(
        tmp_path: Path, seeds: range) -> None:
    """Every row there from the start of a pass to its end is read. None is read twice unless
    the table was renumbered (rows read by one part may slide into a part still reading: found
    present, harmless) or planned again."""
    renumbered_total = replanned = 0
    for seed in seeds:
        kept, read, reads, renumbered, replans = history(seed, tmp_path)
        assert kept <= read, (seed, sorted(kept - read))
        twice = {r for r in reads if reads.count(r) > 1}
        assert not twice or renumbered or replans, (seed, twice)
        renumbered_total += renumbered
        replanned += bool(replans)
    assert renumbered_total > len(seeds) and replanned  # the histories did renumber




def test_a_row_with_a_null_id_vouches_for_no_place(tmp_path: Path) -> None:
    """Rows 5 and 7 have NULL ids and are alike in every column (an event logged twice). A
    batch read 1, 4, 5 (2 and 3 deleted); renumbering moves 6 to rowid 4 and 7 to 5. Row 7 now
    stands where row 5 was read, and nothing tells it from row 5: taken for it, the next read
    would go on after 5 and never read row 6."""
    conn = source(tmp_path, list(range(1, 11)))
    conn.execute("UPDATE learning_events SET id = NULL, action = 'twice' WHERE rowid IN (5, 7)")
    conn.execute("DELETE FROM learning_events WHERE rowid IN (2, 3)")
    six = conn.execute("SELECT id FROM learning_events WHERE rowid = 6").fetchone()[0]
    got = read_batch(conn, EVENTS, 3, None, (None, None), [])
    assert got is not None and [r[-1] for r in got[0]] == [1, 4, 5]
    renumber(conn, "learning_events")
    got = read_batch(conn, EVENTS, 100, None, (None, None), got[0])
    assert got is not None and six in {r[0] for r in got[1]}


def read_part(conn: sqlite3.Connection, part: Part, size: int,
              last: list[Any]) -> tuple[list[Any], list[Any]] | None:
    return read_batch(conn, EVENTS, size, part.until, (part.after, part.first_row), last,
                      part.end_row)


def test_a_purge_running_ahead_of_part_0_costs_no_re_read(tmp_path: Path) -> None:
    """A retention job deletes the oldest rows (up to 40) faster than part 0 reads them: every
    row of each batch is gone by the next read. Part 0's highest row (50) still stands where it
    was planned, so nothing slid under what part 0 read: it goes on, the table is not read
    again."""
    conn = source(tmp_path, list(range(1, 101)))
    part = plan_parts(conn, "learning_events", 2)[0]
    assert part.end_row == mark(conn, 50)
    got, read = read_part(conn, part, 5, []), []
    while got is not None and got[0]:
        read += [r[-1] for r in got[1]]
        top = got[0][-1][-1]
        conn.execute("DELETE FROM learning_events WHERE rowid <= ?", (min(top + 3, 40),))
        got = read_part(conn, part, 5, got[0])
    assert got is not None, "the table would have been read again"
    # each batch, then the 3 rows above it purged before they were read
    assert read == [r for r in range(1, 41) if (r - 1) % 8 < 5] + list(range(41, 51))


def test_after_a_purge_and_a_renumbering_the_table_is_read_again(tmp_path: Path) -> None:
    """The same purge, then a VACUUM closing the gap: part 0's highest row moved down with every
    row above the gap, some under what part 0 read. Only reading the table again finds them."""
    conn = source(tmp_path, list(range(1, 101)))
    part = plan_parts(conn, "learning_events", 2)[0]
    got = read_part(conn, part, 5, [])
    assert got is not None
    conn.execute("DELETE FROM learning_events WHERE rowid <= 8")
    renumber(conn, "learning_events")  # 9 -> 1 ... 50 -> 42: 9 and 10 now under 5
    assert read_part(conn, part, 5, got[0]) is None


def test_the_part_s_highest_row_once_read_vouches_for_nothing(tmp_path: Path) -> None:
    """The last part read past its highest row (5) into rows inserted since (6, 7). Those are
    deleted and the table renumbered: 5 keeps its rowid, but 8, not read, slides to 6, under
    what the part read. Going on after 7 would never read it."""
    conn = source(tmp_path, list(range(1, 6)))
    part = plan_parts(conn, "learning_events", 1)[0]
    assert part.end_row == mark(conn, 5)
    got = read_part(conn, part, 5, [])
    assert got is not None and len(got[0]) == 5
    conn.executemany("INSERT INTO learning_events (id, user_id, app_id, action, occurred_at) "
                     "VALUES (?, 'u', 'a', 'view', '2024-01-01T00:00:00Z')",
                     [(str(uuid.uuid4()),) for _ in range(3)])
    got = read_part(conn, part, 2, got[0])
    assert got is not None and [r[-1] for r in got[0]] == [6, 7]
    conn.execute("DELETE FROM learning_events WHERE rowid IN (6, 7)")
    renumber(conn, "learning_events")
    assert read_part(conn, part, 2, got[0]) is None


def test_a_resumed_pass_trusts_its_highest_row_when_its_checkpoint_was_purged(
        tmp_path: Path) -> None:
    """While the pass was stopped, a purge deleted part 0's checkpoint and first row: part 0's
    highest row still in place says nothing slid, so the pass resumes where it was. A
    renumbering since moves that row too: then the table is read again."""
    conn = source(tmp_path, list(range(1, 101)))
    parts = plan_parts(conn, "learning_events", 2)
    checkpoints = [mark(conn, 20), None]
    conn.execute("DELETE FROM learning_events WHERE rowid <= 25")
    assert parts_hold(conn, parts, checkpoints)
    assert not parts_hold(conn, [Part(p.table, p.index, p.after, p.until, p.first_row)
                                 for p in parts], checkpoints)  # (without the highest rows)
    renumber(conn, "learning_events")
    assert not parts_hold(conn, parts, checkpoints)


def test_a_highest_row_with_a_null_id_is_no_mark(tmp_path: Path) -> None:
    conn = source(tmp_path, list(range(1, 11)))
    conn.execute("UPDATE learning_events SET id = NULL WHERE rowid = 10")
    assert [p.end_row for p in plan_parts(conn, "learning_events", 2)] == [mark(conn, 5), None]


def test_an_end_mark_deleted_and_re_created_with_the_same_id_vouches_for_nothing(
        tmp_path: Path) -> None:
    """Rows 1-5, one part, its end mark row 5. The part reads 1 and 2; they are deleted and the
    table renumbered (3, 4, 5 -> 1, 2, 3); a new row takes rowid 4; row 5's id is deleted and
    created again through the repository, which gives it rowid 5, its planned one, and a
    higher row_version. Taken for the planned row, it would have the part read on after 2,
    never reading 3 and 4 (now at 1 and 2)."""
    conn = source(tmp_path, list(range(1, 6)))
    conn.execute("ALTER TABLE learning_events ADD COLUMN row_version INTEGER NOT NULL DEFAULT 0")
    part = plan_parts(conn, "learning_events", 1)[0]
    assert part.end_row == mark(conn, 5) + " v0"
    got = read_part(conn, part, 2, [])
    assert got is not None and [r[-1] for r in got[0]] == [1, 2]
    five = conn.execute("SELECT id FROM learning_events WHERE rowid = 5").fetchone()[0]
    conn.execute("DELETE FROM learning_events WHERE rowid IN (1, 2)")
    renumber(conn, "learning_events")
    new = ("INSERT INTO learning_events (id, user_id, app_id, action, occurred_at, row_version) "
           "VALUES (?, 'u', 'a', 'view', '2024-01-01T00:00:00Z', ?)")
    conn.execute(new, (str(uuid.uuid4()), 1))
    conn.execute("DELETE FROM learning_events WHERE id = ?", (five,))
    conn.execute(new, (five, 1))
    assert conn.execute("SELECT rowid FROM learning_events WHERE id = ?", (five,)).fetchone() \
        == (5,)
    assert read_part(conn, part, 2, got[0]) is None


def test_an_end_mark_with_a_version_on_a_file_without_versions_does_not_hold(
        tmp_path: Path) -> None:
    """A pass planned on a store's file (with row_version), resumed on a legacy file at the same
    path: the mark cannot be checked, so it does not hold (the table is read again)."""
    conn = source(tmp_path, list(range(1, 11)))
    part = Part("learning_events", 0, None, None, mark(conn, 1), mark(conn, 10) + " v0")
    assert not parts_hold(conn, [part], [mark(conn, 5) + "x"])
