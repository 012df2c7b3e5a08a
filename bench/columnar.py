"""The backfill's two lanes for a batch, side by side: CPU a row in the backfill's own process and
in the PostgreSQL backend taking the COPY.

    .venv/bin/python bench/columnar.py [--size 3M] [--rows 300000] [--data DIR] [--dsn URL]

- rows: `source.read_batch`, `RowChecker.check`, asyncpg's `copy_records_to_table` (what every
  batch did before the columnar lane);
- columnar: `ColumnarSource.read` (ADBC reads Arrow columns, Arrow's compute tests the plain
  form, pgpq writes binary COPY) and one `copy_to_table`. A batch it gives back goes the rows
  way (counted: on the generated corpus none should).

Each lane loads the first `--rows` rows of each table of the scale bench's file (generated on
first use, as `bench/scale.py` does) in batches of the backfill's size into an unlogged copy of
the table without indexes or triggers, so the server side is the COPY alone. Client CPU is this
process's (all threads); server CPU the backend's, from /proc.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sqlite3
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import asyncpg

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench._pg import scratch_database
from bench.scale import legacy_file
from proxy.migrate.backfill import DEFAULT_BATCH_SIZE, _once
from proxy.migrate.checks import RowChecker
from proxy.migrate.columnar import ColumnarSource
from proxy.migrate.source import read_batch
from proxy.models import BY_TABLE, Entity
from proxy.stores import migrations

TICK = os.sysconf("SC_CLK_TCK")



def cpu_of(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK


async def rows_batch(conn: asyncpg.Connection, source: sqlite3.Connection, checker: RowChecker,
                     last: Sequence[Sequence[Any]]) -> list[Any]:
    """One batch the rows way (the rows read; none at the end)."""
    got = read_batch(source, checker.entity, DEFAULT_BATCH_SIZE, None, (None, None), last)
    assert got is not None
    rows, fresh = got
    if rows:
        await conn.copy_records_to_table("scratch", records=checker.check(fresh).rows,
                                         columns=list(checker.entity.column_names))
    return list(rows)


async def rows_lane(conn: asyncpg.Connection, e: Entity, limit: int, path: Path,
                    columnar: bool = False) -> tuple[int, int]:
    """Load `limit` rows of `e`'s table; how many, and how many batches went the rows way
    although the columnar lane was on."""
    source = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True,
                             isolation_level=None, check_same_thread=False)
    lane = ColumnarSource(path, e, {}, DEFAULT_BATCH_SIZE) if columnar else None
    checker, n, given_back = RowChecker(e, {}), 0, 0
    last: Sequence[Sequence[Any]] = ()
    try:
        while n < limit:
            got = None if lane is None else lane.read(DEFAULT_BATCH_SIZE, None, (None, None),
                                                      last)
            if got is not None:
                await conn.copy_to_table("scratch", source=_once(got.copy_data),
                                         columns=list(e.column_names), format="binary")
                last = got.rows
            else:
                last = await rows_batch(conn, source, checker, last)
                if not last:
                    break
                given_back += lane is not None
            n += len(last)
    finally:
        if lane is not None:
            lane.close()
        source.close()
    return n, given_back


async def columnar_lane(conn: asyncpg.Connection, e: Entity, limit: int, path: Path
                        ) -> tuple[int, int]:
    return await rows_lane(conn, e, limit, path, columnar=True)


async def measure(dsn: str, path: Path, table: str, lane: Any, limit: int
                  ) -> tuple[float, float, int]:
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute(f"DROP TABLE IF EXISTS scratch; "
                           f"CREATE UNLOGGED TABLE scratch (LIKE {table} INCLUDING DEFAULTS)")
        backend = await conn.fetchval("SELECT pg_backend_pid()")
        client, server = time.process_time(), cpu_of(backend)
        n, given_back = await lane(conn, BY_TABLE[table], limit, path)
        client, server = time.process_time() - client, cpu_of(backend) - server
    finally:
        await conn.close()
    return client * 1e6 / n, server * 1e6 / n, given_back


async def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--size", default="3M", help="the scale bench's file (300k, 3M, 10M)")
    parser.add_argument("--data", type=Path, default=Path("/tmp/cutover-scale"))
    parser.add_argument("--corpus", default="sentences")
    parser.add_argument("--rows", type=int, default=300_000, help="rows loaded per table")
    parser.add_argument("--dsn", help="a PostgreSQL server (default: an embedded one)")
    args = parser.parse_args()
    args.data.mkdir(parents=True, exist_ok=True)
    path = legacy_file(args.data, args.size, args.corpus)
    async with scratch_database(args.dsn) as dsn:
        await migrations.upgrade_postgres(dsn)
        print(f"{path.name}, {args.rows} rows a table: CPU microseconds a row, the backfill's "
              "process / the COPY's backend")
        print(f"{'table':<16} {'rows lane':>15} {'columnar lane':>15} {'client ratio':>13}")
        for table in ("questions", "typing_logs", "learning_events"):
            rc, rs, _ = await measure(dsn, path, table, rows_lane, args.rows)
            cc, cs, back = await measure(dsn, path, table, columnar_lane, args.rows)
            print(f"{table:<16} {rc:7.2f} / {rs:5.2f} {cc:7.2f} / {cs:5.2f} {rc / cc:12.2f}x"
                  + (f"   ({back} batches given back)" if back else ""))
    return 0


if __name__ == "__main__":
    raise SystemExit(asyncio.run(main()))
