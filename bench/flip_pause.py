"""How long writes pause while the primary flips under load, beside the same load unflipped.

    .venv/bin/python bench/flip_pause.py [--writers 8] [--seconds 6] [--flips 10] [--dsn ...]

Writers record typing logs through the repository without pause. First the load runs alone for
`--seconds` (the baseline: write latency p50, p99 and max); then the same load runs while the
primary is flipped `--flips` times, evenly spaced (`set_read_primary`, the library's flip: drain,
fence the old primary, drain again, name the new one). Prints each flip's duration and the
longest write that overlapped it (the pause a caller saw), their medians and maxima, and the
worst write during flips over the baseline's.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from prometheus_client import CollectorRegistry

from bench._pg import scratch_database
from config import Settings
from proxy import FlipRefused, open_repository

Write = tuple[float, float]  # start, end (perf_counter)


async def load(repo: object, user_id: object, writers: int, seconds: float,
               writes: list[Write]) -> None:
    stop = time.perf_counter() + seconds

    async def writer() -> None:
        while time.perf_counter() < stop:
            start = time.perf_counter()
            await repo.record_typing_log(user_id=user_id, wpm=80,  # type: ignore[attr-defined]
                                         accuracy="97.50", took_ms=1500)
            writes.append((start, time.perf_counter()))

    await asyncio.gather(*(writer() for _ in range(writers)))


def ms(seconds: float) -> str:
    return f"{seconds * 1000:.1f} ms"


async def run(writers: int, seconds: float, flips: int, dsn: str | None) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        async with scratch_database(dsn) as db:
            settings = Settings(sqlite_path=Path(tmp) / "app.db", postgres_dsn=db,
                                shadow_sample_rate=0.0)
            async with open_repository(settings, registry=CollectorRegistry()) as repo:
                user = await repo.create_user(name="bench", email="bench@example.com")
                await load(repo, user.id, writers, 1.0, [])  # warm-up
                baseline: list[Write] = []
                await load(repo, user.id, writers, seconds, baseline)
                flipped: list[Write] = []
                windows: list[Write] = []
                refused = 0
                task = asyncio.create_task(load(repo, user.id, writers, seconds, flipped))
                for i in range(flips):
                    await asyncio.sleep(seconds / (flips + 1))
                    start = time.perf_counter()
                    try:
                        await repo.set_read_primary("postgres" if i % 2 == 0 else "sqlite")
                        windows.append((start, time.perf_counter()))
                    except FlipRefused:
                        refused += 1
                await task
    base = sorted(end - start for start, end in baseline)
    print(f"baseline, {writers} writers, {len(base)} writes: p50 {ms(statistics.median(base))}, "
          f"p99 {ms(base[int(len(base) * 0.99) - 1])}, max {ms(base[-1])}")
    pauses = []
    for n, (f_start, f_end) in enumerate(windows, 1):
        overlapping = [end - start for start, end in flipped if start < f_end and end > f_start]
        pause = max(overlapping, default=0.0)
        pauses.append(pause)
        print(f"flip {n:>2}: took {ms(f_end - f_start)}, longest write beside it {ms(pause)}")
    durations = [end - start for start, end in windows]
    if windows:
        print(f"flips: {len(windows)} ({refused} refused); flip time median "
              f"{ms(statistics.median(durations))}, max {ms(max(durations))}; writes paused "
              f"median {ms(statistics.median(pauses))}, max {ms(max(pauses))}; worst write "
              f"during flips / worst in baseline = {max(pauses) / base[-1]:.1f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--writers", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=6.0)
    parser.add_argument("--flips", type=int, default=10)
    parser.add_argument("--dsn", default=None, help="PostgreSQL server DSN (default: embedded)")
    args = parser.parse_args()
    asyncio.run(run(args.writers, args.seconds, args.flips, args.dsn))


if __name__ == "__main__":
    main()
