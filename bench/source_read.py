"""Reading a legacy table in id order vs rowid order: the backfill's source side, CPU per
million rows, with the parent-exists flags the backfill reads beside each row; and finding a
table's rowid bounds (planning its parts) by one `min(rowid), max(rowid)` vs `rowid_bounds`.

    .venv/bin/python bench/source_read.py [--size 3M] [--data DIR] [--rows N]

The file is `bench/scale.py`'s (generated on first use under --data). Id order walks the id
index and looks each row up in the table; rowid order reads the table as it is stored.
"""

from __future__ import annotations

import argparse
import sqlite3
import sys
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from bench.scale import legacy_file  # noqa: E402
from proxy.migrate.source import rowid_bounds, source_columns  # noqa: E402
from proxy.models import BY_TABLE  # noqa: E402


def read(conn: sqlite3.Connection, sql: str, limit: int) -> tuple[int, float, float]:
    """Rows read, wall and CPU seconds, fetching in batches of 2,000 as the backfill does."""
    wall, cpu, n = time.perf_counter(), time.process_time(), 0
    cursor = conn.execute(sql, (limit,))
    while rows := cursor.fetchmany(2000):
        n += len(rows)
    return n, time.perf_counter() - wall, time.process_time() - cpu


def open_legacy(doc: str) -> tuple[Path, sqlite3.Connection, int]:
    """The scale bench's legacy file named on the command line (generated on first use),
    read-only, and how many rows to read per table."""
    parser = argparse.ArgumentParser(description=doc.split("\n\n")[0])
    parser.add_argument("--size", default="3M", help="the scale bench's file (300k, 3M, 10M)")
    parser.add_argument("--data", type=Path, default=Path("/tmp/cutover-scale"))
    parser.add_argument("--corpus", default="sentences")
    parser.add_argument("--rows", type=int, default=1_000_000, help="rows read per table")
    args = parser.parse_args()
    args.data.mkdir(parents=True, exist_ok=True)
    path = legacy_file(args.data, args.size, args.corpus)
    return path, sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True), args.rows


def main() -> int:
    path, conn, rows = open_legacy(__doc__ or "")
    print(f"{path.name}: CPU seconds per million rows (wall in brackets)")
    print(f"{'table':<16} {'id order':>16} {'rowid order':>16} {'ratio':>6}")
    for table in ("questions", "typing_logs", "learning_events"):
        entity = BY_TABLE[table]
        figures = []
        for order in ("t.id", "t.rowid"):
            sql = f"SELECT {source_columns(entity)} t ORDER BY {order} LIMIT ?"
            n, wall, cpu = read(conn, sql, rows)
            figures.append((cpu * 1e6 / n, wall * 1e6 / n))
        (id_cpu, id_wall), (row_cpu, row_wall) = figures
        print(f"{table:<16} {id_cpu:7.2f} ({id_wall:5.2f}) {row_cpu:9.2f} ({row_wall:5.2f}) "
              f"{id_cpu / row_cpu:6.2f}")
    print("\nrowid bounds, ms (best of 3): one SELECT min(rowid), max(rowid) vs rowid_bounds")
    for table in ("questions", "typing_logs", "learning_events"):
        one, two = (min(_ms(fn) for _ in range(3)) for fn in (
            lambda t=table: conn.execute(f"SELECT min(rowid), max(rowid) FROM {t}").fetchone(),
            lambda t=table: rowid_bounds(conn, t)))
        print(f"{table:<16} {one:9.1f} {two:9.2f}")
    return 0


def _ms(fn: Callable[[], object]) -> float:
    started = time.perf_counter()
    fn()
    return (time.perf_counter() - started) * 1000


if __name__ == "__main__":
    raise SystemExit(main())
