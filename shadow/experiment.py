"""Shadowed searches off the caller's path (laboratory's shape, made async).

The caller searches the primary, hands the results to `ShadowRunner.submit` and returns them at
once. `submit` samples and freezes the primary's results; the rest waits for the loop's next
turn. Then the shadow search runs under a timeout, is compared, and published: metrics here,
and through a `Recorder` one structlog event per discrepancy and a row in the `ShadowStore`.

Where the comparison is made depends on the runner's `remote`:

- None (the inline worker): here. A task (held by a strong reference) runs the caller's
  `run_shadow`, compares and records in this process.
- a `RemoteComparer` (the worker's child process, `shadow.worker`): there. The child searches,
  compares and records; only the comparison's figures come back, for the metrics. Comparing
  (73-81 us a mismatch) and its log line (67 us) then cost the caller's process nothing: with
  both still here, they were about half of its added CPU per shadowed search.
  No task either: the runner hands the request over and a callback takes the answer (one timer
  for all gives up on a shadow not answered `REMOTE_GRACE_S` past its timeout). A task, its
  future and its timer per shadow had cost the caller's thread 117-152 us a shadow, against
  98-122 us (bench/shadow_submit.py, four runs each, alternating); in bench/shadow_overhead.py
  the caller's process's added CPU per search went from 0.14-0.21 to 0.12-0.15 ms (six
  alternating pairs), though the primary's p50 ratio showed no difference in them.
  Failures only this process sees (the child gone, busy or silent) are recorded here.

Nothing that goes wrong in there reaches the caller: the shadow's exception is an `error`
comparison; a failure to read pending rows, compare, publish or store is logged and counted in
`cutover_shadow_internal_errors_total{stage}`.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import functools
import inspect
import itertools
import random
import secrets
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from collections.abc import Set as AbstractSet
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Protocol

import structlog

from config.settings import other_backend
from metrics import Metrics
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
from shadow.recorder import FLUSH_DELAY_S, Compared, Recorder, SearchContext
from shadow.store import ShadowStore

PendingRows = Callable[[], AbstractSet[uuid.UUID] | Awaitable[AbstractSet[uuid.UUID]]]
ShadowSearch = Callable[[], Awaitable[Sequence[RankedHit]]]

#: shadow searches in flight at once (beyond, searches are shed)
DEFAULT_MAX_CONCURRENCY = 8
#: how long a finished shadow waits for the primary searches in flight before it is compared
QUIET_WAIT_S = 0.05
#: how much longer than the runner's timeout a remote comparer may take to answer before the
#: runner gives up on it and records a timeout itself. The worker's child records nothing for a
#: request it finishes more than `shadow.worker.LATE_S` (less than this) past its deadline, so
#: one comparison is recorded once, by one side; the margin covers both directions' batching.
REMOTE_GRACE_S = 1.0


class RemoteComparer(Protocol):
    """Runs, compares and records the shadow search elsewhere (`shadow.worker.SearchWorker`)."""

    def send_compare(
        self, ctx: SearchContext, primary: tuple[Hit, ...], pending: frozenset[uuid.UUID], *,
        timeout_s: float, done: Callable[[Compared | BaseException | None], None],
    ) -> None:
        """Queue the comparison and return; call `done` once, on the loop, with the
        comparison's figures once it is recorded there, None when comparing failed there
        (counted there, nothing recorded), or the exception when nothing was recorded there
        (TimeoutError: the answer came too late to be). May raise at once instead."""
        ...


@dataclass(frozen=True, slots=True)
class _Job:
    context: SearchContext
    primary: tuple[Hit, ...]
    run_shadow: ShadowSearch | None


@dataclass(frozen=True, slots=True)
class _Sent:
    """A job the remote comparer has, not answered yet."""

    job: _Job
    started: float  # time.perf_counter() when it was sent


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
        remote: RemoteComparer | None = None,
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
        #: compares and records elsewhere when set (see the module docstring)
        self.remote = remote
        self._pending_rows = pending_rows
        self._log = logger if logger is not None else structlog.get_logger("cutover.shadow")
        # the store's salt is shared by every process of the install, so fingerprints agree
        self.recorder = Recorder(
            logger=self._log,
            salt=salt if salt is not None else (
                store.salt if store is not None else secrets.token_bytes(16)
            ),
            store=store, log_query_text=log_query_text, store_query_text=store_query_text,
            flush_delay_s=flush_delay_s,
            on_error=lambda stage, what: self.metrics.shadow_internal_error(stage),
            before_flush=self._after_primaries,  # the writing thread wants the lock too
        )
        self._rng = rng if rng is not None else random.Random()
        self._tasks: set[asyncio.Task[None]] = set()
        self._queued: list[tuple[str, uuid.UUID | str, int, str, str, Sequence[RankedHit],
                                 ShadowSearch | None]] = []  # submitted, task not started yet
        self._inflight = 0
        self._idle: asyncio.Event | None = None  # set when nothing is in flight (`drain`)
        # jobs sent to the remote comparer: by token, and their give-up times in sending order
        self._sent: dict[int, _Sent] = {}
        self._give_ups: collections.deque[tuple[float, int]] = collections.deque()
        self._give_up_timer: asyncio.TimerHandle | None = None
        self._tokens = itertools.count()
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
        return self.recorder.fingerprint(query)

    def submit(
        self,
        query: str,
        *,
        user_id: uuid.UUID | str,
        limit: int,
        primary_backend: str,
        primary_results: Sequence[RankedHit],
        run_shadow: ShadowSearch | None = None,
    ) -> bool:
        """Maybe shadow this search; returns at once, True when a shadow was queued (its task
        starts at the loop's next turn, after the caller's search has returned).

        `run_shadow` runs the shadow search in this process; it is not called (and may be
        None) when the runner has a `remote` comparer, which searches itself.

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
        run_shadow: ShadowSearch | None,
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
        """Send each job `submit` queued to the remote comparer, or start a task (held by a
        strong reference) that runs it here."""
        queued, self._queued = self._queued, []
        for query, user_id, limit, primary_backend, shadow_backend, primary, run_shadow in queued:
            try:
                job = _Job(
                    context=SearchContext(query, str(user_id), limit, primary_backend,
                                          shadow_backend),
                    primary=snapshot(primary),  # drops the texts the results carry
                    run_shadow=run_shadow,
                )
                if self.remote is not None:
                    self._send(self.remote, job)  # never raises
                    continue
                task = asyncio.get_running_loop().create_task(
                    self._run(job), name="cutover-shadow"
                )
            except Exception:
                self._one_done()
                self._internal_error("publish", "submit")
                continue
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    # -- the background side -----------------------------------------------------------------

    async def _run(self, job: _Job) -> None:
        try:
            self._publish_inflight()
            await self._compare_here(job, await self._pending())
        finally:
            self._one_done()

    def _one_done(self) -> None:
        """A job left the runner (finished, failed, given up on or never started)."""
        self._inflight -= 1
        self._publish_inflight()
        if self._inflight <= 0 and self._idle is not None:
            self._idle.set()

    def _publish_inflight(self) -> None:
        try:
            self.metrics.set_shadow_inflight(self._inflight)
        except Exception:
            self._internal_error("publish", "inflight")

    async def _compare_here(self, job: _Job, pending: frozenset[uuid.UUID]) -> None:
        primary_ids = tuple(h.question_id for h in job.primary)
        shadow: Sequence[RankedHit] | None = None
        comparison: Comparison | None = None
        start = time.perf_counter()
        timer = asyncio.timeout(self.timeout_s)
        try:
            if job.run_shadow is None:
                raise ValueError("no run_shadow for a runner without a remote comparer")
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
        await self._after_primaries()
        if comparison is None:
            assert shadow is not None
            # read pending rows again: a write that landed while the shadow ran explains it too
            pending = pending | await self._pending()
            try:
                comparison = classify(
                    job.primary, shadow, CompareContext(job.context.query, job.context.limit,
                                                        pending)
                )
            except Exception:
                self._observe_search(job, shadow_s)
                self._internal_error("compare", "compare")
                return
        self._finish(job, comparison, shadow_s)

    # -- a remote comparer: no task, a callback --

    def _send(self, remote: RemoteComparer, job: _Job) -> None:
        """Hand `job` to the remote comparer; its answer or the give-up timer finishes it."""
        self._publish_inflight()
        value = self._read_pending()
        if inspect.isawaitable(value):  # an async source (the repository's is not): a task
            task = asyncio.get_running_loop().create_task(
                self._send_when_read(remote, job, value), name="cutover-shadow"
            )
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
            return
        self._send_now(remote, job, value)

    async def _send_when_read(
        self, remote: RemoteComparer, job: _Job, value: Awaitable[AbstractSet[uuid.UUID]]
    ) -> None:
        try:
            pending = await self._await_pending(value)
        except BaseException:  # cancelled at close: never sent
            self._one_done()
            raise
        self._send_now(remote, job, pending)

    def _send_now(
        self, remote: RemoteComparer, job: _Job, pending: frozenset[uuid.UUID]
    ) -> None:
        loop = asyncio.get_running_loop()
        token = next(self._tokens)
        self._sent[token] = _Sent(job, time.perf_counter())
        self._give_ups.append((loop.time() + self.timeout_s + REMOTE_GRACE_S, token))
        if self._give_up_timer is None:
            self._give_up_timer = loop.call_at(self._give_ups[0][0], self._give_up_overdue)
        try:
            remote.send_compare(job.context, job.primary, pending, timeout_s=self.timeout_s,
                                done=functools.partial(self._answered, token))
        except Exception as exc:
            self._answered(token, exc)

    def _answered(self, token: int, answer: Compared | BaseException | None) -> None:
        """The remote comparer's answer for `token` (or the give-up's TimeoutError); the
        first one counts. Never raises: it runs in the comparer's callbacks."""
        sent = self._sent.pop(token, None)
        if sent is None:  # given up on, or abandoned at close
            return
        try:
            if isinstance(answer, BaseException):  # nothing was recorded there: record it here
                primary_ids = tuple(h.question_id for h in sent.job.primary)
                if isinstance(answer, TimeoutError):
                    comparison = Comparison.failed(primary_ids, Outcome.TIMEOUT)
                else:
                    comparison = Comparison.failed(primary_ids, Outcome.ERROR,
                                                   type(answer).__name__)
                self._finish(sent.job, comparison, time.perf_counter() - sent.started)
            elif answer is not None:
                self._publish(sent.job, answer)
        except Exception:
            self._internal_error("publish", "remote_answer")
        finally:
            self._one_done()

    def _give_up_overdue(self) -> None:
        """Record a timeout for each sent job past its give-up time, and set the timer for
        the next one still waiting (answered ones are dropped from the front)."""
        self._give_up_timer = None
        loop = asyncio.get_running_loop()
        now = loop.time()
        while self._give_ups and (self._give_ups[0][0] <= now
                                  or self._give_ups[0][1] not in self._sent):
            _, token = self._give_ups.popleft()
            if token in self._sent:
                self._answered(token, TimeoutError("no answer from the remote comparer"))
        if self._give_ups:
            self._give_up_timer = loop.call_at(self._give_ups[0][0], self._give_up_overdue)

    # -- pending rows --

    async def _pending(self) -> frozenset[uuid.UUID]:
        value = self._read_pending()
        return await self._await_pending(value) if inspect.isawaitable(value) else value

    def _read_pending(self) -> frozenset[uuid.UUID] | Awaitable[AbstractSet[uuid.UUID]]:
        if self._pending_rows is None:
            return frozenset()
        try:
            value = self._pending_rows()
            if inspect.isawaitable(value):
                return value
            return value if isinstance(value, frozenset) else frozenset(value)
        except Exception:
            # unknown pending rows only cost a clearer reason, never the comparison
            self._internal_error("pending", "pending_rows")
            return frozenset()

    async def _await_pending(
        self, value: Awaitable[AbstractSet[uuid.UUID]]
    ) -> frozenset[uuid.UUID]:
        try:
            async with asyncio.timeout(self.timeout_s):  # only an awaitable can be timed out
                rows = await value
            return rows if isinstance(rows, frozenset) else frozenset(rows)
        except Exception:
            self._internal_error("pending", "pending_rows")
            return frozenset()

    def _observe_search(self, job: _Job, shadow_s: float | None) -> None:
        if shadow_s is None:
            return
        try:
            self.metrics.observe_search(job.context.shadow_backend, "shadow", shadow_s)
        except Exception:
            self._internal_error("publish", "observe_search")

    def _finish(self, job: _Job, comparison: Comparison, shadow_s: float) -> None:
        """Count and record a comparison made here."""
        self._publish(job, Compared.of(comparison, shadow_s))
        self.recorder.record(job.context, comparison, shadow_s)

    def _publish(self, job: _Job, c: Compared) -> None:
        """The metrics of a comparison (wherever it was made and recorded)."""
        self._observe_search(job, c.shadow_s)
        try:
            self.metrics.observe_comparison(
                c.outcome, c.reason, jaccard=c.jaccard, rbo=c.agreement, top1=c.top1
            )
        except Exception:
            self._internal_error("publish", "metrics")

    def _internal_error(self, stage: str, what: str) -> None:
        self.recorder.internal_error(stage, what)

    # -- closing -----------------------------------------------------------------------------

    async def drain(self, timeout_s: float = 5.0) -> int:
        """Wait for the shadows in flight (and the store's flush); returns how many still run."""
        deadline = time.monotonic() + timeout_s
        self._start_queued()  # submitted in this turn of the loop: in flight too
        while self._inflight > 0:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            if self._idle is None:
                self._idle = asyncio.Event()
            self._idle.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(remaining):
                    await self._idle.wait()
        if self._inflight <= 0:
            await self.recorder.drain(max(0.0, deadline - time.monotonic()))
        return max(self._inflight, 0)

    async def aclose(self, timeout_s: float = 5.0) -> None:
        """Stop sampling, wait up to `timeout_s` for shadows in flight, then cancel the tasks
        and abandon what the remote comparer still has (its answers are then ignored)."""
        self._closed = True
        if await self.drain(timeout_s):
            leftovers = set(self._tasks)
            for task in leftovers:
                task.cancel()
            await asyncio.gather(*leftovers, return_exceptions=True)
            abandoned, self._sent = len(self._sent), {}
            for _ in range(abandoned):
                self._one_done()
        self._give_ups.clear()
        if self._give_up_timer is not None:
            self._give_up_timer.cancel()
            self._give_up_timer = None
        # a cancelled task may have left records behind: one last flush, bounded
        await self.recorder.aclose(timeout_s)

    async def __aenter__(self) -> ShadowRunner:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()
