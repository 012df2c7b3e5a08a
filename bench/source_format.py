"""Whether the backfill's own process would save CPU by letting SQLite test and format the
common rows: CPU per row on the source side, as the backfill does it now against a prototype.

    .venv/bin/python bench/source_format.py [--size 3M] [--data DIR] [--rows N]

- **now**: read the source rows (rowid order, the parent-exists flags beside each row) and run
  `RowChecker.check` over them, as each part does per batch. Not counted: asyncpg encoding the
  checked tuples into binary COPY, which the backfill pays on top.
- **prototype**: SQLite's own SQL says whether a row is in the plain form the quick path accepts
  (canonical ids, ASCII text within its length, integers in range, `YYYY-MM-DDTHH:MM:SS.ffffffZ`
  timestamps that are real dates, REALs with nothing to round) and writes that row as a line of
  PostgreSQL's COPY text format; Python joins the lines into the bytes a COPY would send. A row
  not in that form is read again by rowid with its columns, for the checks.

A measurement, not a loader: the prototype's test is stricter than the quick path (other ISO
forms and epochs go to the checks), and nothing here proves it never passes a row the checks
would reject. It answers whether that work is worth doing (`docs/backfill-at-scale.md`).
"""

from __future__ import annotations

import sqlite3
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from bench.source_read import open_legacy  # noqa: E402
from proxy.migrate.checks import RowChecker  # noqa: E402
from proxy.migrate.source import source_columns  # noqa: E402
from proxy.models import BY_TABLE, Column, Entity, Kind  # noqa: E402

BATCH = 2000
HEX = "[0-9a-f]"
UUID_GLOB = "-".join(HEX * n for n in (8, 4, 4, 4, 12))
D = "[0-9]"
TS_GLOB = f"{D * 4}-{D * 2}-{D * 2}T{D * 2}:{D * 2}:{D * 2}.{D * 6}Z"


def _plain(c: Column) -> str:
    """SQLite's test that column `c` of row t holds a value in its plain, clean form."""
    v = f"t.{c.name}"
    if c.kind is Kind.UUID:
        test = f"typeof({v}) = 'text' AND {v} GLOB '{UUID_GLOB}'"
    elif c.kind is Kind.TEXT:
        test = f"typeof({v}) = 'text' AND {v} NOT GLOB '*[^\x01-\x7f]*'"
        if c.max_length is not None:
            test += f" AND length({v}) <= {c.max_length}"
    elif c.kind is Kind.INT:
        lo = c.minimum if c.minimum is not None else -(2**31)
        hi = c.maximum if c.maximum is not None else 2**31 - 1
        test = f"typeof({v}) = 'integer' AND {v} BETWEEN {lo} AND {hi}"
    elif c.kind is Kind.TIMESTAMP:
        test = (f"typeof({v}) = 'text' AND {v} GLOB '{TS_GLOB}' "
                f"AND date(substr({v}, 1, 10)) = substr({v}, 1, 10) "
                f"AND substr({v}, 12, 2) < '24'")
    else:
        scale = c.scale or 0
        limit = 10 ** ((c.precision or 38) - scale)
        lo = c.minimum if c.minimum is not None else -limit
        hi = c.maximum if c.maximum is not None else limit
        test = (f"typeof({v}) = 'real' AND {v} > {lo - 1} AND {v} < {hi + 1} "
                f"AND {v} BETWEEN {lo} AND {hi} AND round({v}, {scale}) = {v}")
    return f"({v} IS NULL OR ({test}))" if c.nullable else f"({test})"


def _text(c: Column) -> str:
    """Column `c` of row t as a field of COPY's text format."""
    v = f"t.{c.name}"
    if c.kind is Kind.TEXT:
        v = (f"replace(replace(replace(replace({v}, '\\', '\\\\'), char(9), '\\t'), "
             f"char(10), '\\n'), char(13), '\\r')")
    elif c.kind is Kind.DECIMAL:  # printf makes NULL 0.00
        v = f"CASE WHEN {v} IS NOT NULL THEN printf('%.{c.scale or 0}f', {v}) END"
    return f"coalesce({v}, '\\N')" if c.nullable else v


def prototype_sql(e: Entity) -> str:
    """Each row's COPY line when it is plain, else NULL (its columns are then read by rowid for
    the checks, as few as there are such rows), and its rowid."""
    plain = " AND ".join(
        [_plain(c) for c in e.columns]
        + [f"(t.{c.name} IS NULL OR EXISTS (SELECT 1 FROM {c.references} p "
           f"WHERE p.id = t.{c.name}))" for c in e.columns if c.references])
    line = " || char(9) || ".join(_text(c) for c in e.columns) + " || char(10)"
    return f"SELECT CASE WHEN {plain} THEN {line} END, t.rowid FROM {e.table} t " \
        "ORDER BY t.rowid LIMIT ?"


def now(conn: sqlite3.Connection, e: Entity, limit: int) -> tuple[int, float, int]:
    checker = RowChecker(e, {})
    cursor = conn.execute(f"SELECT {source_columns(e)} t ORDER BY t.rowid LIMIT ?", (limit,))
    cpu, n, good = time.process_time(), 0, 0
    while rows := cursor.fetchmany(BATCH):
        n += len(rows)
        good += len(checker.check(rows).rows)
    return n, time.process_time() - cpu, good


def prototype(conn: sqlite3.Connection, e: Entity, limit: int) -> tuple[int, float, int]:
    cursor = conn.execute(prototype_sql(e), (limit,))
    cpu, n, good = time.process_time(), 0, 0
    while rows := cursor.fetchmany(BATCH):
        n += len(rows)
        lines = [r[0] for r in rows if r[0] is not None]
        good += len(lines)
        "".join(lines).encode()
        if len(lines) < len(rows):  # the rest, with their columns, for the checks
            others = [r[1] for r in rows if r[0] is None]
            conn.execute(f"SELECT {source_columns(e)} t WHERE t.rowid IN "
                         f"({','.join('?' * len(others))})", others).fetchall()
    return n, time.process_time() - cpu, good


def fetch_only(conn: sqlite3.Connection, sql: str, limit: int) -> float:
    """CPU seconds to fetch `sql`'s rows in batches, doing nothing with them."""
    cursor = conn.execute(sql, (limit,))
    cpu = time.process_time()
    while cursor.fetchmany(BATCH):
        pass
    return time.process_time() - cpu


def main() -> int:
    path, conn, limit = open_legacy(__doc__ or "")
    print(f"{path.name}: CPU microseconds a row on the source side; of the prototype, SQLite's "
          "test alone and its formatting alone")
    print(f"{'table':<16} {'now':>7} {'prototype':>10} {'ratio':>6} {'test':>7} {'format':>7}")
    for table in ("questions", "typing_logs", "learning_events"):
        e = BY_TABLE[table]
        n, cpu_now, good = now(conn, e, limit)
        m, cpu_proto, plain = prototype(conn, e, limit)
        assert n == m
        order = f" FROM {table} t ORDER BY t.rowid LIMIT ?"
        test = fetch_only(conn, "SELECT " + " AND ".join(_plain(c) for c in e.columns) + order,
                          limit)
        fmt = fetch_only(conn, "SELECT " + " || char(9) || ".join(_text(c) for c in e.columns)
                         + order, limit)
        print(f"{table:<16} {cpu_now * 1e6 / n:7.2f} {cpu_proto * 1e6 / m:10.2f} "
              f"{cpu_proto / cpu_now:6.2f} {test * 1e6 / n:7.2f} {fmt * 1e6 / n:7.2f}"
              f"   ({good} rows pass the checks, {plain} are plain)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
