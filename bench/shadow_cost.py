"""What one shadow search costs the machine, per store and query class: the work behind the
shadowing ratio of bench/shadow_overhead.py.

    .venv/bin/python bench/shadow_cost.py [--repeat 3] [--dsn postgresql://...]

Each store searches the parity corpus's 380 queries (bench/corpus.py: 5,280 questions of 8 users)
the way the shadow worker's child does: `store.search(..., highlights=False)`, one at a time,
through one connection (PostgreSQL) or one reader thread (SQLite). Per query class and overall it
prints the wall time and this process's CPU per search and, for PostgreSQL on this machine, the
CPU of the server process that served them (from `/proc/<pid>/stat`; "n/a" for a server
elsewhere). Last, PostgreSQL's search statements run once more as they are and wrapped to return
ids only: what carrying the candidates' texts (the shared ranking reads them) costs both sides;
and as they are, PIPELINE of them a round trip (asyncpg's `fetchmany`): what a round trip per
search costs both sides.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench._pg import scratch_database
from bench.corpus import Corpus, Query, build_corpus, build_queries
from bench.parity import AnyStore, load
from proxy.stores.postgres import PostgresStore, search_statement
from proxy.stores.searchtext import parse_query
from proxy.stores.sqlite import SQLiteStore

TICK_S = 1.0 / os.sysconf("SC_CLK_TCK")
PIPELINE = 5  # statements a round trip in the pipelined measurement (about a shadow batch's)


def process_cpu_s(pid: int) -> float | None:
    """User + system CPU seconds of a PostgreSQL process on this machine, else None."""
    try:
        with open(f"/proc/{pid}/comm") as f:
            if not f.read().startswith("postgres"):
                return None  # another process (the server runs elsewhere)
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) * TICK_S


class Cost:
    def __init__(self) -> None:
        self.n = 0
        self.wall_s = self.cpu_s = self.server_s = 0.0

    def add(self, other: Cost) -> None:
        self.n += other.n
        self.wall_s += other.wall_s
        self.cpu_s += other.cpu_s
        self.server_s += other.server_s

    def line(self, label: str, server: bool) -> str:
        per = 1000.0 / max(1, self.n)
        tail = f"{self.server_s * per:>10.3f}" if server else f"{'n/a':>10}"
        return (f"  {label:<14} {self.n:>6} {self.wall_s * per:>9.3f} {self.cpu_s * per:>9.3f}"
                f"{tail}")


async def timed(server_pid: int | None, calls: list[Callable[[], Awaitable[object]]]) -> Cost:
    """Run `calls` one after another; their cost as a whole (the server's CPU is counted in
    clock ticks, 10 ms here: a batch, not each call)."""
    cost = Cost()
    server_before = process_cpu_s(server_pid) if server_pid else None
    cpu, wall = time.process_time(), time.perf_counter()
    for call in calls:
        await call()
    cost.wall_s = time.perf_counter() - wall
    cost.cpu_s = time.process_time() - cpu
    cost.n = len(calls)
    if server_before is not None:  # a server on this machine was named
        cost.server_s = (process_cpu_s(server_pid) or server_before) - server_before
    return cost


def header(title: str) -> None:
    print(f"\n{title}")
    print(f"  {'':<14} {'n':>6} {'wall':>9} {'our CPU':>9} {'server CPU':>10}")


async def run(repeat: int, dsn: str | None) -> None:
    corpus = build_corpus()
    queries = build_queries(corpus)
    print(f"questions={len(corpus.questions)} users={len(corpus.users)} "
          f"queries={len(queries)} repeat={repeat}")
    with tempfile.TemporaryDirectory() as tmp:
        async with scratch_database(dsn) as db:
            pg = PostgresStore(db, min_size=1, max_size=1)
            sq = SQLiteStore(Path(tmp) / "app.db", readers=1)
            try:
                await measure(pg, sq, corpus, queries, repeat)
            finally:
                await pg.close()
                await sq.close()


async def measure(pg: PostgresStore, sq: SQLiteStore, corpus: Corpus, queries: list[Query],
                  repeat: int) -> None:
    classes = sorted({q.cls for q in queries})
    for store in (pg, sq):
        await store.init_schema()
        await load(store, corpus)
    pid = int((await pg._fetch("SELECT pg_backend_pid()"))[0][0])
    local = process_cpu_s(pid) is not None
    for name, store in (("postgres", pg), ("sqlite", sq)):
        server = name == "postgres" and local

        def searches(cls: str | None, store: AnyStore = store) -> list[Any]:
            return [lambda q=q: store.search(q.text, corpus.users[q.user], 20,
                                             highlights=False)
                    for q in queries if cls is None or q.cls == cls]

        await timed(None, searches(None))  # warm-up: caches, statements, ranking
        header(f"{name}: per search, ms (our CPU: this process's, with "
               f"{'asyncpg and the shared ranking' if name == 'postgres' else 'SQLite'})")
        total = Cost()
        for cls in classes:
            cost = Cost()
            for _ in range(repeat):
                cost.add(await timed(pid if server else None, searches(cls)))
            total.add(cost)
            print(cost.line(cls, server))
        print(total.line("all", server))

    header("postgres, its search statements alone (no ranking), ms per statement:")
    for label, wrap in (("with texts", "{}"),
                        ("ids only", "SELECT id, is_fts, score FROM ({}) s")):
        calls: list[Callable[[], Awaitable[object]]] = []
        for q in queries:
            parsed = parse_query(q.text)
            if parsed.empty or not parsed.terms:
                continue
            sql, args = search_statement(parsed, corpus.users[q.user], 20)
            calls.append(lambda sql=wrap.format(sql), args=args: pg._fetch(sql, *args))
        await timed(None, calls)  # prepares the statements
        cost = Cost()
        for _ in range(repeat):
            cost.add(await timed(pid if local else None, calls))
        print(cost.line(label, local))
    # the same statements, PIPELINE of them (one statement, its own parameters) a round trip
    groups: dict[str, list[tuple[Any, ...]]] = {}
    for q in queries:
        parsed = parse_query(q.text)
        if not parsed.empty and parsed.terms:
            sql, args = search_statement(parsed, corpus.users[q.user], 20)
            groups.setdefault(sql, []).append(args)

    async def pipelined(sql: str, batch: list[tuple[Any, ...]]) -> None:
        async with (await pg._get_pool()).acquire() as conn:
            await conn.fetchmany(sql, batch)

    batched: list[Callable[[], Awaitable[object]]] = [
        lambda sql=sql, batch=argl[i:i + PIPELINE]: pipelined(sql, batch)
        for sql, argl in groups.items() for i in range(0, len(argl), PIPELINE)]
    cost = Cost()
    for _ in range(repeat):
        cost.add(await timed(pid if local else None, batched))
    cost.n = repeat * sum(len(argl) for argl in groups.values())  # per statement, not per trip
    print(cost.line(f"{PIPELINE} a trip", local))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeat", type=int, default=3, help="passes over the query set")
    parser.add_argument("--dsn", help="a PostgreSQL server to use (default: embedded)")
    args = parser.parse_args()
    asyncio.run(run(args.repeat, args.dsn))


if __name__ == "__main__":
    main()
