"""Threads that run blocking calls for the event loop, one hop per call.

Why not `loop.run_in_executor`: each call there builds a concurrent.futures.Future (with its own
condition variable), a work item and a second, chained asyncio future, and copies the result
across with two callbacks. On the SQLite writer, which every write of a busy repository passes
through, that bookkeeping was a large share of the event loop's time per write (16 writers:
SQLite alone ~3,000 -> ~3,800 writes/s once it was gone). Here a call is one queue entry and one
asyncio future, resolved from the thread through `call_soon_threadsafe`.
"""

from __future__ import annotations

import asyncio
import contextlib
import queue
import threading
from collections.abc import Callable
from typing import Any, TypeVar

T = TypeVar("T")

_Job = tuple[Callable[[], Any], asyncio.Future[Any], asyncio.AbstractEventLoop] | None


class LaneClosed(RuntimeError):
    """Raised by `ThreadLane.run` once the lane has been shut down."""


class ThreadLane:
    """`threads` threads taking calls from one queue, in the order they were submitted."""

    def __init__(self, threads: int, name: str) -> None:
        self._queue: queue.SimpleQueue[_Job] = queue.SimpleQueue()
        self._threads = [threading.Thread(target=self._work, name=f"{name}-{i}", daemon=True)
                         for i in range(threads)]
        self._started = False
        self._closed = False
        self._lock = threading.Lock()  # no call may be queued behind the shutdown's sentinels

    def run(self, fn: Callable[[], T]) -> asyncio.Future[T]:
        """Run `fn` on a lane thread; a call cancelled before it starts is skipped."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[T] = loop.create_future()
        with self._lock:
            if self._closed:
                raise LaneClosed("the lane has been shut down")
            if not self._started:
                for thread in self._threads:
                    thread.start()
                self._started = True
            self._queue.put((fn, future, loop))
        return future

    def _work(self) -> None:
        while (job := self._queue.get()) is not None:
            fn, future, loop = job
            if future.cancelled():  # its caller stopped waiting before it began
                continue
            try:
                result = fn()
            except BaseException as exc:  # handed to the caller, whatever it is
                _resolve(loop, future.set_exception, future, exc)
            else:
                _resolve(loop, future.set_result, future, result)

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
