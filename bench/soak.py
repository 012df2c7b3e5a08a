"""Soak: the concurrent-history harness of tests/histories.py, history after history, for minutes.

    .venv/bin/python bench/soak.py [--minutes 10] [--seed 1] [--primary sqlite|postgres|both]
                                   [--flips [--flip-every 0.15]] [--dsn postgresql://...]

Each history gets a fresh SQLite file and a fresh PostgreSQL database (seeds seed, seed+1, ...;
with --primary both, the primaries alternate). Prints one line per history and, at the end, the
number of histories, acknowledged writes and differences (and lost private writes); exits 1 if
any history did not converge.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import structlog

from bench._pg import database
from config.settings import Backend
from tests.histories import HistoryConfig, run_history


async def soak(minutes: float, seed: int, primary: str, flip_every_s: float | None,
               dsn: str | None) -> int:
    server = None
    if dsn is None:
        from proxy.embedded import start_embedded

        server = start_embedded(Path(tempfile.mkdtemp(prefix="soak-pg-")) / "data",
                                cleanup="delete")
        dsn = str(server.get_uri())
    histories = writes = diffs = lost = failed = 0
    deadline = time.monotonic() + minutes * 60
    try:
        while time.monotonic() < deadline or histories == 0:
            backend: Backend
            if primary == "both":
                backend = "sqlite" if histories % 2 == 0 else "postgres"
            else:
                backend = "postgres" if primary == "postgres" else "sqlite"
            config = HistoryConfig(seed=seed + histories, primary=backend)
            if flip_every_s is not None:
                config = replace(config, flips=True, flip_every_s=flip_every_s)
            async with database(dsn, "soak") as db:
                with tempfile.TemporaryDirectory(prefix="soak-") as tmp:
                    result = await run_history(config, Path(tmp) / "app.db", db)
            histories += 1
            writes += result.acked
            diffs += len(result.differences)
            lost += len(result.lost)
            if not result.ok:
                failed += 1
                print(result.failure_message(2), flush=True)
            else:
                print(result.summary(), flush=True)
    finally:
        if server is not None:
            server.cleanup()
    print(f"histories={histories} writes={writes} differences={diffs} lost={lost} "
          f"failed_histories={failed}")
    return 1 if failed else 0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--primary", choices=["sqlite", "postgres", "both"], default="both")
    parser.add_argument("--flips", action="store_true", help="flip the primary during the load")
    parser.add_argument("--flip-every", type=float, default=HistoryConfig.flip_every_s,
                        help="seconds between flips, on average, with --flips")
    parser.add_argument("--dsn", help="a PostgreSQL server to create databases on")
    args = parser.parse_args()
    # the repository's warnings (mirror failures, retries) would drown the one line a history
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.ERROR))
    flip_every = args.flip_every if args.flips else None
    sys.exit(asyncio.run(soak(args.minutes, args.seed, args.primary, flip_every, args.dsn)))


if __name__ == "__main__":
    main()
