"""Threads that run blocking calls for the event loop, one hop per call.

Why not `loop.run_in_executor`: each call there builds a concurrent.futures.Future (with its own
condition variable), a work item and a second, chained asyncio future, and copies the result
across with two callbacks. On the SQLite writer, which every write of a busy repository passes
through, that bookkeeping was a large share of the event loop's time per write (16 writers:
SQLite alone ~3,000 -> ~3,800 writes/s once it was gone). Here a call is one queue entry and one
asyncio future, resolved from the thread through `call_soon_threadsafe`.

A lane may also take calls as a group (`run_grouped`): the calls submitted in one turn of the
event loop, and those still queued when the thread gets to them, are handed together to the
lane's `group` runner, which may run them in one transaction (the SQLite store's group commit);
their futures are resolved in one hop.
"""

from __future__ import annotations

import asyncio
import contextlib
import queue
import threading
from collections.abc import Callable
from typing import Any, TypeVar

T = TypeVar("T")

_Call = tuple[Callable[[], Any], asyncio.Future[Any], asyncio.AbstractEventLoop]
# a queue entry: one call, a list of calls to run as a group, or None (stop a thread)
_Entry = _Call | list[_Call] | None
# what a group runner returns for each call: (True, result) or (False, exception)
Outcome = tuple[bool, Any]
GroupRunner = Callable[[list[Callable[[], Any]]], list[Outcome]]
MAX_GROUP = 64  # calls per group: bounds how long the first one waits for the group to commit


class LaneClosed(RuntimeError):
    """Raised by `ThreadLane.run` once the lane has been shut down."""


class ThreadLane:
    """`threads` threads taking calls from one queue, in the order they were submitted."""

    def __init__(self, threads: int, name: str, *, group: GroupRunner | None = None) -> None:
        self._queue: queue.SimpleQueue[_Entry] = queue.SimpleQueue()
        self._group = group
        self._gathering: list[_Call] = []  # grouped calls of this loop iteration
        self._threads = [threading.Thread(target=self._work, name=f"{name}-{i}", daemon=True)
                         for i in range(threads)]
        self._started = False
        self._closed = False
        # no call may be queued behind the shutdown's sentinels; guards _gathering too
        self._lock = threading.Lock()

    def run(self, fn: Callable[[], T]) -> asyncio.Future[T]:
        """Run `fn` on a lane thread; a call cancelled before it starts is skipped."""
        call = _call(fn)
        with self._lock:
            self._open()
            self._hand_over_locked()  # grouped calls submitted before it go first
            self._queue.put(call)
        return call[1]

    def run_grouped(self, fn: Callable[[], T]) -> asyncio.Future[T]:
        """Run `fn` through the lane's group runner, together with the grouped calls submitted
        in the same turn of the event loop and those still queued when the thread gets to
        them (in submission order); a call cancelled before its group starts is skipped.

        Gathering a turn's calls first matters under load: when a group's results come back,
        its callers all submit their next writes in the next turn. Queued one by one, the
        first would reach the idle thread alone and the rest would make a second group."""
        if self._group is None:
            raise TypeError("this lane has no group runner")
        call = _call(fn)
        with self._lock:
            self._open()
            if not self._gathering:
                call[2].call_soon(self._hand_over)
            self._gathering.append(call)
        return call[1]

    def _open(self) -> None:
        if self._closed:
            raise LaneClosed("the lane has been shut down")
        if not self._started:
            for thread in self._threads:
                thread.start()
            self._started = True

    def _hand_over(self) -> None:
        with self._lock:
            self._hand_over_locked()

    def _hand_over_locked(self) -> None:
        if self._gathering:
            self._queue.put(self._gathering)
            self._gathering = []

    def _work(self) -> None:
        entry = self._queue.get()
        while entry is not None:
            taken: list[_Entry] = []
            if isinstance(entry, list):
                taken = self._run_group(entry)
            elif not entry[1].cancelled():  # else its caller stopped waiting before it began
                fn, future, loop = entry
                try:
                    result = fn()
                except BaseException as exc:  # handed to the caller, whatever it is
                    _resolve(loop, future.set_exception, future, exc)
                else:
                    _resolve(loop, future.set_result, future, result)
            entry = taken[0] if taken else self._queue.get()

    def _run_group(self, calls: list[_Call]) -> list[_Entry]:
        """Run `calls`, with the groups queued right behind them, through the group runner.
        Returns the entry taken off the queue that could not join, if there is one."""
        following: list[_Entry] = []
        while len(calls) < MAX_GROUP:
            try:
                entry = self._queue.get_nowait()
            except queue.Empty:
                break
            if not isinstance(entry, list):
                following = [entry]
                break
            calls = calls + entry
        live = [call for call in calls if not call[1].cancelled()]
        for at in range(0, len(live), MAX_GROUP):
            self._run_calls(live[at:at + MAX_GROUP])
        return following

    def _run_calls(self, calls: list[_Call]) -> None:
        assert self._group is not None
        try:
            outcomes = self._group([call[0] for call in calls])
        except BaseException as exc:  # a broken runner fails its calls, not the thread
            outcomes = [(False, exc)] * len(calls)
        by_loop: dict[asyncio.AbstractEventLoop, list[tuple[asyncio.Future[Any], Outcome]]] = {}
        for (_, future, loop), outcome in zip(calls, outcomes, strict=True):
            by_loop.setdefault(loop, []).append((future, outcome))
        for loop, settled in by_loop.items():
            with contextlib.suppress(RuntimeError):  # a closed loop: nobody is waiting any more
                loop.call_soon_threadsafe(_settle_all, settled)

    def shutdown(self) -> None:
        """Let the queued calls finish, then stop the threads (blocking: call off the loop);
        later calls raise LaneClosed."""
        with self._lock:
            self._closed = True
            if not self._started:
                return
            self._hand_over_locked()
            for _ in self._threads:
                self._queue.put(None)
        for thread in self._threads:
            thread.join()


def _call(fn: Callable[[], T]) -> _Call:
    loop = asyncio.get_running_loop()
    return fn, loop.create_future(), loop


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
