"""Search latency when the stores hold many users: the parity corpus copied to many tenants.

    .venv/bin/python bench/tenants.py [--tenants 20] [--repeat 3] [--dsn postgresql://...]

The parity corpus (bench/corpus.py: 5,280 questions in the study books of 8 users) is loaded
with `--tenants` - 1 copies of every user, study book and question under new ids: 160 users and
105,600 questions by default, users whose books hold the same kind of text, as the students of
one course would. Both stores are loaded through their own insert paths and analyzed
(bench/parity.py, `load_rows`). The 380 parity queries are then searched by the corpus's own
users as the application searches (`store.search`, limit 20), one at a time, each `--repeat`
times after a warm-up, on both stores in the same run. Printed per query class and overall: p50,
p95 and mean in ms per store and PostgreSQL's p50 and p95 over SQLite's, and the slowest
queries. Every hit is checked to be the searching user's.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
import uuid
from collections import defaultdict
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench._pg import scratch_database
from bench.corpus import build_corpus, build_queries, corpus_rows
from bench.parity import AnyStore, load_rows
from proxy.stores.postgres import PostgresStore
from proxy.stores.sqlite import SQLiteStore

COPIES = uuid.UUID("7e4a4715-0000-4000-8000-000000000000")  # namespace of the copies' ids
LIMIT = 20


def with_tenants(
    rows: dict[str, list[dict[str, Any]]], tenants: int
) -> dict[str, list[dict[str, Any]]]:
    """`rows` and `tenants` - 1 copies of them, every id (and reference) replaced by a uuid5
    of the original and the copy's number: each copy is a different user's."""
    def copied(value: uuid.UUID, k: int) -> uuid.UUID:
        return uuid.uuid5(COPIES, f"{value}/{k}")

    out: dict[str, list[dict[str, Any]]] = {name: list(r) for name, r in rows.items()}
    for k in range(1, tenants):
        for row in rows["user"]:
            out["user"].append({**row, "id": copied(row["id"], k),
                                "email": row["email"].replace("@", f"+{k}@")})
        for row in rows["study_book"]:
            out["study_book"].append({**row, "id": copied(row["id"], k),
                                      "user_id": copied(row["user_id"], k)})
        for row in rows["question"]:
            out["question"].append({**row, "id": copied(row["id"], k),
                                    "study_book_id": copied(row["study_book_id"], k)})
    return out


def owners(rows: dict[str, list[dict[str, Any]]]) -> dict[uuid.UUID, set[uuid.UUID]]:
    """Each user's question ids."""
    book_user = {b["id"]: b["user_id"] for b in rows["study_book"]}
    mine: dict[uuid.UUID, set[uuid.UUID]] = defaultdict(set)
    for q in rows["question"]:
        mine[book_user[q["study_book_id"]]].add(q["id"])
    return mine


def pct(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(p * len(ordered)))]


async def run(tenants: int, repeat: int, dsn: str | None) -> None:
    corpus = build_corpus()
    queries = build_queries(corpus)
    rows = with_tenants(corpus_rows(corpus), tenants)
    mine = owners(rows)
    print(f"users={len(rows['user'])} study books={len(rows['study_book'])} "
          f"questions={len(rows['question'])} queries={len(queries)} repeat={repeat}", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        async with scratch_database(dsn) as db:
            stores: dict[str, AnyStore] = {
                "postgres": PostgresStore(db, min_size=1, max_size=1),
                "sqlite": SQLiteStore(Path(tmp) / "app.db", readers=1),
            }
            try:
                for name, store in stores.items():
                    await store.init_schema()
                    print(f"load {name}: {await load_rows(store, rows):.1f} s", flush=True)
                samples: dict[str, dict[str, list[float]]] = {
                    name: defaultdict(list) for name in stores}
                slowest: dict[str, list[tuple[float, str]]] = {name: [] for name in stores}
                foreign = 0
                for q in queries:
                    user = corpus.users[q.user]
                    for name, store in stores.items():
                        hits = await store.search(q.text, user, LIMIT, highlights=False)
                        foreign += sum(h.question_id not in mine[user] for h in hits)
                        times = []
                        for _ in range(repeat):
                            started = time.perf_counter()
                            await store.search(q.text, user, LIMIT, highlights=False)
                            times.append((time.perf_counter() - started) * 1000)
                        samples[name][q.cls] += times
                        slowest[name].append((statistics.median(times), q.text))
            finally:
                for store in stores.values():
                    await store.close()
    report(samples, slowest)
    print(f"hits of another user than the searching one: {foreign}")


def report(samples: dict[str, dict[str, list[float]]],
           slowest: dict[str, list[tuple[float, str]]]) -> None:
    print(f"\nper search, ms: {'':<6} {'postgres p50':>12} {'p95':>7} {'mean':>7}   "
          f"{'sqlite p50':>10} {'p95':>7} {'mean':>7}   {'pg/sqlite p50':>13} {'p95':>6}")
    classes = sorted(samples["postgres"])
    for cls in [*classes, "all"]:
        got = {name: [x for c in classes for x in by[c]] if cls == "all" else by[cls]
               for name, by in samples.items()}
        pg, lite = got["postgres"], got["sqlite"]
        print(f"  {cls:<19} {pct(pg, .5):12.3f} {pct(pg, .95):7.3f} {statistics.mean(pg):7.3f}"
              f"   {pct(lite, .5):10.3f} {pct(lite, .95):7.3f} {statistics.mean(lite):7.3f}"
              f"   {pct(pg, .5) / pct(lite, .5):13.2f} {pct(pg, .95) / pct(lite, .95):6.2f}")
    for name, found in slowest.items():
        worst = ", ".join(f"{text!r} {ms:.1f}" for ms, text in sorted(found)[-3:][::-1])
        print(f"slowest on {name} (median ms): {worst}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tenants", type=int, default=20,
                        help="copies of the corpus's users, the corpus included")
    parser.add_argument("--repeat", type=int, default=3, help="timed runs of each query")
    parser.add_argument("--dsn", help="a PostgreSQL server to use (default: embedded)")
    args = parser.parse_args()
    if args.tenants < 1 or args.repeat < 1:
        parser.error("--tenants and --repeat must be at least 1")
    asyncio.run(run(args.tenants, args.repeat, args.dsn))


if __name__ == "__main__":
    main()
