"""ThreadLane: the SQLite store's hop to its threads (order, errors, cancellation, shutdown,
groups)."""

from __future__ import annotations

import asyncio
import sqlite3
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from proxy.errors import StoreUnavailable
from proxy.stores.sqlite import SQLiteStore
from proxy.stores.threads import MAX_GROUP, LaneClosed, Outcome, ThreadLane


async def test_calls_run_on_the_lane_thread_in_order_and_return_their_results() -> None:
    lane = ThreadLane(1, "test-lane")
    seen: list[int] = []
    names: set[str] = set()

    def call(i: int) -> int:
        seen.append(i)
        names.add(threading.current_thread().name)
        return i * i

    try:
        results = await asyncio.gather(*(lane.run(lambda i=i: call(i)) for i in range(50)))
    finally:
        await asyncio.to_thread(lane.shutdown)
    assert results == [i * i for i in range(50)]
    assert seen == list(range(50))  # one thread: the order they were submitted
    assert names == {"test-lane-0"}


async def test_an_exception_reaches_the_caller_and_the_lane_keeps_working() -> None:
    lane = ThreadLane(1, "test-lane")

    def boom() -> None:
        raise ValueError("bad row")

    try:
        with pytest.raises(ValueError, match="bad row"):
            await lane.run(boom)
        assert await lane.run(lambda: 7) == 7
    finally:
        await asyncio.to_thread(lane.shutdown)


async def test_a_call_cancelled_before_it_starts_is_skipped() -> None:
    lane = ThreadLane(1, "test-lane")
    started = threading.Event()
    release = threading.Event()
    ran: list[str] = []

    def blocker() -> None:
        started.set()
        release.wait(5)

    try:
        first = lane.run(blocker)
        await asyncio.to_thread(started.wait, 5)
        second = lane.run(lambda: ran.append("second"))
        second.cancel()
        release.set()
        await first
        assert await lane.run(lambda: "after") == "after"
    finally:
        await asyncio.to_thread(lane.shutdown)
    assert ran == []


async def test_a_caller_that_stops_waiting_does_not_break_the_lane() -> None:
    lane = ThreadLane(1, "test-lane")
    try:
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(lane.run(lambda: time.sleep(0.2)), 0.05)
        assert await lane.run(lambda: "next") == "next"  # the late result was dropped quietly
    finally:
        await asyncio.to_thread(lane.shutdown)


async def test_several_threads_share_the_queue_and_shutdown_waits_for_queued_calls() -> None:
    lane = ThreadLane(3, "test-lane")
    names: set[str] = set()
    barrier = threading.Barrier(3, timeout=5)

    def call() -> None:
        names.add(threading.current_thread().name)
        barrier.wait()  # only returns once three calls run at the same time

    await asyncio.gather(*(lane.run(call) for _ in range(3)))
    done: list[int] = []
    for i in range(20):
        lane.run(lambda i=i: done.append(i))
    await asyncio.to_thread(lane.shutdown)
    assert names == {"test-lane-0", "test-lane-1", "test-lane-2"}
    assert sorted(done) == list(range(20))


def test_a_result_for_a_closed_loop_is_dropped_without_an_error() -> None:
    lane = ThreadLane(1, "test-lane")
    release = threading.Event()

    async def submit() -> None:
        lane.run(lambda: release.wait(5))  # nobody awaits it; the loop closes first

    async def later() -> str:
        return await lane.run(lambda: "still running")

    asyncio.run(submit())
    release.set()
    try:  # the thread resolved into the closed loop, dropped it, and carried on
        assert asyncio.run(asyncio.wait_for(later(), 5)) == "still running"
    finally:
        lane.shutdown()


async def test_a_call_after_shutdown_is_refused_not_left_waiting() -> None:
    lane = ThreadLane(2, "test-lane")
    assert await lane.run(lambda: 1) == 1
    await asyncio.to_thread(lane.shutdown)
    with pytest.raises(LaneClosed):
        lane.run(lambda: 2)  # queued behind the stop, it would never run
    never_started = ThreadLane(1, "test-lane")
    never_started.shutdown()
    with pytest.raises(LaneClosed):
        never_started.run(lambda: 3)


async def test_a_store_closed_under_a_call_says_so(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "app.db")
    await store.init_schema()
    await asyncio.to_thread(store._writer.shutdown)  # as close() does, before _closed is seen
    with pytest.raises(StoreUnavailable, match="closed"):
        await store.create_user(name="Late", email="late@example.com")
    await store.close()


async def test_connections_opening_at_once_on_a_rollback_journal_file_all_get_in(
    tmp_path: Path,
) -> None:
    """A file not yet in WAL mode (a legacy app.db; any file before this fix) switched by every
    connection that opened it, and two switching at once got "database is locked" at once (CI
    failed on it). 30 files, 8 readers and the writer opening together on each."""
    for n in range(30):
        path = tmp_path / f"app{n}.db"
        with sqlite3.connect(path) as conn:
            conn.execute("CREATE TABLE t (x)")
        store = SQLiteStore(path, readers=8)
        together = threading.Barrier(8)  # each read on its own thread, so 8 connections

        def read(conn: sqlite3.Connection, together: threading.Barrier = together) -> None:
            together.wait(5)
            conn.execute("SELECT * FROM t").fetchall()

        try:
            await asyncio.gather(
                *(store._run(read, write=False) for _ in range(8)),
                store._run(lambda c: c.execute("INSERT INTO t VALUES (1)"), write=True),
            )
        finally:
            await store.close()
        with sqlite3.connect(path) as conn:
            assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


class _Recorder:
    """A group runner that runs each call and records the groups it was handed."""

    def __init__(self) -> None:
        self.groups: list[list[Any]] = []

    def __call__(self, calls: list[Callable[[], Any]]) -> list[Outcome]:
        results = [call() for call in calls]
        self.groups.append(results)
        return [(True, r) for r in results]


async def _blocked(lane: ThreadLane) -> tuple[threading.Event, asyncio.Future[None]]:
    """Occupy the lane's thread until the returned event is set."""
    started, release = threading.Event(), threading.Event()

    def blocker() -> None:
        started.set()
        release.wait(5)

    future = lane.run(blocker)
    await asyncio.to_thread(started.wait, 5)
    return release, future


async def test_grouped_calls_waiting_together_reach_the_runner_as_one_group_in_order() -> None:
    runner = _Recorder()
    lane = ThreadLane(1, "test-lane", group=runner)
    try:
        release, blocker = await _blocked(lane)
        first = [lane.run_grouped(lambda i=i: i) for i in range(3)]
        plain = lane.run(lambda: "plain")  # a call that may not join splits the group
        second = [lane.run_grouped(lambda i=i: i) for i in range(3, 100)]
        release.set()
        await blocker
        assert await asyncio.gather(*first) == [0, 1, 2]
        assert await plain == "plain"
        assert await asyncio.gather(*second) == list(range(3, 100))
    finally:
        await asyncio.to_thread(lane.shutdown)
    # the second run is cut at MAX_GROUP, so that the first call waits for a bounded group
    assert runner.groups == [[0, 1, 2], list(range(3, 3 + MAX_GROUP)),
                             list(range(3 + MAX_GROUP, 100))]


async def test_a_lone_grouped_call_runs_at_once_and_a_failing_runner_fails_only_its_group(
) -> None:
    calls = 0

    def runner(fns: list[Callable[[], Any]]) -> list[Outcome]:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise RuntimeError("runner broke")
        return [(True, fn()) for fn in fns]

    lane = ThreadLane(1, "test-lane", group=runner)
    try:
        with pytest.raises(RuntimeError, match="runner broke"):
            await lane.run_grouped(lambda: 1)
        assert await lane.run_grouped(lambda: 2) == 2  # the thread survived
        assert await lane.run(lambda: 3) == 3
    finally:
        await asyncio.to_thread(lane.shutdown)
    with pytest.raises(TypeError, match="no group runner"):
        ThreadLane(1, "plain").run_grouped(lambda: 1)


async def test_grouped_calls_of_one_turn_of_the_loop_go_together_to_an_idle_thread() -> None:
    runner = _Recorder()
    lane = ThreadLane(1, "test-lane", group=runner)
    try:
        assert await asyncio.gather(*[lane.run_grouped(lambda i=i: i) for i in range(10)]) \
            == list(range(10))
        assert await lane.run_grouped(lambda: 10) == 10
    finally:
        await asyncio.to_thread(lane.shutdown)
    assert runner.groups == [list(range(10)), [10]]


async def test_shutdown_runs_the_grouped_calls_still_gathering() -> None:
    runner = _Recorder()
    lane = ThreadLane(1, "test-lane", group=runner)
    assert await lane.run(lambda: "started") == "started"
    pending = [lane.run_grouped(lambda i=i: i) for i in range(3)]
    lane.shutdown()  # in this turn: the calls have not been handed to the thread yet
    assert await asyncio.wait_for(asyncio.gather(*pending), 5) == [0, 1, 2]
    assert runner.groups == [[0, 1, 2]]
