"""Threads that run blocking calls for the event loop, one hop per call.

Why not `loop.run_in_executor`: each call there builds a concurrent.futures.Future (with its own
condition variable), a work item and a second, chained asyncio future, and copies the result
across with two callbacks. On the SQLite writer, which every write of a busy repository passes
through, that bookkeeping was a large share of the event loop's time per write (16 writers:
SQLite alone ~3,000 -> ~3,800 writes/s once it was gone). Here a call is one queue entry and one
asyncio future, resolved from the thread through `call_soon_threadsafe`.

A lane may also take calls as a group (`run_grouped`): the calls that are waiting when its thread
gets to them are handed together to the lane's `group` runner, which may run them in one
transaction (the SQLite store's group commit), and their futures are resolved in one hop.
"""

from __future__ import annotations

import asyncio
import contextlib
import queue
import threading
from collections.abc import Callable
from typing import Any, TypeVar

T = TypeVar("T")

# (call, its future, its loop, whether it may join a group); None stops a thread
_Job = tuple[Callable[[], Any], asyncio.Future[Any], asyncio.AbstractEventLoop, bool] | None
# what a group runner returns for each call: (True, result) or (False, exception)
Outcome = tuple[bool, Any]
GroupRunner = Callable[[list[Callable[[], Any]]], list[Outcome]]
MAX_GROUP = 64  # calls per group: bounds how long the first one waits for the group to commit


class LaneClosed(RuntimeError):
    """Raised by `ThreadLane.run` once the lane has been shut down."""


class ThreadLane:
    """`threads` threads taking calls from one queue, in the order they were submitted."""

    def __init__(self, threads: int, name: str, *, group: GroupRunner | None = None) -> None:
        self._queue: queue.SimpleQueue[_Job] = queue.SimpleQueue()
        self._group = group
        self._threads = [threading.Thread(target=self._work, name=f"{name}-{i}", daemon=True)
                         for i in range(threads)]
        self._started = False
        self._closed = False
        self._lock = threading.Lock()  # no call may be queued behind the shutdown's sentinels

    def run(self, fn: Callable[[], T]) -> asyncio.Future[T]:
        """Run `fn` on a lane thread; a call cancelled before it starts is skipped."""
        return self._submit(fn, grouped=False)

    def run_grouped(self, fn: Callable[[], T]) -> asyncio.Future[T]:
        """Run `fn` through the lane's group runner, with the grouped calls queued beside it
        (in submission order); a call cancelled before its group starts is skipped."""
        if self._group is None:
            raise TypeError("this lane has no group runner")
        return self._submit(fn, grouped=True)

    def _submit(self, fn: Callable[[], T], *, grouped: bool) -> asyncio.Future[T]:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[T] = loop.create_future()
        with self._lock:
            if self._closed:
                raise LaneClosed("the lane has been shut down")
            if not self._started:
                for thread in self._threads:
                    thread.start()
                self._started = True
            self._queue.put((fn, future, loop, grouped))
        return future

    def _work(self) -> None:
        job = self._queue.get()
        while job is not None:
            if job[3]:
                taken = self._run_group(job)
                job = taken[0] if taken else self._queue.get()
                continue
            fn, future, loop, _ = job
            if not future.cancelled():  # else its caller stopped waiting before it began
                try:
                    result = fn()
                except BaseException as exc:  # handed to the caller, whatever it is
                    _resolve(loop, future.set_exception, future, exc)
                else:
                    _resolve(loop, future.set_result, future, result)
            job = self._queue.get()

    def _run_group(self, first: _Job) -> list[_Job]:
        """Run `first` with the grouped calls queued right behind it. Returns the job taken
        off the queue that could not join the group, if there is one."""
        group = [first]
        following: list[_Job] = []
        while len(group) < MAX_GROUP:
            try:
                job = self._queue.get_nowait()
            except queue.Empty:
                break
            if job is None or not job[3]:
                following = [job]
                break
            group.append(job)
        live = [job for job in group if job is not None and not job[1].cancelled()]
        if live:
            assert self._group is not None
            try:
                outcomes = self._group([job[0] for job in live])
            except BaseException as exc:  # a broken runner fails its calls, not the thread
                outcomes = [(False, exc)] * len(live)
            by_loop: dict[asyncio.AbstractEventLoop, list[tuple[asyncio.Future[Any], Outcome]]]
            by_loop = {}
            for job, outcome in zip(live, outcomes, strict=True):
                by_loop.setdefault(job[2], []).append((job[1], outcome))
            for loop, settled in by_loop.items():
                with contextlib.suppress(RuntimeError):  # a closed loop: nobody is waiting
                    loop.call_soon_threadsafe(_settle_all, settled)
        return following

    def shutdown(self) -> None:
        """Let the queued calls finish, then stop the threads (blocking: call off the loop);
        later calls raise LaneClosed."""
        with self._lock:
            self._closed = True
            if not self._started:
                return
            for _ in self._threads:
                self._queue.put(None)
        for thread in self._threads:
            thread.join()


def _resolve(loop: asyncio.AbstractEventLoop, setter: Callable[[Any], None],
             future: asyncio.Future[Any], value: Any) -> None:
    with contextlib.suppress(RuntimeError):  # a closed loop: nobody is waiting any more
        loop.call_soon_threadsafe(_settle, future, setter, value)


def _settle(future: asyncio.Future[Any], setter: Callable[[Any], None], value: Any) -> None:
    if not future.done():  # cancelled meanwhile
        setter(value)


def _settle_all(settled: list[tuple[asyncio.Future[Any], Outcome]]) -> None:
    for future, (ok, value) in settled:
        if not future.done():
            (future.set_result if ok else future.set_exception)(value)
