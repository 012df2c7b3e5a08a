"""Shadowed searches off the caller's path (laboratory's shape, made async).

The caller searches the primary, hands the results to `ShadowRunner.submit` and returns them at
once. `submit` samples and freezes the primary's results; at the loop's next turn a task (held
by a strong reference) starts that runs the shadow search under a timeout, compares, and
publishes: metrics, one structlog event per discrepancy, and a row in the `ShadowStore` (in
batches: a batch's first record waits `FLUSH_DELAY_S` for others, then a worker thread writes
them in one transaction).
Nothing that goes wrong in there reaches the caller: the shadow's exception is an `error`
comparison; a failure to read pending rows, compare, publish or store is logged and counted in
`cutover_shadow_internal_errors_total{stage}`.

Log events: `shadow.mismatch` (outcome mismatch), `shadow.failed` (error or timeout; only the
exception's type, since a message may quote the query), `shadow.internal_error`.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import inspect
import random
import secrets
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from collections.abc import Set as AbstractSet
from dataclasses import dataclass
from types import TracebackType
from typing import Any

import structlog

from metrics import BACKENDS, Metrics
from shadow.compare import (
    CompareContext,
    Comparison,
    Hit,
    Outcome,
    RankedHit,
    classify,
    freeze,
    snapshot,
)
from shadow.store import ComparisonRecord, ShadowStore

PendingRows = Callable[[], AbstractSet[uuid.UUID] | Awaitable[AbstractSet[uuid.UUID]]]
ShadowSearch = Callable[[], Awaitable[Sequence[RankedHit]]]

#: records waiting for the store beyond this are dropped (oldest first) rather than grow memory
MAX_BUFFERED_RECORDS = 10_000
#: how long the first record of a batch waits for others before the store is written
FLUSH_DELAY_S = 0.05
#: shadow searches in flight at once (beyond, searches are shed)
DEFAULT_MAX_CONCURRENCY = 8
#: how long a finished shadow waits for the primary searches in flight before it is compared
QUIET_WAIT_S = 0.05


def fingerprint(query: str, salt: bytes) -> str:
    """A short keyed hash of the query: equal for the same terms, useless without the salt."""
    normalised = " ".join(query.split()).casefold()
    return hmac.new(salt, normalised.encode("utf-8"), hashlib.sha256).hexdigest()[:16]


def other_backend(backend: str) -> str:
    """The store that is not `backend`."""
    if backend not in BACKENDS:
        raise ValueError(f"backend={backend!r} is not one of {BACKENDS}")
    return BACKENDS[1] if backend == BACKENDS[0] else BACKENDS[0]


@dataclass(frozen=True, slots=True)
class _Job:
    query: str
    user_id: str
    limit: int
    primary_backend: str
    shadow_backend: str
    primary: tuple[Hit, ...]
    run_shadow: ShadowSearch


class ShadowRunner:
    """Samples searches, runs the shadow side in bounded background tasks, publishes the result.

    Use as `async with ShadowRunner(...) as runner:` or call `aclose()`: closing waits for the
    tasks in flight (up to a timeout) and flushes the store.
    """

    def __init__(
        self,
        metrics: Metrics,
        *,
        sample_rate: float,
        timeout_s: float,
        max_concurrency: int = DEFAULT_MAX_CONCURRENCY,
        store: ShadowStore | None = None,
        pending_rows: PendingRows | None = None,
        logger: Any = None,
        salt: bytes | None = None,
        log_query_text: bool = False,
        store_query_text: bool = True,
        rng: random.Random | None = None,
        flush_delay_s: float = FLUSH_DELAY_S,
    ) -> None:
        if not 0.0 <= sample_rate <= 1.0:
            raise ValueError("sample_rate must be between 0.0 and 1.0")
        if timeout_s <= 0:
            raise ValueError("timeout_s must be positive")
        if max_concurrency < 1:
            raise ValueError("max_concurrency must be at least 1")
        self.metrics = metrics
        self.sample_rate = sample_rate
        self.timeout_s = timeout_s
        self.max_concurrency = max_concurrency
        self.store = store
        self.log_query_text = log_query_text
        self.store_query_text = store_query_text
        self.flush_delay_s = flush_delay_s
        self._pending_rows = pending_rows
        self._log = logger if logger is not None else structlog.get_logger("cutover.shadow")
        # the store's salt is shared by every process of the install, so fingerprints agree
        self._salt = salt if salt is not None else (
            store.salt if store is not None else secrets.token_bytes(16)
        )
        self._rng = rng if rng is not None else random.Random()
        self._tasks: set[asyncio.Task[None]] = set()
        self._queued: list[tuple[str, uuid.UUID | str, int, str, str, Sequence[RankedHit],
                                 ShadowSearch]] = []  # submitted, task not started yet
        self._inflight = 0
        self._buffer: list[ComparisonRecord] = []
        self._flush_task: asyncio.Task[None] | None = None
        self._closed = False
        # primary searches in flight (`primary_started`, `primary_finished`): comparing and
        # publishing wait for none, as the primary's thread needs the interpreter lock
        self._primaries = 0
        self._quiet: asyncio.Event | None = None

    # -- the caller's side -------------------------------------------------------------------

    @property
    def in_flight(self) -> int:
        """Shadow searches running now."""
        return self._inflight

    @property
    def closed(self) -> bool:
        return self._closed

    def primary_started(self) -> None:
        """A primary search began (the repository calls this and `primary_finished`)."""
        self._primaries += 1
        if self._quiet is not None:
            self._quiet.clear()

    def primary_finished(self) -> None:
        self._primaries -= 1
        if self._primaries <= 0 and self._quiet is not None:
            self._quiet.set()

    async def _after_primaries(self) -> None:
        """Wait (at most QUIET_WAIT_S) until no primary search runs.

        A comparison and its publishing are Python on the caller's event loop; a primary search
        running meanwhile needs the same interpreter lock for its own Python (decoding and
        ranking its rows) and waits for them. Off the caller's path, they can wait instead.

        First, two turns of the loop: a search that arrived while this one's answer did (the
        worker's answers come in batches, so several comparisons become ready at once) is a
        callback queued ahead of us, and its task says `primary_started` one turn later; without
        the turns, the whole batch was compared before it. 12 alternating pairs of
        bench/shadow_overhead.py runs: the p50 ratio lower in 9, medians 1.055 against 1.066."""
        for _ in range(2):
            await asyncio.sleep(0)
        if self._primaries <= 0:
            return
        if self._quiet is None:
            self._quiet = asyncio.Event()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(QUIET_WAIT_S):
                await self._quiet.wait()

    def fingerprint(self, query: str) -> str:
        """This install's fingerprint of `query` (what logs and the store show)."""
        return fingerprint(query, self._salt)

    def submit(
        self,
        query: str,
        *,
        user_id: uuid.UUID | str,
        limit: int,
        primary_backend: str,
        primary_results: Sequence[RankedHit],
        run_shadow: ShadowSearch,
    ) -> bool:
        """Maybe shadow this search; returns at once, True when a shadow was queued (its task
        starts at the loop's next turn, after the caller's search has returned).

        Never raises: the caller's search has already succeeded and must be returned as is.
        """
        try:
            return self._submit(query, user_id, limit, primary_backend, primary_results,
                                run_shadow)
        except Exception:
            self._internal_error("publish", "submit")
            return False

    def _submit(
        self,
        query: str,
        user_id: uuid.UUID | str,
        limit: int,
        primary_backend: str,
        primary_results: Sequence[RankedHit],
        run_shadow: ShadowSearch,
    ) -> bool:
        if self._closed or self.sample_rate <= 0.0 or self._rng.random() >= self.sample_rate:
            self.metrics.shadow_skipped()
            return False
        if self._inflight >= self.max_concurrency:
            self.metrics.shadow_skipped(shed=True)
            return False
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # called outside the event loop: nowhere to run a shadow
            self.metrics.shadow_skipped()
            return False
        shadow_backend = other_backend(primary_backend)
        # frozen now: the caller may mutate or reuse its list after we return. The rest (the
        # job, its task) waits for the loop's next turn: the caller's search returns first.
        # The caller's path: 9.6 -> 1.7-2.0 us with 20 results (bench/shadow_submit.py).
        self._queued.append((query, user_id, limit, primary_backend, shadow_backend,
                             freeze(primary_results), run_shadow))
        self._inflight += 1  # counted at once, so the bound holds; the gauge follows later
        if len(self._queued) == 1:
            loop.call_soon(self._start_queued)
        return True

    def _start_queued(self) -> None:
        """Start a task (held by a strong reference) for each job `submit` queued."""
        queued, self._queued = self._queued, []
        for query, user_id, limit, primary_backend, shadow_backend, primary, run_shadow in queued:
            try:
                job = _Job(
                    query=query,
                    user_id=str(user_id),
                    limit=limit,
                    primary_backend=primary_backend,
                    shadow_backend=shadow_backend,
                    primary=snapshot(primary),  # drops the texts the results carry
                    run_shadow=run_shadow,
                )
                task = asyncio.get_running_loop().create_task(
                    self._run(job), name="cutover-shadow"
                )
            except Exception:
                self._inflight -= 1
                self._internal_error("publish", "submit")
                continue
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    # -- the background side -----------------------------------------------------------------

    async def _run(self, job: _Job) -> None:
        try:
            try:
                self.metrics.set_shadow_inflight(self._inflight)
            except Exception:
                self._internal_error("publish", "inflight")
            pending = await self._pending()
            primary_ids = tuple(h.question_id for h in job.primary)
            shadow: Sequence[RankedHit] | None = None
            comparison: Comparison | None = None
            start = time.perf_counter()
            timer = asyncio.timeout(self.timeout_s)
            try:
                async with timer:
                    shadow = snapshot(await job.run_shadow())
            except TimeoutError:
                if timer.expired():
                    comparison = Comparison.failed(primary_ids, Outcome.TIMEOUT)
                else:  # the shadow's own TimeoutError (a driver's), not ours
                    comparison = Comparison.failed(primary_ids, Outcome.ERROR, "TimeoutError")
            except Exception as exc:
                comparison = Comparison.failed(primary_ids, Outcome.ERROR, type(exc).__name__)
            shadow_s = time.perf_counter() - start
            try:
                self.metrics.observe_search(job.shadow_backend, "shadow", shadow_s)
            except Exception:
                self._internal_error("publish", "observe_search")
            await self._after_primaries()
            if comparison is None:
                assert shadow is not None
                # read pending rows again: a write that landed while the shadow ran explains it too
                pending = pending | await self._pending()
                try:
                    comparison = classify(
                        job.primary, shadow, CompareContext(job.query, job.limit, pending)
                    )
                except Exception:
                    self._internal_error("compare", "compare")
                    return
            try:
                self._publish(job, comparison, shadow_s)
            except Exception:  # each step guards itself; this catches what falls between them
                self._internal_error("publish", "publish")
        finally:
            self._inflight -= 1
            try:
                self.metrics.set_shadow_inflight(self._inflight)
            except Exception:
                self._internal_error("publish", "inflight")

    async def _pending(self) -> frozenset[uuid.UUID]:
        if self._pending_rows is None:
            return frozenset()
        try:
            value = self._pending_rows()
            if inspect.isawaitable(value):  # only an awaitable can be timed out
                async with asyncio.timeout(self.timeout_s):
                    value = await value
            return value if isinstance(value, frozenset) else frozenset(value)
        except Exception:
            # unknown pending rows only cost a clearer reason, never the comparison
            self._internal_error("pending", "pending_rows")
            return frozenset()

    def _publish(self, job: _Job, c: Comparison, shadow_s: float) -> None:
        reason = None if c.reason is None else c.reason.value
        try:
            self.metrics.observe_comparison(
                c.outcome.value, reason, jaccard=c.jaccard, rbo=c.agreement, top1=c.top1
            )
        except Exception:
            self._internal_error("publish", "metrics")
        fp = self.fingerprint(job.query)
        if c.outcome is not Outcome.MATCH:
            try:
                self._log_discrepancy(job, c, fp)
            except Exception:
                self._internal_error("publish", "log")
        if self.store is not None:
            try:
                self._enqueue(ComparisonRecord(
                    ts=time.time(), comparison=c, fingerprint=fp,
                    query=job.query if self.store_query_text else None, user_id=job.user_id,
                    limit=job.limit, primary_backend=job.primary_backend,
                    shadow_backend=job.shadow_backend, shadow_ms=shadow_s * 1000.0,
                ))
            except Exception:
                self._internal_error("store", "enqueue")

    def _log_discrepancy(self, job: _Job, c: Comparison, fp: str) -> None:
        fields: dict[str, Any] = {
            "fingerprint": fp,
            "outcome": c.outcome.value,
            "reason": None if c.reason is None else c.reason.value,
            "primary_backend": job.primary_backend,
            "shadow_backend": job.shadow_backend,
            "limit": job.limit,
            "primary_ids": [str(x) for x in c.primary_ids],
        }
        if self.log_query_text:
            fields["query"] = job.query
        if c.outcome is Outcome.MISMATCH:
            # the ids found on one side only follow from the two lists: logging them too would
            # double the line, which the caller's process renders (the store keeps both lists)
            fields.update(
                shadow_ids=[str(x) for x in c.shadow_ids],
                jaccard=c.jaccard, rbo=c.rbo, top1=c.top1, kendall_tau=c.kendall_tau,
                hints=sorted(c.hints),
            )
            self._log.warning("shadow.mismatch", **fields)
        else:
            self._log.warning("shadow.failed", error=c.detail or None, **fields)

    def _internal_error(self, stage: str, what: str) -> None:
        # the last line of defence: even a broken logger or metric must not escape
        with contextlib.suppress(Exception):
            self.metrics.shadow_internal_error(stage)
        with contextlib.suppress(Exception):
            self._log.exception("shadow.internal_error", stage=stage, what=what)

    # -- the store ---------------------------------------------------------------------------

    def _enqueue(self, record: ComparisonRecord) -> None:
        self._buffer.append(record)
        if len(self._buffer) > MAX_BUFFERED_RECORDS:
            del self._buffer[: len(self._buffer) - MAX_BUFFERED_RECORDS]
        if self._flush_task is None or self._flush_task.done():
            # one flusher at a time; records arriving meanwhile form the next batch
            loop = asyncio.get_running_loop()
            task = loop.create_task(self._flush(), name="cutover-shadow-store")
            self._flush_task = task
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _flush(self) -> None:
        store = self.store
        if not self._closed and self.flush_delay_s > 0:
            # let a batch form: one thread hop and one transaction for many comparisons
            await asyncio.sleep(self.flush_delay_s)
            await self._after_primaries()  # the writing thread wants the lock too
        while self._buffer and store is not None:
            batch, self._buffer = self._buffer, []
            try:
                await asyncio.to_thread(store.add, batch)
            except Exception:
                self._internal_error("store", "add")

    # -- closing -----------------------------------------------------------------------------

    async def drain(self, timeout_s: float = 5.0) -> int:
        """Wait for the tasks in flight (and the store's flush); returns how many still run."""
        deadline = time.monotonic() + timeout_s
        self._start_queued()  # submitted in this turn of the loop: in flight too
        while self._tasks:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            await asyncio.wait(set(self._tasks), timeout=remaining)
        return len(self._tasks)

    async def aclose(self, timeout_s: float = 5.0) -> None:
        """Stop sampling, wait up to `timeout_s` for tasks in flight, then cancel the rest."""
        self._closed = True
        if await self.drain(timeout_s):
            leftovers = set(self._tasks)
            for task in leftovers:
                task.cancel()
            await asyncio.gather(*leftovers, return_exceptions=True)
        # a cancelled task may have left records behind: one last flush, bounded
        if self._buffer and self.store is not None:
            try:
                await asyncio.wait_for(self._flush(), timeout=max(timeout_s, 1.0))
            except Exception:
                self._internal_error("store", "final_flush")

    async def __aenter__(self) -> ShadowRunner:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()
