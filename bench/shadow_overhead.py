"""The primary search's latency with every search shadowed, beside shadowing off, in one run.

    .venv/bin/python bench/shadow_overhead.py [--questions 20000] [--rounds 30] [--dsn ...]

One repository (SQLite primary) over a corpus of questions; the same query mix runs in
alternating blocks with SHADOW_SAMPLE_RATE 0 and 1 (the runner's rate is switched between
blocks, so both sides see the same data, caches and machine load). Prints p50/p95 of the
caller-visible search latency for each and the ratio (target: p50 ratio <= 1.05).
"""

from __future__ import annotations

import argparse
import asyncio
import random
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from prometheus_client import CollectorRegistry

from bench._pg import scratch_database
from config import Settings
from proxy import open_repository
from proxy.clock import next_version
from proxy.codec import now_utc
from proxy.models import QUESTIONS

QUERIES = ["json", "json dumps", "encoder", "file path", "socket", "thread lock",
           "regular expression", "decimal context", "parse", "http request", "jsno encodr",
           "temporary directory"]
WORDS = [
    "json", "dumps", "loads", "encoder", "decoder", "file", "path", "socket", "thread",
    "lock", "regular", "expression", "decimal", "context", "parse", "http", "request",
    "temporary", "directory", "string", "list", "dict", "tuple", "set", "iterator",
    "generator", "async", "await", "queue", "process", "signal", "time", "date", "zone",
    "locale",
]


async def load(repo: Any, questions: int) -> Any:
    user = await repo.create_user(name="bench", email="bench@example.com")
    book = await repo.create_study_book(user_id=user.id, title="bench")
    rng = random.Random(1)
    now = now_utc()
    for store in repo.stores.values():
        for i in range(questions):
            row = {"id": uuid.UUID(int=i + 1),
                   "study_book_id": book.id, "language": "en", "category": "python",
                   "difficulty": "easy",
                   "question": "What does " + " ".join(rng.choices(WORDS, k=4)) + " do?",
                   "answer": " ".join(rng.choices(WORDS, k=20)),
                   "created_at": now, "updated_at": now}
            await store.insert_row(QUESTIONS, row, version=next_version())
        rng = random.Random(1)  # the same rows on both stores
    return user.id


async def run(questions: int, rounds: int, dsn: str | None) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        async with scratch_database(dsn) as db:
            settings = Settings(sqlite_path=Path(tmp) / "app.db", postgres_dsn=db,
                                shadow_sample_rate=0.0, shadow_timeout_ms=2000)
            async with open_repository(settings, registry=CollectorRegistry()) as repo:
                assert repo.shadow is not None
                user_id = await load(repo, questions)
                timings: dict[float, list[float]] = {0.0: [], 1.0: []}
                for _ in range(3):  # warm-up
                    for q in QUERIES:
                        await repo.search_questions(q, user_id=user_id)
                for r in range(rounds):
                    for rate in ((0.0, 1.0) if r % 2 == 0 else (1.0, 0.0)):
                        repo.shadow.sample_rate = rate
                        for q in QUERIES:
                            start = time.perf_counter()
                            await repo.search_questions(q, user_id=user_id)
                            timings[rate].append(time.perf_counter() - start)
                        await repo.shadow.drain()  # blocks end with no shadow in flight
    off, on = sorted(timings[0.0]), sorted(timings[1.0])
    p50_off, p50_on = statistics.median(off) * 1000, statistics.median(on) * 1000
    p95_off, p95_on = off[int(len(off) * .95)] * 1000, on[int(len(on) * .95)] * 1000
    print(f"questions={questions} searches per side={len(off)}")
    print(f"{'shadowing':<10} {'p50 ms':>8} {'p95 ms':>8}")
    print(f"{'off':<10} {p50_off:>8.3f} {p95_off:>8.3f}")
    print(f"{'100%':<10} {p50_on:>8.3f} {p95_on:>8.3f}")
    print(f"p50 ratio (100% / off) = {p50_on / p50_off:.3f} (target <= 1.05); "
          f"p95 ratio = {p95_on / p95_off:.3f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--questions", type=int, default=20000)
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--dsn", default=None)
    args = parser.parse_args()
    asyncio.run(run(args.questions, args.rounds, args.dsn))


if __name__ == "__main__":
    main()
