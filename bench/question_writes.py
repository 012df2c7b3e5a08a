"""What keeping the typo fallback's vocabulary costs a question write on PostgreSQL: the store's
question writes with the vocabulary's triggers on beside the same writes with them disabled, in
the same run.

    .venv/bin/python bench/question_writes.py [--writes 4000] [--rounds 8] [--dsn postgresql://...]

The writes are `PostgresStore.create_question` and `update_question` (a new answer), one at a
time, with the parity corpus's texts (bench/corpus.py: 5,280 questions from the standard
library's docstrings) in order, so new words keep arriving as they would while a book is
written. The two configurations take turns, `writes / rounds` writes each, after a warm-up.
Prints p50/p95 per write for each and the ratios.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import asyncpg

from bench._pg import scratch_database
from bench.corpus import Question, build_corpus
from bench.parity import percentile
from proxy.stores.postgres import PostgresStore

TRIGGERS = ("cutover_words_inserted", "cutover_words_updated")


async def set_triggers(dsn: str, on: bool) -> None:
    conn = await asyncpg.connect(dsn)
    try:
        for name in TRIGGERS:
            await conn.execute(
                f"ALTER TABLE questions {'ENABLE ALWAYS' if on else 'DISABLE'} TRIGGER {name}")
    finally:
        await conn.close()


async def writes(store: PostgresStore, book: object, texts: list[Question]) -> list[float]:
    """One create and one update per text; each write's latency in ms."""
    latencies: list[float] = []
    for t in texts:
        started = time.perf_counter()
        row = await store.create_question(study_book_id=book, language="en", category="stdlib",
                                          difficulty="medium", question=t.question,
                                          answer=t.answer)
        latencies.append((time.perf_counter() - started) * 1000)
        started = time.perf_counter()
        await store.update_question(row.id, answer=t.answer + " (" + t.name + ")")
        latencies.append((time.perf_counter() - started) * 1000)
    return latencies


async def run(total: int, rounds: int, dsn: str | None) -> None:
    texts = build_corpus().questions
    per_round = max(1, total // (rounds * 4))  # texts a round: two configurations, two writes
    async with scratch_database(dsn) as db:
        store = PostgresStore(db, min_size=1, max_size=1)
        try:
            await store.init_schema()
            user = await store.create_user(name="bench", email="bench@example.com")
            book = await store.create_study_book(user_id=user.id, title="stdlib")
            await writes(store, book.id, texts[:100])  # warm-up: connections, statements
            cursor = 100
            results: dict[str, list[float]] = {"vocabulary kept": [], "triggers disabled": []}
            for r in range(rounds):
                order = list(results) if r % 2 == 0 else list(reversed(results))
                for label in order:
                    await set_triggers(db, label == "vocabulary kept")
                    chunk = [texts[(cursor + i) % len(texts)] for i in range(per_round)]
                    cursor += per_round
                    results[label] += await writes(store, book.id, chunk)
            await set_triggers(db, True)
            words = (await store._fetch("SELECT count(*) FROM cutover_search_words"))[0][0]
        finally:
            await store.close()
    print(f"{sum(len(v) for v in results.values())} question writes (creates and updates), "
          f"{rounds} rounds; vocabulary at the end: {words} words")
    print(f"{'configuration':<20} {'writes':>7} {'p50 ms':>8} {'p95 ms':>8}")
    for label, values in results.items():
        print(f"{label:<20} {len(values):>7} {statistics.median(values):>8.3f} "
              f"{percentile(values, 0.95):>8.3f}")
    kept, off = results["vocabulary kept"], results["triggers disabled"]
    print(f"p50 ratio (kept / disabled) = {statistics.median(kept) / statistics.median(off):.3f}; "
          f"p95 ratio = {percentile(kept, 0.95) / percentile(off, 0.95):.3f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--writes", type=int, default=4000, help="writes in all")
    parser.add_argument("--rounds", type=int, default=8, help="turns of each configuration")
    parser.add_argument("--dsn", help="a PostgreSQL server to use (default: embedded)")
    args = parser.parse_args()
    asyncio.run(run(args.writes, args.rounds, args.dsn))


if __name__ == "__main__":
    main()
