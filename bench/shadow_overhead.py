"""The primary search's latency with every search shadowed, beside shadowing off, in one run.

    .venv/bin/python bench/shadow_overhead.py [--rounds 6] [--dsn postgresql://...]

One repository (SQLite primary) over the parity corpus of bench/corpus.py (5,280 questions from
the standard library's docstrings, 8 users) and its 380 queries of every class; the query set
runs in alternating blocks with the shadow runner's sample rate at 0 and at 1, so both sides see
the same data, caches and machine load. Prints p50/p95 of the caller-visible search latency for
each and the ratio (target: p50 ratio <= 1.05).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from prometheus_client import CollectorRegistry

from bench._pg import scratch_database
from bench.corpus import build_corpus, build_queries
from bench.parity import load
from config import Settings
from proxy import open_repository
from proxy.faces import configure_logging


async def run(rounds: int, dsn: str | None) -> None:
    corpus = build_corpus()
    queries = build_queries(corpus)
    with tempfile.TemporaryDirectory() as tmp:
        async with scratch_database(dsn) as db:
            settings = Settings(sqlite_path=Path(tmp) / "app.db", postgres_dsn=db,
                                shadow_sample_rate=0.0, shadow_timeout_ms=2000)
            async with open_repository(settings, registry=CollectorRegistry()) as repo:
                assert repo.shadow is not None
                for store in repo.stores.values():
                    await load(store, corpus)
                timings: dict[float, list[float]] = {0.0: [], 1.0: []}
                for q in queries:  # warm-up
                    await repo.search_questions(q.text, user_id=corpus.users[q.user])
                for r in range(rounds):
                    for rate in ((0.0, 1.0) if r % 2 == 0 else (1.0, 0.0)):
                        repo.shadow.sample_rate = rate
                        for q in queries:
                            start = time.perf_counter()
                            await repo.search_questions(q.text, user_id=corpus.users[q.user])
                            timings[rate].append(time.perf_counter() - start)
                        await repo.shadow.drain()  # blocks end with no shadow in flight
                skipped = repo.metrics.shadow_shed._value.get()
    off, on = sorted(timings[0.0]), sorted(timings[1.0])
    p50_off, p50_on = statistics.median(off) * 1000, statistics.median(on) * 1000
    p95_off, p95_on = off[int(len(off) * .95)] * 1000, on[int(len(on) * .95)] * 1000
    print(f"questions={len(corpus.questions)} queries={len(queries)} "
          f"searches per side={len(off)} shadows shed={skipped:.0f}")
    print(f"{'shadowing':<10} {'p50 ms':>8} {'p95 ms':>8}")
    print(f"{'off':<10} {p50_off:>8.3f} {p95_off:>8.3f}")
    print(f"{'100%':<10} {p50_on:>8.3f} {p95_on:>8.3f}")
    print(f"p50 ratio (100% / off) = {p50_on / p50_off:.3f} (target <= 1.05); "
          f"p95 ratio = {p95_on / p95_off:.3f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--dsn", default=None)
    args = parser.parse_args()
    # the service's logging (JSON lines on stderr), so mismatch events cost what they cost there
    configure_logging(logging.INFO, json_lines=True)
    asyncio.run(run(args.rounds, args.dsn))


if __name__ == "__main__":
    main()
