"""What shadowing costs the caller's process per search, sampled beside skipped, in one run.

    .venv/bin/python bench/shadow_submit.py [--results 20] [--rounds 30] [--worker-rounds 30]

1. `submit`, on the caller's path after the primary search returned: it samples, freezes the
   primary's results and queues the shadow (the rest starts at the loop's next turn). Each
   round times 200 calls with the sample rate at 1 and 200 at 0, the primary's results being
   `--results` of the stores' `SearchResult`, then lets the queued shadows (answering at once,
   every one a match) finish. Prints the medians per call and their difference: what sampling
   a search adds to the caller's path.
2. A shadow from end to end with the worker's child (SHADOW_WORKER=process): sending it,
   reading its answer and publishing its metrics. The child searches a SQLite store of the
   parity corpus (bench/corpus.py) and every comparison matches (the primary's results are that
   store's own). Each round submits 48 of the corpus's queries with the sample rate at 1 and
   48 at 0, one every 3.3 ms (300 searches/s), then waits
   for the shadows to finish, and reads the CPU time of the caller's thread (the event loop's,
   the kernel's work for it included; the child's work is not in it). Prints the medians per
   search and their difference: the caller's CPU per shadowed search, the wake-ups its
   batches cost included.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import structlog
from prometheus_client import CollectorRegistry

from bench.corpus import build_corpus, build_queries
from bench.parity import load
from metrics import Metrics
from proxy import SQLiteStore
from proxy.connect import SearchStores
from proxy.models import SearchResult
from shadow.experiment import ShadowRunner
from shadow.worker import SHADOWS_IN_FLIGHT, Recording, SearchWorker

CALLS = 200
WORKER_CALLS = 48
SPACING_S = 1 / 300


async def run(n_results: int, rounds: int) -> None:
    runner = ShadowRunner(Metrics(CollectorRegistry()), sample_rate=1.0, timeout_s=2.0,
                          max_concurrency=CALLS, flush_delay_s=0)
    results = [SearchResult(uuid.uuid4(), "question", "answer", "question", 1.0, "fts")
               for _ in range(n_results)]

    async def shadow() -> list[SearchResult]:
        return results

    user = uuid.uuid4()
    per_rate: dict[float, list[float]] = {1.0: [], 0.0: []}
    for _ in range(rounds):
        for rate in per_rate:
            runner.sample_rate = rate
            start = time.perf_counter()
            for _ in range(CALLS):
                runner.submit("json dumps", user_id=user, limit=20, primary_backend="sqlite",
                              primary_results=results, run_shadow=shadow)
            per_rate[rate].append((time.perf_counter() - start) / CALLS * 1e6)
            await runner.drain(10.0)
    await runner.aclose()
    sampled, skipped = (statistics.median(per_rate[r]) for r in (1.0, 0.0))
    print(f"results per search={n_results} rounds={rounds} calls per round and rate={CALLS}")
    print(f"submit, sampled: {sampled:.2f} us; skipped: {skipped:.2f} us; "
          f"sampling adds {sampled - skipped:.2f} us to the caller's path")


async def run_worker(rounds: int) -> None:
    corpus = build_corpus()
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "app.db"
        store = SQLiteStore(path)
        await store.init_schema()
        await load(store, corpus)
        # the child's own search of each query, as the primary's results: every one a match
        primary = [(q.text, corpus.users[q.user],
                    await store.search(q.text, corpus.users[q.user], 20, highlights=False))
                   for q in build_queries(corpus)]
        await store.close()
        runner = ShadowRunner(Metrics(CollectorRegistry()), sample_rate=1.0, timeout_s=5.0,
                              max_concurrency=SHADOWS_IN_FLIGHT, flush_delay_s=0)
        # no PostgreSQL: the shadows are SQLite's (the primary is said to be PostgreSQL)
        async with SearchWorker(SearchStores(path, "postgresql://bench@127.0.0.1:1/none"),
                                timeout_s=5.0, recording=Recording.like(runner.recorder)) as worker:
            runner.remote = worker
            per_rate: dict[float, list[float]] = {1.0: [], 0.0: []}
            at = 0
            for _ in range(rounds):
                for rate in per_rate:
                    runner.sample_rate = rate
                    start = time.thread_time()
                    for _ in range(WORKER_CALLS):
                        text, user, results = primary[at % len(primary)]
                        at += 1
                        runner.submit(text, user_id=user, limit=20, primary_backend="postgres",
                                      primary_results=results)
                        await asyncio.sleep(SPACING_S)
                    await runner.drain(10.0)
                    per_rate[rate].append((time.thread_time() - start) / WORKER_CALLS * 1e6)
            await runner.aclose()
    shadowed, skipped = (statistics.median(per_rate[r]) for r in (1.0, 0.0))
    print(f"with the worker's child: rounds={rounds} searches per round and rate={WORKER_CALLS}"
          f" (corpus queries, every shadow a match)")
    print(f"the caller's thread CPU per search, shadowed: {shadowed:.1f} us; skipped: "
          f"{skipped:.1f} us; a shadow costs the caller's process {shadowed - skipped:.1f} us")


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--results", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--worker-rounds", type=int, default=30)
    args = parser.parse_args()
    # the comparisons all match, so nothing is logged; keep it that way if one did not
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.CRITICAL))
    asyncio.run(run(args.results, args.rounds))
    asyncio.run(run_worker(args.worker_rounds))


if __name__ == "__main__":
    main()
