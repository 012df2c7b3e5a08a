"""Dual-write latency and throughput beside each store alone, in the same run.

    .venv/bin/python bench/dual_write.py [--writes 6000] [--rounds 6] [--dsn postgresql://...]

Each configuration records typing logs through the same validated API (`record_typing_log`):
the SQLite store alone, the PostgreSQL store alone, and the repository (SQLite primary with its
outbox entry, version and epoch check in the same transaction; the PostgreSQL mirror write
applied once SQLite has committed, before the call returns).
The three take turns (rounds of writes/rounds writes each, in a rotating order) after a warm-up,
so drift in the machine's load hits all alike. Prints p50/p95 per write over all rounds and the
throughput (writes over the summed wall time), with 1 and with 16 concurrent writers, and the ratios
the issue sets targets for (dual p50 <= 1.3x the slower store's; 16-writer throughput >= 0.75x).
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from prometheus_client import CollectorRegistry

from bench._pg import scratch_database
from config import Settings
from proxy import PostgresStore, SQLiteStore, open_repository


async def measure(target: Any, user_id: Any, writes: int, writers: int
                  ) -> tuple[list[float], float]:
    """`writes` writes by `writers` concurrent callers: each write's latency, and the wall time."""
    latencies: list[float] = []
    remaining = writes

    async def worker() -> None:
        nonlocal remaining
        while remaining > 0:
            remaining -= 1
            start = time.perf_counter()
            await target.record_typing_log(user_id=user_id, wpm=80, accuracy="97.50",
                                           took_ms=1500)
            latencies.append(time.perf_counter() - start)

    began = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(writers)))
    return latencies, time.perf_counter() - began


def summarise(latencies: list[float], wall: float) -> dict[str, float]:
    latencies = sorted(latencies)
    return {
        "p50_ms": statistics.median(latencies) * 1000,
        "p95_ms": latencies[int(len(latencies) * 0.95) - 1] * 1000,
        "per_s": len(latencies) / wall,
    }


async def run(writes: int, rounds: int, dsn: str | None) -> None:
    results: dict[tuple[str, int], dict[str, float]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        async with scratch_database(dsn) as db:
            sqlite = SQLiteStore(Path(tmp) / "alone.db")
            await sqlite.init_schema()
            pg = PostgresStore(db)
            await pg.init_schema()
            settings = Settings(sqlite_path=Path(tmp) / "dual.db", postgres_dsn=db,
                                shadow_sample_rate=0.0)
            async with open_repository(settings, registry=CollectorRegistry()) as repo:
                targets = {"sqlite alone": sqlite, "postgres alone": pg, "dual write": repo}
                users = {}
                for name, target in targets.items():
                    users[name] = (await target.create_user(
                        name="bench", email=f"bench-{name.replace(' ', '-')}@example.com")).id
                for writers in (1, 16):
                    for name, target in targets.items():  # warm-up
                        await measure(target, users[name], 200, writers)
                    # the configurations take turns, in a rotating order, so that a change in
                    # the machine's load during the run affects all three alike
                    samples: dict[str, list[float]] = {name: [] for name in targets}
                    walls = dict.fromkeys(targets, 0.0)
                    order = list(targets)
                    for r in range(rounds):
                        for name in order[r % 3:] + order[:r % 3]:
                            latencies, wall = await measure(targets[name], users[name],
                                                            writes // rounds, writers)
                            samples[name] += latencies
                            walls[name] += wall
                    for name in targets:
                        results[(name, writers)] = summarise(samples[name], walls[name])
                pending = (await repo.outbox_stats())["postgres"].pending
                await repo.replay_once()  # acknowledges what the mirror committed meanwhile
                drained = (await repo.outbox_stats())["postgres"].pending
            await sqlite.close()
            await pg.close()

    print(f"{'configuration':<16} {'writers':>7} {'p50 ms':>8} {'p95 ms':>8} {'writes/s':>9}")
    for (name, writers), r in results.items():
        print(f"{name:<16} {writers:>7} {r['p50_ms']:>8.3f} {r['p95_ms']:>8.3f} "
              f"{r['per_s']:>9.0f}")
    for writers in (1, 16):
        slower_p50 = max(results[(n, writers)]["p50_ms"] for n in ("sqlite alone",
                                                                    "postgres alone"))
        slower_tp = min(results[(n, writers)]["per_s"] for n in ("sqlite alone",
                                                                 "postgres alone"))
        dual = results[("dual write", writers)]
        print(f"{writers:>2} writer(s): dual p50 / slower store p50 = "
              f"{dual['p50_ms'] / slower_p50:.2f} (target <= 1.3); "
              f"dual throughput / slower store = {dual['per_s'] / slower_tp:.2f} "
              f"(target >= 0.75 at 16)")
    print(f"outbox entries at the end of the run: {pending} (acknowledged in the background); "
          f"after one replay pass: {drained}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--writes", type=int, default=6000,
                        help="timed writes per configuration and writer count")
    parser.add_argument("--rounds", type=int, default=6,
                        help="turns the configurations take, each with writes/rounds writes")
    parser.add_argument("--dsn", default=None, help="PostgreSQL server DSN (default: embedded)")
    parser.add_argument("--switch-interval", type=float, default=None,
                        help="sys.setswitchinterval for the run (seconds; CPython default 0.005)")
    args = parser.parse_args()
    if args.switch_interval is not None:
        sys.setswitchinterval(args.switch_interval)
    asyncio.run(run(args.writes, args.rounds, args.dsn))


if __name__ == "__main__":
    main()
