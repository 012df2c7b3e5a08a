"""Reading the legacy SQLite file for the backfill: in rowid order (the order the file stores
it), in parts, each read checked against rowids renumbered under it.

The legacy tables have TEXT primary keys, so a read in id order looks every row up through the
id index, 1.7-2.7x the CPU of reading the table as stored (`bench/source_read.py`). But rowids
are not stable: a VACUUM may renumber the rows of a table without an INTEGER PRIMARY KEY, and a
dump and restore does. A part's checkpoint is therefore a row (rowid and id), and every read
first finds where the part's rows now stand (`docs/backfill-at-scale.md`).
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import sqlite3
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, TypeVar

from proxy.errors import BadSource
from proxy.models import ENTITIES, Entity

T = TypeVar("T")
TABLES = tuple(e.table for e in ENTITIES)


def open_source(path: Path) -> sqlite3.Connection:
    """The legacy database, read-only; `BadSource` when it is missing or not an app.db."""
    if not path.is_file():
        raise BadSource(f"--from {path}: no such file")
    try:
        conn = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True,
                               check_same_thread=False, isolation_level=None)
        names = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    except sqlite3.DatabaseError as exc:
        raise BadSource(f"--from {path}: not a SQLite database ({exc})") from None
    missing = [t for t in TABLES if t not in names]
    if missing:
        conn.close()
        raise BadSource(f"--from {path}: not a legacy app.db (no table {missing[0]})")
    for table in TABLES:  # the backfill pages by rowid: it must be the table's own
        try:
            conn.execute(f"SELECT rowid FROM {table} LIMIT 0")  # fails WITHOUT ROWID
            shadowed = conn.execute("SELECT count(*) FROM pragma_table_info(?) "
                                    "WHERE name = 'rowid'", (table,)).fetchone()[0]
        except sqlite3.OperationalError:
            shadowed = True
        if shadowed:
            conn.close()
            raise BadSource(f"--from {path}: table {table} has no rowid of its own "
                            "(WITHOUT ROWID, or a column named rowid)")
    return conn


def source_columns(entity: Entity) -> str:
    """What the source query reads (`... FROM table`, aliased t after it): the seed's columns,
    one parent-exists flag per reference, the rowid."""
    cols = [f"t.{c}" for c in entity.column_names]
    flags = [f"EXISTS (SELECT 1 FROM {c.references} p WHERE p.id = t.{c.name})"
             for c in entity.columns if c.references]
    return f"{', '.join(cols + flags)}, t.rowid FROM {entity.table}"


def row_mark(rowid: int, row_id: Any, version: int | None = None) -> str:
    """A source row as a checkpoint remembers it: its rowid and its id; a part's end mark also
    its row_version where the file has one (a row deleted and re-created with the same id
    through the repository outranks its tombstone: it is not the row that was planned)."""
    return f"{rowid} {row_id!r}" + ("" if version is None else f" v{version}")


_MARK = re.compile(r"(-?\d+) (.*?)(?: v(\d+))?")  # an id's repr ends in a quote (or is a number)


def mark_rowid(mark: str) -> int:
    """The rowid a `row_mark` was taken at."""
    return int(mark.split(" ", 1)[0])


class Reads(Protocol):
    """A connection to the legacy file that runs a query: sqlite3's, or ADBC's (the columnar
    lane's)."""

    def execute(self, sql: str, parameters: Any, /) -> Any: ...


def _mark_holds(source: Reads, table: str, mark: str | None) -> bool:
    """Whether the row `mark` names still has its rowid (a VACUUM may renumber the rowids of a
    table without an INTEGER PRIMARY KEY; it keeps their order)."""
    if mark is None:
        return True
    found = _MARK.fullmatch(mark)
    assert found is not None, mark
    rowid = int(found.group(1))
    columns = "id" if found.group(3) is None else "id, row_version"
    try:
        rows = _fetch(source, f"SELECT {columns} FROM {table} WHERE rowid = ?", (rowid,))
    except sqlite3.OperationalError:  # no row_version now: another file, whatever its path
        return False
    return bool(rows) and row_mark(rowid, *rows[0]) == mark


def _go_on_after(source: sqlite3.Connection, entity: Entity,
                 start: tuple[int | None, str | None], last: Sequence[Sequence[Any]],
                 end: str | None) -> tuple[bool, int | None]:
    """Where a part reads on: (False, None) when it cannot tell (then the table is read again
    from its start), else (True, the rowid to read after; None: from the first).

    After the highest row of `last` (its last batch, each row ending with its rowid) still where
    it was read: renumbering (a VACUUM may) keeps the rows' order, so every row not read yet is
    above it. The rows between it and the batch's end (deleted, moved, or new) are read, those of
    the batch left out (`_not_read`). A row whose id is NULL (SQLite allows it; the checks reject
    it) is in place only if it is the same in every column, and is trusted last: two such rows
    alike in every column, one renumbered onto the other's place, would pass for it.

    The first read (no `last`) starts after `start` (where the part was planned, or resumed
    from) if its row is still there.

    Else, after the last row read, if the part's highest row (`end`) stands where it was planned
    and is not read yet: no row below it slid lower, so none it has not read slid under what it
    read (a purge running ahead of the part deletes every row of its batch). Else the table is
    read again (rows may also have moved up, out of a part into one that has passed them; a part
    notices its own rows moving)."""
    table = entity.table
    for row in reversed(last):
        if row[0] is not None and _mark_holds(source, table, row_mark(row[-1], row[0])):
            return True, int(row[-1])
    width, columns = len(entity.column_names), ", ".join(entity.column_names)
    for row in reversed(last):
        if row[0] is None and tuple(row[:width]) in (tuple(r) for r in _fetch(
                source, f"SELECT {columns} FROM {table} WHERE rowid = ?", (row[-1],))):
            return True, int(row[-1])
    read_to, mark = (int(last[-1][-1]), None) if last else start
    if not last and _mark_holds(source, table, mark):
        return True, read_to
    if _end_stands(source, table, end, read_to):
        return True, read_to
    return False, None


def _end_stands(source: sqlite3.Connection, table: str, end: str | None,
                read_to: int | None) -> bool:
    """Whether the part's highest row when planned (`Part.end_row`) is above `read_to` (what
    the part has read) and still has its rowid: then no row below it has slid lower since."""
    return end is not None and (read_to is None or mark_rowid(end) > read_to) \
        and _mark_holds(source, table, end)


def _not_read(rows: list[Any], last: Sequence[Sequence[Any]], width: int) -> list[Any]:
    """`rows` but those of `last`: by id, or for a NULL id by rowid and every column (of two
    such rows alike in every column, one renumbered onto the other's place, one is reported)."""
    ids = {r[0] for r in last if r[0] is not None}
    seen = {(r[-1], tuple(r[:width])) for r in last if r[0] is None}
    return [r for r in rows if r[0] not in ids
            and (r[0] is not None or (r[-1], tuple(r[:width])) not in seen)]


def read_batch(source: sqlite3.Connection, entity: Entity, limit: int, until: int | None,
               start: tuple[int | None, str | None], last: Sequence[Sequence[Any]],
               end: str | None = None) -> tuple[list[Any], list[Any]] | None:
    """A part's next batch, read in one snapshot after `_go_on_after`: the rows read (the last
    one is the checkpoint) and of them those not read before; None when the rowids moved."""
    source.execute("BEGIN")
    try:
        ok, after = _go_on_after(source, entity, start, last, end)
        if not ok:
            return None
        rows = _fetch(source, *_rows_after(source_columns(entity), after, limit, until))
        return rows, _not_read(rows, last, len(entity.column_names))
    finally:
        source.execute("COMMIT")


def _fetch(conn: Reads, sql: str, params: Sequence[Any]) -> list[Any]:
    try:
        return list(conn.execute(sql, params).fetchall())
    except sqlite3.OperationalError as exc:  # sqlite3's own: ADBC raises its errors
        if "decode" not in str(exc).lower():
            raise
    assert isinstance(conn, sqlite3.Connection)
    # text that is not UTF-8: read it with the bad bytes kept as surrogates, so the check
    # rejects the row instead of the whole batch failing
    conn.text_factory = lambda b: b.decode("utf-8", "surrogateescape")
    try:
        return conn.execute(sql, params).fetchall()
    finally:
        conn.text_factory = str


async def on_source(fn: Callable[..., T], source: sqlite3.Connection, *args: Any) -> T:
    """`fn(source, *args)` in a thread. Cancelled (Ctrl-C), it still waits for the thread
    to end: the caller closes `source` next, and closing a SQLite connection under a read
    crashed the whole process (a segfault, not an exception)."""
    task = asyncio.ensure_future(asyncio.to_thread(fn, source, *args))
    try:
        return await asyncio.shield(task)
    except asyncio.CancelledError:
        while not task.done():  # a second Ctrl-C cancels this wait too
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.wait([task])
        raise


@dataclass(frozen=True, slots=True)
class Part:
    """A slice of one table's source rows that one loader copies, with its own checkpoint.

    Rows are read in rowid order, the order the file stores them in: reading a table in id
    order looks every row up through the id index, 1.7-2.7x the CPU (questions 3.1 vs 1.4 s per
    million rows on the 3M file, `bench/source_read.py`)."""

    table: str
    index: int
    after: int | None  # the rowid the part starts after; None: from the first (rowids may be < 0)
    until: int | None  # its last rowid; None: to the end
    first_row: str | None  # `row_mark` of its first row when planned; None: it had none
    # `row_mark` of its highest row when planned, with its row_version where the table has one
    # (None: no row, or its id is NULL). While that row keeps its rowid, no row below it has a
    # lower rowid than it had: a renumbering keeps the order and new rows go above the highest,
    # so the rows between a row and it only thin out.
    end_row: str | None = None


def rowid_bounds(conn: sqlite3.Connection, table: str) -> tuple[int, int] | None:
    """The table's lowest and highest rowid (None: no rows), in one snapshot. Two subqueries:
    SQLite finds a lone min() or max() at one end of the table, but `min(rowid), max(rowid)`
    in one SELECT scans a whole index (96 ms a table on the 3M file, against 0.01 ms:
    `bench/source_read.py`)."""
    low, top = conn.execute(f"SELECT (SELECT min(rowid) FROM {table}), "
                            f"(SELECT max(rowid) FROM {table})").fetchone()
    return None if low is None else (int(low), int(top))


def plan_parts(source: sqlite3.Connection, table: str, n: int) -> list[Part]:
    """`n` rowid ranges of equal width over the table as it is now, each with its first row."""
    low, top = rowid_bounds(source, table) or (1, 0)
    versions = ", row_version" if source.execute(
        "SELECT count(*) FROM pragma_table_info(?) WHERE name = 'row_version'", (table,)
    ).fetchone()[0] else ""
    cuts: list[int | None] = [None, *(low - 1 + (top - low + 1) * i // n for i in range(1, n))]
    parts = []
    for i, after in enumerate(cuts):
        until = cuts[i + 1] if i + 1 < n else None
        first = _fetch(source, *_rows_after(f"rowid, id FROM {table}", after, 1, until))
        end = _fetch(source, *_rows_after(f"rowid, id{versions} FROM {table}", after, 1, until,
                                          "DESC"))
        parts.append(Part(table, i, after, until, row_mark(*first[0]) if first else None,
                          row_mark(*end[0]) if end and end[0][1] is not None else None))
    return parts


def _rows_after(select: str, after: int | None, limit: int, until: int | None,
                order: str = "") -> tuple[str, tuple[int, ...]]:
    """`SELECT {select}` of the `limit` rows after rowid `after` (None: from the first) up to
    rowid `until` (None: to the end), in rowid order (`order` "DESC": the last ones first), and
    its parameters."""
    where = "true" if after is None else "t.rowid > ?"
    bound = "" if until is None else f" AND t.rowid <= {until:d}"
    return (f"SELECT {select} t WHERE {where}{bound} ORDER BY t.rowid {order} LIMIT ?",
            (limit,) if after is None else (after, limit))


def parts_hold(source: sqlite3.Connection, parts: Sequence[Part],
               checkpoints: Sequence[str | None]) -> bool:
    """Whether a resumed pass may trust the rowids its parts planned and reached. A VACUUM
    that renumbers rowids closes the gaps below a row and moves every row above the lowest gap
    down, keeping their order; so if each part's first row and last row read still have their
    rowids, no row crossed a part's bounds or its checkpoint. So too if its highest row, not
    read yet, has (`Part.end_row`): nothing below it moved. (A running pass checks as it reads:
    `read_batch`.)"""
    source.execute("BEGIN")
    try:
        return all(
            all(_mark_holds(source, p.table, mark) for mark in (p.first_row, last))
            or _end_stands(source, p.table, p.end_row,
                           p.after if last is None else mark_rowid(last))
            for p, last in zip(parts, checkpoints, strict=True))
    finally:
        source.execute("COMMIT")
