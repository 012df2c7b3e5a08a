"""What `ShadowRunner.submit` costs the caller's search, sampled beside skipped, in one run.

    .venv/bin/python bench/shadow_submit.py [--results 20] [--rounds 30]

`submit` runs on the caller's path after the primary search returned: it samples, freezes the
primary's results and queues the shadow (the job and its task start at the loop's next turn).
Each round times 200 calls with the sample rate at 1 and 200 at 0, the primary's results being
`--results` of the stores' `SearchResult`, then lets the queued shadows (answering at once,
every one a match) finish. Prints the medians per call and their difference: what sampling a
search adds to the caller's path.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import statistics
import sys
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import structlog
from prometheus_client import CollectorRegistry

from metrics import Metrics
from proxy.models import SearchResult
from shadow.experiment import ShadowRunner

CALLS = 200


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


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--results", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=30)
    args = parser.parse_args()
    # the comparisons all match, so nothing is logged; keep it that way if one did not
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.CRITICAL))
    asyncio.run(run(args.results, args.rounds))


if __name__ == "__main__":
    main()
