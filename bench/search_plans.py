"""Why a search costs what it does on a backfilled database: each form's plan and time per query.

    .venv/bin/python bench/search_plans.py --dsn postgresql://... [--legacy FILE]
        [--query TEXT --user UUID] [--slowest 3] [--recount-books 0.25]

For a database `bench/scale.py`'s backfill filled (keep one: run the backfill alone with
`cutover backfill --from FILE` against a server of your own), this prints, for the queries of
the scale bench's mix drawn from the legacy FILE (or the one `--query` of `--user`):

- each query's time through `PostgresStore.search` as the store picks its form, then forced to
  the index form and to the scan form (`proxy.stores.postgres`: a user with at most
  SCAN_USER_QUESTIONS questions is read, not found through the full-text index), the slowest
  `--slowest` of each class of the mix;
- for the slowest query of all, EXPLAIN (ANALYZE, BUFFERS) of both forms' generic plans (the
  store's sessions use only those), the nodes that read an index or the table, with their time,
  rows and buffers;
- with `--recount-books F`, the vocabulary's recount (`postgres_schema.WORDS_COUNT`) over the
  first fraction F of the books, EXPLAIN ANALYZE with PostgreSQL's Memoize allowed and not
  (the backfill turns it off).

Figures quoted in docs/search-tuning.md and docs/backfill-at-scale.md come from this script on
the 10M sentences file of bench/scale.py.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import asyncpg

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from bench.scale import MIX_CLASSES, query_mix  # noqa: E402
from proxy.stores import postgres_schema  # noqa: E402
from proxy.stores.postgres import PostgresStore, _init_connection, search_statement  # noqa: E402
from proxy.stores.searchtext import parse_query  # noqa: E402


async def timed(store: PostgresStore, text: str, user: uuid.UUID, scan: bool | None) -> float:
    """ms of one search; `scan` forces a form (None: the store's own choice)."""
    if scan is not None:
        store._user_sizes[user] = (time.monotonic(), scan)
    t0 = time.perf_counter()
    await store.search_questions(text, user_id=user, limit=20)
    return (time.perf_counter() - t0) * 1000


def _nodes(plan: dict[str, Any]) -> list[dict[str, Any]]:
    return [plan, *(n for child in plan.get("Plans", []) for n in _nodes(child))]


async def explain(conn: asyncpg.Connection, text: str, user: uuid.UUID, scan: bool) -> None:
    sql, args = search_statement(parse_query(text), user, 20, scan=scan)
    statement = await conn.prepare("EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) " + sql)
    for _ in range(6):  # past the first five runs: the generic plan, as the store's sessions
        raw = await statement.fetchval(*args)
    plan = json.loads(raw)[0]
    print(f"  {'scan' if scan else 'index'} form: {plan['Execution Time']:.1f} ms")
    for n in _nodes(plan["Plan"]):
        if n.get("Relation Name") in ("questions", "cutover_search_words") or "Index Name" in n:
            print(f"    {n['Node Type']:<18} {n.get('Index Name') or n.get('Relation Name'):<36}"
                  f" {n['Actual Total Time']:8.1f} ms  rows {n['Actual Rows']:>8.0f}"
                  f" x{n['Actual Loops']}  buffers {n.get('Shared Hit Blocks', 0)}")


async def recount(conn: asyncpg.Connection, fraction: float) -> None:
    upper = uuid.UUID(int=min(int(fraction * 2**128), 2**128 - 1))
    books = f"q.study_book_id < '{upper}'"
    await conn.execute("SET work_mem = '256MB'")
    for memoize in ("on", "off"):
        await conn.execute(f"SET enable_memoize = {memoize}")
        raw = await conn.fetchval("EXPLAIN (ANALYZE, FORMAT JSON) "
                                  + postgres_schema.WORDS_COUNT.format(books=books))
        plan = json.loads(raw)[0]
        cached = [n for n in _nodes(plan["Plan"]) if n["Node Type"] == "Memoize"]
        print(f"recount of {fraction:.0%} of the books, Memoize {memoize}: "
              f"{plan['Execution Time'] / 1000:.1f} s"
              + (f" (Memoize: {cached[0].get('Cache Misses')} misses, "
                 f"{cached[0].get('Cache Evictions')} evictions)" if cached else ""))


async def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dsn", required=True)
    parser.add_argument("--legacy", type=Path,
                        default=Path("/tmp/cutover-scale/legacy-sentences-10M.db"))
    parser.add_argument("--query")
    parser.add_argument("--user", type=uuid.UUID)
    parser.add_argument("--slowest", type=int, default=3)
    parser.add_argument("--recount-books", type=float)
    args = parser.parse_args(argv)
    mix = [(args.query, args.user)] if args.query and args.user else query_mix(args.legacy)
    store = PostgresStore(args.dsn)
    try:
        times: dict[str, list[float]] = {"chosen": [], "index": [], "scan": []}
        for text, user in mix:  # a pass to warm up (and count each user once), then timed
            await timed(store, text, user, None)
        chosen = dict(store._user_sizes)
        for text, user in mix:
            times["chosen"].append(await timed(store, text, user, chosen[user][1]))
            times["index"].append(await timed(store, text, user, False))
            times["scan"].append(await timed(store, text, user, True))
    finally:
        await store.close()
    for form, ts in times.items():
        q = statistics.quantiles(ts, n=20) if len(ts) > 1 else ts * 19
        print(f"{form:>7} form: p50 {statistics.median(ts):6.1f} ms  p95 {q[18]:6.1f} ms")
    for k, name in enumerate(MIX_CLASSES if len(mix) > 1 else ("query",)):
        picked = sorted(zip(times["chosen"][k::len(MIX_CLASSES)], mix[k::len(MIX_CLASSES)],
                            strict=True))[-args.slowest:]
        print(f"  {name}: " + ", ".join(f"{t:.0f} ms {text!r}" for t, (text, _) in picked))
    worst = max(range(len(mix)), key=lambda i: max(times["index"][i], times["scan"][i]))
    text, user = mix[worst]
    print(f"plans of {text!r} for user {user}:")
    conn = await asyncpg.connect(args.dsn)
    try:
        await _init_connection(conn)
        for scan in (False, True):
            await explain(conn, text, user, scan)
        if args.recount_books:
            await recount(conn, args.recount_books)
    finally:
        await conn.close()
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
