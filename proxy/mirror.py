"""The inline mirror write: concurrent writers' mirror writes coalesced into one transaction.

Each write submits its mutation with a future that its primary write resolves (True once the
primary committed, False if it failed). One worker per mirror store takes whatever has queued
and hands the batch to `store.apply_when`, which may apply it while the primaries commit and
commits only the confirmed ones (PostgreSQL), or waits for them first (SQLite). One worker, so
batches to a store never interleave their row locks (no deadlocks between batches); while it
runs, the next batch gathers, which is what makes the pipeline cheaper per write as writers
multiply: one transaction and one commit per batch, not per write. (Two workers, one batch
applied while the other waits for its primaries, measured no faster with 16 writers.)

A write's result arrives within the pipeline's timeout: past it the result is TIMED_OUT and
the statement is abandoned, never cancelled (cancelling a driver mid-statement can poison its
connection); the primary's outbox entry covers the write, and replaying it later is idempotent.
One timer per pipeline enforces every deadline, not one per write.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from collections.abc import Generator, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from proxy.stores.base import ApplyOutcome, ApplyResult, Confirmed, Mutation

MAX_BATCH = 64
TIMED_OUT = ApplyResult(ApplyOutcome.FAILED, "timed out")
CONFIRM_TIMEOUT_S = 15.0  # longer than any primary write may take (the repository's 10 s cap)


class MirrorStore(Protocol):
    async def apply_when(
        self, mutations: Sequence[Mutation], confirmed: Confirmed
    ) -> list[ApplyResult | None]: ...


@dataclass(slots=True)
class _Item:
    mutation: Mutation
    primary: asyncio.Future[bool]
    result: asyncio.Future[ApplyResult | None]


class MirrorPipeline:
    """Batches the inline mirror writes to one store (see the module docstring)."""

    def __init__(self, store: MirrorStore, *, timeout_s: float = 2.0,
                 max_batch: int = MAX_BATCH) -> None:
        self._store = store
        self._timeout_s = timeout_s
        self._max_batch = max_batch
        self._deadlines: deque[tuple[float, asyncio.Future[ApplyResult | None]]] = deque()
        self._timer: asyncio.TimerHandle | None = None
        self._queue: list[_Item] = []
        self._ready = asyncio.Event()
        self._worker: asyncio.Task[None] | None = None
        self._idle = asyncio.Event()
        self._queue_closed = False

    @property
    def idle(self) -> bool:
        """True when a write submitted now starts a batch at once (nothing queued or running)."""
        return self._idle.is_set() and not self._queue

    def submit(
        self, mutation: Mutation, primary: asyncio.Future[bool]
    ) -> asyncio.Future[ApplyResult | None]:
        """Queue `mutation`; the result is None if its primary failed.

        `primary` must be resolved by the caller in every case (a finally), or the batch waits
        for it until CONFIRM_TIMEOUT_S and then treats it as failed.
        """
        loop = asyncio.get_running_loop()
        item = _Item(mutation, primary, loop.create_future())
        self._queue.append(item)
        self._deadlines.append((loop.time() + self._timeout_s, item.result))
        if self._timer is None:
            self._timer = loop.call_at(self._deadlines[0][0], self._expire)
        self._ready.set()
        if self._worker is None or self._worker.done():
            self._worker = loop.create_task(self._run(), name="cutover-mirror")
        return item.result

    def _expire(self) -> None:
        """Give every write past its deadline TIMED_OUT; wake again at the next deadline."""
        self._timer = None
        loop = asyncio.get_running_loop()
        now = loop.time()
        while self._deadlines and self._deadlines[0][0] <= now:
            _, result = self._deadlines.popleft()
            if not result.done():
                result.set_result(TIMED_OUT)
        while self._deadlines and self._deadlines[0][1].done():  # answered in time
            self._deadlines.popleft()
        if self._deadlines:
            self._timer = loop.call_at(self._deadlines[0][0], self._expire)

    async def _run(self) -> None:
        while True:
            self._idle.set()
            await self._ready.wait()
            self._ready.clear()
            self._idle.clear()
            while self._queue and not self._queue_closed:
                batch = self._queue[: self._max_batch]
                del self._queue[: self._max_batch]
                await self._flush(batch)

    async def _flush(self, batch: list[_Item]) -> None:
        try:
            results = await self._store.apply_when([i.mutation for i in batch],
                                                   _Confirmation([i.primary for i in batch]))
        except Exception as exc:  # the store is down: every write in the batch stays queued
            failed = ApplyResult(ApplyOutcome.FAILED, f"{type(exc).__name__}: {exc}"[:300])
            results = [failed] * len(batch)
        for item, result in zip(batch, results, strict=True):
            if not item.result.done():  # the caller may have stopped waiting (timeout)
                item.result.set_result(result)

    async def aclose(self, timeout_s: float = 5.0) -> None:
        """Let the batch in flight finish (cancelling a driver mid-statement can poison its
        connection), then stop; writes still queued are covered by the outbox."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._queue_closed = True
        if self._worker is not None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(self._idle.wait()), timeout_s)
            self._worker.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._worker
        for item in self._queue:
            if not item.result.done():
                item.result.cancel()
        self._queue.clear()


class _Confirmation:
    """Whether each primary committed, awaitable any number of times; a primary not resolved
    within CONFIRM_TIMEOUT_S counts as failed."""

    def __init__(self, primaries: list[asyncio.Future[bool]]) -> None:
        self._primaries = primaries
        self._result: list[bool] | None = None

    @property
    def settled(self) -> bool:
        return all(p.done() for p in self._primaries)

    def __await__(self) -> Generator[Any, None, list[bool]]:
        return self._wait().__await__()

    async def _wait(self) -> list[bool]:
        if self._result is None:
            pending = [p for p in self._primaries if not p.done()]
            if pending:
                await asyncio.wait(pending, timeout=CONFIRM_TIMEOUT_S)
            self._result = [p.done() and not p.cancelled() and p.result()
                            for p in self._primaries]
        return self._result
