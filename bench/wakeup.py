"""How much a wake-up across CPUs costs on this machine, beside one on the same CPU.

    .venv/bin/python bench/wakeup.py [--rounds 600] [--gap-ms 0 0.2 1 4]

Two threads hand a token back and forth (a `threading.Event` each way): a round is two
wake-ups. Once with the threads pinned to two different CPUs, so every wake-up crosses them,
and once with both on one CPU, after a pause of `--gap-ms` between rounds (an idle CPU may
have gone to sleep meanwhile, as between a service's requests). On a virtual machine a wake-up
across CPUs is an inter-processor interrupt, which the hypervisor delivers (and a sleeping
virtual CPU must be scheduled again by the host): that is what `shadow/worker.py` batches
its requests and answers against (`BATCH_DELAY_S`). Prints p50 and p90 round trips in
microseconds and their ratio, across / same. Needs two CPUs.
"""

from __future__ import annotations

import argparse
import os
import statistics
import threading
import time


def round_trips(n: int, gap_s: float, cpus: tuple[int, int]) -> list[float]:
    """Round trips (seconds) of a token between this thread on cpus[0] and one on cpus[1]."""
    ping, pong = threading.Event(), threading.Event()
    lat: list[float] = []

    def other() -> None:
        os.sched_setaffinity(0, {cpus[1]})
        for _ in range(n):
            ping.wait()
            ping.clear()
            pong.set()

    before = os.sched_getaffinity(0)
    thread = threading.Thread(target=other)
    thread.start()
    os.sched_setaffinity(0, {cpus[0]})
    try:
        for _ in range(n):
            if gap_s:
                time.sleep(gap_s)
            t0 = time.perf_counter()
            ping.set()
            pong.wait()
            pong.clear()
            lat.append(time.perf_counter() - t0)
    finally:
        thread.join()
        os.sched_setaffinity(0, before)
    return lat


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return (statistics.median(ordered) if q == 0.5 else ordered[int(len(ordered) * q)]) * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--rounds", type=int, default=600)
    parser.add_argument("--gap-ms", type=float, nargs="+", default=[0.0, 0.2, 1.0, 4.0])
    args = parser.parse_args()
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) < 2:
        parser.error("needs two CPUs")
    if args.rounds < 10:
        parser.error("--rounds must be at least 10")
    first, second = cpus[0], cpus[1]
    print(f"token round trips between two threads, {args.rounds} rounds each, microseconds")
    print(f"  {'gap ms':>6} {'across p50':>11} {'p90':>7} {'same p50':>9} {'p90':>7} "
          f"{'ratio p50':>10}")
    for gap in args.gap_ms:
        across = round_trips(args.rounds, gap / 1000, (first, second))
        same = round_trips(args.rounds, gap / 1000, (first, first))
        print(f"  {gap:>6.1f} {pct(across, .5):>11.1f} {pct(across, .9):>7.1f} "
              f"{pct(same, .5):>9.1f} {pct(same, .9):>7.1f} "
              f"{pct(across, .5) / pct(same, .5):>10.2f}")


if __name__ == "__main__":
    main()
