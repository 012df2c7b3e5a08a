"""The inline mirror write: concurrent writers' mirror writes coalesced into one batch.

A write submits its mutation once its primary write has committed: the mutation carries the
version the primary gave it, and nothing the primary has not committed ever reaches the mirror.
(An earlier pipeline let a write join the batch before its primary committed, to overlap the
two; that put the mirror's order out of step with the primary's, and the version cannot be known
before the primary's transaction chooses it: it went.) One worker per mirror store takes
whatever has queued and hands the batch to `store.apply_inline`. One worker, so batches to a
store never interleave their row locks (no deadlocks between batches); while it runs, the next
batch gathers, which is what makes the pipeline cheaper per write as writers multiply.

A write's result arrives within the pipeline's timeout: past it the result is TIMED_OUT and
the statement is abandoned, never cancelled (cancelling a driver mid-statement can poison its
connection); the primary's outbox entry covers the write, and replaying it later is idempotent.
One timer per pipeline enforces every deadline, not one per write.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from proxy.models import BY_NAME, ENTITIES, REFERENCED_BY
from proxy.stores.base import WAITS, ApplyOutcome, ApplyResult, Mutation, Store

MAX_BATCH = 64
TIMED_OUT = ApplyResult(ApplyOutcome.FAILED, "timed out")


class MirrorStore(Protocol):
    async def apply_inline(self, mutations: Sequence[Mutation]) -> list[ApplyResult]: ...


def deletes_a_parent(m: Mutation) -> bool:
    """A delete of a row others may reference: the mirror's foreign keys would cascade it."""
    return m.op == "delete" and bool(REFERENCED_BY[BY_NAME[m.entity].table])


async def apply_following(
    primary: Store, mirror: Store, mutations: Sequence[Mutation]
) -> list[ApplyResult]:
    """Apply writes the primary committed to the mirror so that it ends as the primary is,
    whichever order they arrive in.

    The mirror's own ON DELETE rules never act: the primary carried its cascade out as writes
    of its own (each child deleted or set to NULL has an entry), so a parent's delete applies
    only once no row on the mirror references it (`Store.delete_parents`), after the batch's
    other writes and deepest table first. Until then it waits: for the children's entries, for
    the moves of children the primary put elsewhere, or for the parent's re-creation (a newer
    version, which supersedes the delete). Left to the mirror's foreign keys, a child attached
    there to an old incarnation of a re-created parent went with the old delete while the
    primary kept it. Writes missing a parent are settled by `settle_missing_parents`."""
    batch = list(mutations)
    parents = sorted((i for i, m in enumerate(batch) if deletes_a_parent(m)),
                     key=lambda i: _CHILDREN_FIRST[batch[i].entity])
    others = [i for i, m in enumerate(batch) if not deletes_a_parent(m)]
    results = [WAITS] * len(batch)
    for chosen, apply in ((others, mirror.apply), (parents, mirror.delete_parents)):
        if chosen:
            for i, result in zip(chosen, await apply([batch[i] for i in chosen]), strict=True):
                results[i] = result
    return await settle_missing_parents(primary, mirror, batch, results)


#: ENTITIES lists parents before their children: deletes go the other way
_CHILDREN_FIRST = {e.name: -i for i, e in enumerate(ENTITIES)}


async def settle_missing_parents(
    primary: Store, mirror: Store, mutations: Sequence[Mutation],
    results: Sequence[ApplyResult],
) -> list[ApplyResult]:
    """Settle the mirror writes that failed because a row they reference is missing on the
    mirror, by what the primary holds now. No row there, or a newer version: superseded (the
    newer write, or the delete, reaches the mirror by its own entry; a cascade, by the
    mirror's own). The same version: its current image is applied instead, which differs from
    the write's when the delete of a parent set the reference to NULL (`ON DELETE SET NULL`
    changes a row without a write of its own). Still missing: the parent has not arrived yet,
    a failure the replay loop retries."""
    settled = list(results)
    for i, (m, result) in enumerate(zip(mutations, results, strict=True)):
        if not result.missing_parent or m.row is None:
            continue
        current = (await primary.get_versioned(BY_NAME[m.entity], [m.row_id])).get(m.row_id)
        if current is None or current[1] > m.version:
            settled[i] = ApplyResult(ApplyOutcome.SUPERSEDED)
        elif current[1] == m.version:
            image = Mutation(m.entity, m.op, m.row_id, m.version, current[0])
            settled[i] = (await mirror.apply([image]))[0]
    return settled


@dataclass(slots=True)
class _Item:
    mutation: Mutation
    result: asyncio.Future[ApplyResult]


class MirrorPipeline:
    """Batches the inline mirror writes to one store (see the module docstring)."""

    def __init__(self, store: MirrorStore, *, timeout_s: float = 2.0,
                 max_batch: int = MAX_BATCH) -> None:
        self._store = store
        self._timeout_s = timeout_s
        self._max_batch = max_batch
        self._deadlines: deque[tuple[float, asyncio.Future[ApplyResult]]] = deque()
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

    def submit(self, mutation: Mutation) -> asyncio.Future[ApplyResult]:
        """Queue the mutation of a committed primary write."""
        loop = asyncio.get_running_loop()
        item = _Item(mutation, loop.create_future())
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
            results = await self._store.apply_inline([i.mutation for i in batch])
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

