"""What running the schema through Alembic costs a fresh store (the test suite creates one in
many fixtures): `SQLiteStore.init_schema()` and `PostgresStore.init_schema()` (Alembic: stamp
check, revisions 0000 and 0001, `alembic_version`) beside the same DDL run directly, as
`init_schema` did before revisions, on a fresh file or database each time, in turns.

    .venv/bin/python bench/schema_init.py [--rounds 15] [--dsn postgresql://...]

Prints the median per store and configuration, and the added milliseconds.
"""

from __future__ import annotations

import argparse
import asyncio
import sqlite3
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import asyncpg

from bench._pg import database, scratch_database
from proxy.stores import postgres_schema, sqlite_schema
from proxy.stores.postgres import PostgresStore
from proxy.stores.sqlite import SQLiteStore


def direct_sqlite(path: Path) -> None:
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        conn.execute("BEGIN IMMEDIATE")
        for statement in sqlite_schema.statements(sqlite_schema.LEGACY_TABLES):
            conn.execute(statement)
        sqlite_schema.add_cutover_schema(conn)
        conn.execute("COMMIT")
    finally:
        conn.close()


async def direct_postgres(dsn: str) -> None:
    conn = await asyncpg.connect(dsn)
    try:
        async with conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock(7715001)")
            await conn.execute(postgres_schema.DDL + postgres_schema.SEARCH_INDEXES)
    finally:
        await conn.close()


async def main(rounds: int, server: str | None) -> None:
    times: dict[str, list[float]] = {k: [] for k in ("sqlite direct", "sqlite alembic",
                                                     "postgres direct", "postgres alembic")}
    work = Path(tempfile.mkdtemp(prefix="bench-schema-"))
    async with scratch_database(server) as scratch:
        for i in range(rounds + 1):  # the first round warms up and is not counted
            for how in ("direct", "alembic"):
                path = work / f"{how}-{i}.db"
                started = time.perf_counter()
                if how == "direct":
                    await asyncio.to_thread(direct_sqlite, path)
                else:
                    store = SQLiteStore(path)
                    await store.init_schema()
                    await store.close()
                sqlite_s = time.perf_counter() - started
                async with database(scratch, "schema") as dsn:
                    started = time.perf_counter()
                    if how == "direct":
                        await direct_postgres(dsn)
                    else:
                        pg = PostgresStore(dsn)
                        await pg.init_schema()
                        await pg.close()
                    pg_s = time.perf_counter() - started
                if i:
                    times[f"sqlite {how}"].append(sqlite_s)
                    times[f"postgres {how}"].append(pg_s)
    median = {k: statistics.median(v) * 1000 for k, v in times.items()}
    for store in ("sqlite", "postgres"):
        direct, alembic = median[f"{store} direct"], median[f"{store} alembic"]
        print(f"{store}: direct DDL {direct:.1f} ms, through Alembic {alembic:.1f} ms "
              f"(+{alembic - direct:.1f} ms) per fresh store, median of {rounds}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--dsn", help="a PostgreSQL server to use (default: embedded)")
    args = parser.parse_args()
    asyncio.run(main(args.rounds, args.dsn))
