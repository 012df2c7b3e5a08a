"""Shadow searches in a child process, so the caller's process only sends and receives a little.

`SearchWorker` spawns one child (the "spawn" start method: no copy of the caller's threads, locks
or open connections) with its own event loop and its own searchers, which it opens with the
`OpenSearchers` it is handed (`proxy.connect.SearchStores`: a `SQLiteStore` and a
`PostgresStore`; this package imports nothing of `proxy`). The parent sends `Request`s down a
socket pair; the child (`_Child`) runs `searcher.search(..., highlights=False)` for them,
`concurrency` at a time (one by default), and answers (the messages are typed, below):

- a search: `Found` (ids and match kinds) or `Failed` (the error's text);
- a compare (what `ShadowRunner` uses, as its `remote`): the child also compares the shadow's
  list with the primary's (sent as ids and match kinds) and records the comparison through its
  own `shadow.recorder.Recorder` (`Recording` says how: the shadow store's file, the salt, the
  caller's structlog configuration), then answers only the figures the caller's metrics need
  (`Compared`). Rows with a mirror write pending travel with a batch when they changed; the
  child compares against those known when the request arrived and when its search ended, as
  the inline runner reads them before and after (`CompareDone`, or `Late`). Its own failures
  travel as `InternalError(stage)`, which `on_internal_error` counts.

Both directions travel in batches: a batch leaves `batch_delay_s` after its first message, so each
side wakes the other once per batch rather than once per search (why: `BATCH_DELAY_S`). A request
whose deadline (the caller's `timeout_s` after it was sent, on the machine's monotonic clock)
passes while it waits is dropped, and a search still running at it is cancelled: nobody waits
for its answer any more (a `compare` is then recorded as a timeout; one the child finishes more
than `LATE_S` past its deadline is not recorded there but answered "late", and the caller's
process records it). Comparison reads ids and match kinds only, so that is all that crosses
(a question's text can be 100,000 characters). The parent reads answers from a
reader registered with `loop.add_reader` on the socket (no thread, no polling), so a child that
dies is noticed at once, busy or idle.

Failures raise `ShadowWorkerError` from `search` and `compare` (the runner records an `error`
comparison):
the child died (every request waiting fails with `WorkerUnavailable`, and the next request
starts a new child, at most `MAX_RESTARTS` per `RESTART_WINDOW_S`), too many requests are
unanswered (`WorkerBusy`, so a stuck child can never fill the socket and block the caller's
loop on a send), or the store raised in the child (`WorkerSearchFailed`, naming the type).

Log events: `shadow_worker.started`, `shadow_worker.died`, `shadow_worker.restart_refused`,
`shadow_worker.killed` (did not stop within the close timeout).

This module imports only `shadow`'s own modules (the comparison types, the recorder's, the
store's caps); what the child searches comes in through `OpenSearchers`.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import itertools
import multiprocessing
import os
import pickle
import signal
import sys
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from types import TracebackType
from typing import Any, NamedTuple, Protocol

import structlog

from shadow.compare import CompareContext, Comparison, Hit, Outcome, RankedHit, classify, snapshot
from shadow.recorder import Compared, Recorder, SearchContext
from shadow.store import DEFAULT_MAX_COMPARISONS, DEFAULT_MAX_MISMATCHES, ShadowStore

#: child restarts allowed within RESTART_WINDOW_S; beyond, requests fail until the window frees
MAX_RESTARTS = 5
RESTART_WINDOW_S = 60.0
#: requests sent and not answered (abandoned ones included) before new ones are refused: a few
#: hundred bytes each, far below a socket buffer, so a send never blocks the caller's loop
MAX_OUTSTANDING = 256
#: how much the child lowers its priority where the idle scheduling class is not available
#: (see `_child_main`)
NICENESS = 5
#: shadow searches the child runs at once. One: a shadow is background work, and one search at
#: a time keeps its share of the machine (the child and the server's work for it) to about one
#: core however the requests bunch up. With the child free to run all its requests at once,
#: the primary search's p50 at 210 searches/s with every search shadowed rose 11-43 % (median
#: 18 %, five runs); one at a time, 0-14 % (median 5 %, eight runs; bench/shadow_overhead.py
#: --qps 210). The cost is queueing: more shadows are shed at the runner's bound (5-7 % of them
#: there, against 1-3 %).
CONCURRENCY = 1
#: how long a request (in the parent) or an answer (in the child) waits for others to travel
#: with it. Sent one by one, every shadow woke the child once and the caller's process once
#: more, mostly from the other CPU, and on a virtual machine a wake-up across CPUs is dear
#: (bench/wakeup.py: 81-179 us a round between two threads on two CPUs, 18-42 us on one). In
#: batches, with every search shadowed (bench/shadow_overhead.py, alternating with the code
#: before): the primary's p50 ratio at 230 searches/s, median 1.037 against 1.093 (five pairs);
#: at the default load 1.042 against 1.095; the machine's inter-processor interrupts added per
#: search 1.37 against 2.16, its CPU per search 2.9-3.2 ms against 3.1-3.7 ms. That was with
#: 20 ms; 100 ms, with the shadows still in flight bounded at 128 rather than 32, at 303
#: searches/s: median 1.033 against 1.057 (six alternating pairs, lower in five). The trips
#: themselves are most of what shadowing costs the caller here (bench/shadow_overhead.py
#: --stub echo: the child answering at once, without searching, cost 1.029 of the ratio to the
#: full shadows' 1.051). A shadow's answer comes up to twice this later, which nobody waits for;
#: the wait in a batch counts against its timeout, so a worker's delay is at most a tenth of
#: that (`default_batch_delay`).
BATCH_DELAY_S = 0.1
#: the bound a `ShadowRunner` feeding this worker should use (its `max_concurrency`). The
#: runner counts a shadow from its submission to its comparison, which batching lengthens by up
#: to 2 x BATCH_DELAY_S (at 300 searches/s about 60 are in flight), and the child runs
#: CONCURRENCY at a time whatever the bound: here the bound limits the queue, not the searches
#: running. With the runner's default of 8 the 20 ms batches of before alone shed a quarter of
#: the shadows at 250 searches/s. Below MAX_OUTSTANDING, so the runner sheds before the worker
#: refuses.
SHADOWS_IN_FLIGHT = 128


def default_batch_delay(timeout_s: float | None) -> float:
    """BATCH_DELAY_S, or a tenth of the caller's timeout when that is less: a request's
    deadline runs from when it is queued, so its wait in a batch is part of its time."""
    return BATCH_DELAY_S if timeout_s is None else min(BATCH_DELAY_S, timeout_s / 10)

#: a comparison the child finishes this long past its deadline is not recorded there: it
#: answers "late" and the caller's process records a timeout (its runner gives up at
#: `shadow.experiment.REMOTE_GRACE_S`, later than this, so one side records each comparison)
LATE_S = 0.5

_CLOSE = b""  # the message that asks the child to finish and exit


# -- what the child searches -------------------------------------------------------------------

class Searcher(Protocol):
    """One store as the child uses it (`proxy.stores`' stores satisfy it)."""

    async def search(self, query: str, user_id: uuid.UUID, limit: int, *,
                     highlights: bool = True) -> Sequence[RankedHit]: ...

    async def ping(self) -> None: ...

    async def close(self) -> None: ...


class OpenSearchers(Protocol):
    """Opens, in the child, a searcher for each backend, for `concurrency` searches at once.

    Crosses to the child by pickle: a module-level class or function (`proxy.connect
    .SearchStores`)."""

    def __call__(self, concurrency: int) -> Mapping[str, Searcher]: ...


# -- the protocol: typed messages, pickled a batch at a time -----------------------------------
# NamedTuples: typed, and they pickle as a tuple and a class reference (sent once a batch).

class CompareWith(NamedTuple):
    """What a compare request carries beyond its search: the primary's answer."""

    primary_backend: str
    #: the primary's ids as ints (a plain attribute: `.bytes` is computed on each read) and
    #: match kinds
    primary: list[tuple[int, str]]


class Request(NamedTuple):
    """One search the parent asks of the child (with `compare`, compared and recorded there)."""

    rid: int
    backend: str
    query: str
    user_id: str
    limit: int
    #: on `time.monotonic()` (CLOCK_MONOTONIC on Linux: the same clock in both processes)
    deadline: float | None
    compare: CompareWith | None = None


class Batch(NamedTuple):
    """The parent's requests that travel together."""

    #: rows with a mirror write pending (16 bytes each) when the set changed, else None
    pending: bytes | None
    requests: list[Request]


class Ready(NamedTuple):
    """The child serves requests."""


class InternalError(NamedTuple):
    """The child's own work failed at `stage` (compare, publish, store)."""

    stage: str


class Found(NamedTuple):
    """A search's ids (as bytes) and match kinds."""

    rid: int
    hits: list[tuple[bytes, str]]


class Failed(NamedTuple):
    """A search raised in the child: "Type: message"."""

    rid: int
    error: str


class CompareDone(NamedTuple):
    """A comparison recorded in the child (its figures), or None when comparing failed."""

    rid: int
    figures: Compared | None


class Late(NamedTuple):
    """A comparison finished past `LATE_S` after its deadline: not recorded in the child."""

    rid: int


Answer = Ready | InternalError | Found | Failed | CompareDone | Late


@dataclass(frozen=True)
class Recording:
    """How the child records the comparisons it makes (what `shadow.recorder.Recorder` takes).

    `log_config` is the caller's structlog configuration as far as it can travel to another
    process (`portable_log_config`), so the child's events read like the caller's."""

    salt: bytes
    store_path: str | None = None
    max_comparisons: int = DEFAULT_MAX_COMPARISONS
    max_mismatches: int = DEFAULT_MAX_MISMATCHES
    log_query_text: bool = False
    store_query_text: bool = True
    log_config: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def like(cls, recorder: Recorder) -> Recording:
        """The child records as `recorder` does (its salt, store file and caps, options), and
        logs in this process's structlog configuration."""
        store = recorder.store
        return cls(
            salt=recorder.salt,
            store_path=None if store is None else str(store.path),
            max_comparisons=DEFAULT_MAX_COMPARISONS if store is None else store.max_comparisons,
            max_mismatches=DEFAULT_MAX_MISMATCHES if store is None else store.max_mismatches,
            log_query_text=recorder.log_query_text,
            store_query_text=recorder.store_query_text,
            log_config=portable_log_config(),
        )


def portable_log_config() -> dict[str, Any]:
    """This process's structlog configuration, minus what cannot be pickled to a child.

    A print logger on stderr or stdout travels as the stream's name; any other logger factory
    does not (the child then prints to its stderr, which is the caller's)."""
    portable: dict[str, Any] = {}
    for key, value in structlog.get_config().items():
        if key == "logger_factory":
            target = getattr(value, "_file", None)
            if isinstance(value, structlog.PrintLoggerFactory) and target is sys.stdout:
                portable[key] = "stdout"
            continue
        try:
            pickle.dumps(value)
        except Exception:
            continue
        portable[key] = value
    return portable


class ShadowWorkerError(Exception):
    """A shadow search the worker could not answer."""


class WorkerUnavailable(ShadowWorkerError):
    """No child to answer: it died, is closed, or restarted too often."""


class WorkerBusy(ShadowWorkerError):
    """Too many requests are waiting for the child."""


class WorkerSearchFailed(ShadowWorkerError):
    """The store raised in the child (the message starts with the exception's type)."""


class SearchWorker:
    """One child process that runs shadow searches; see the module docstring.

    `await start()` (or `async with`), then `await search(...)`; `await aclose()` stops the
    child (asks, waits `close_timeout_s`, then kills it). Bound to the loop it was started on.
    """

    def __init__(
        self, searchers: OpenSearchers, *, niceness: int = NICENESS,
        concurrency: int = CONCURRENCY, timeout_s: float | None = None,
        max_outstanding: int = MAX_OUTSTANDING, max_restarts: int = MAX_RESTARTS,
        restart_window_s: float = RESTART_WINDOW_S, close_timeout_s: float = 5.0,
        batch_delay_s: float | None = None, logger: Any = None,
        recording: Recording | None = None,
        on_internal_error: Callable[[str], None] | None = None,
    ) -> None:
        if concurrency < 1:
            raise ValueError("concurrency must be at least 1")
        if batch_delay_s is None:
            batch_delay_s = default_batch_delay(timeout_s)
        if batch_delay_s < 0:
            raise ValueError("batch_delay_s must not be negative")
        self.searchers = searchers
        self.niceness = niceness
        self.concurrency = concurrency
        self.timeout_s = timeout_s  # the caller's; the child stops a request's work after it
        self.max_outstanding = max_outstanding
        self.max_restarts = max_restarts
        self.restart_window_s = restart_window_s
        self.close_timeout_s = close_timeout_s
        self.batch_delay_s = batch_delay_s
        #: how the child records comparisons (`compare` needs it)
        self.recording = recording
        #: counts a failure of the child's own work (its stage: compare, publish, store)
        self.on_internal_error = on_internal_error
        self._log = logger if logger is not None else structlog.get_logger("cutover.shadow")
        self._ctx = multiprocessing.get_context("spawn")
        self._loop: asyncio.AbstractEventLoop | None = None
        self._process: Any = None  # the spawn context's Process
        self._conn: Connection | None = None
        self._ids = itertools.count(1)
        # what settles each request sent and not answered: with its result, or the exception
        # to raise (never a result of a request)
        self._waiting: dict[int, Callable[[Any], None]] = {}
        self._unanswered: set[int] = set()  # sent to the live child, not answered yet
        self._outgoing: list[Request] = []  # requests of the batch not sent yet
        # rows with a mirror write pending: the newest set `compare` was given, and the last
        # one sent to the child (a batch carries the set only when it changed)
        self._pending: frozenset[uuid.UUID] = frozenset()
        self._pending_sent: frozenset[uuid.UUID] = frozenset()
        self._send_handle: asyncio.TimerHandle | None = None
        self._starts: collections.deque[float] = collections.deque()
        self._refused_logged = False
        self._ready: asyncio.Future[None] | None = None
        self._closed = False
        self.restarts = 0

    @property
    def pid(self) -> int | None:
        """The live child's process id (None when there is none)."""
        return self._process.pid if self._conn is not None and self._process else None

    @property
    def closed(self) -> bool:
        return self._closed

    # -- lifecycle -----------------------------------------------------------------------------

    async def start(self, ready_timeout_s: float = 30.0) -> None:
        """Start the child and wait (up to `ready_timeout_s`) until it serves requests.

        A child slow to start is not an error: requests queue until it reads them.
        """
        self._loop = asyncio.get_running_loop()
        try:
            self._spawn()
        except Exception as exc:  # searches will try again (bounded) and fail until one works
            self._log.error("shadow_worker.start_failed", reason=repr(exc)[:300])
            return
        if self._ready is not None:
            # never raises: a child that dies first cancels `_ready`, which ends the wait too
            await asyncio.wait({self._ready}, timeout=ready_timeout_s)

    def _spawn(self) -> None:
        assert self._loop is not None
        old = self._process
        if old is not None:  # a child whose pipe closed: make sure it is gone, and reap it
            with contextlib.suppress(Exception):
                if old.exitcode is None:
                    old.kill()
                    old.join(1.0)
                old.close()
            self._process = None
        ours, theirs = self._ctx.Pipe(duplex=True)
        process = self._ctx.Process(
            target=_child_main,
            args=(theirs, self.searchers, self.niceness, self.concurrency,
                  self.batch_delay_s, self.recording),
            name="cutover-shadow-worker", daemon=True,
        )
        try:
            process.start()
        finally:
            theirs.close()  # the child holds the only other end: its exit is our EOF
        self._process, self._conn = process, ours
        self._pending_sent = frozenset()  # a new child knows of none
        self._ready = self._loop.create_future()
        self._starts.append(time.monotonic())
        self._refused_logged = False
        self._loop.add_reader(ours.fileno(), self._on_readable)
        self._log.info("shadow_worker.started", pid=process.pid, restarts=self.restarts)

    async def aclose(self) -> None:
        """Ask the child to finish and exit; kill it if it has not after `close_timeout_s`."""
        if self._closed:
            return
        self._closed = True
        process, conn = self._process, self._conn
        if conn is not None:
            with contextlib.suppress(OSError):
                conn.send_bytes(_CLOSE)
        self._detach(WorkerUnavailable("the shadow worker is closed"))
        if process is not None:
            await asyncio.to_thread(process.join, self.close_timeout_s)
            if process.exitcode is None:
                self._log.warning("shadow_worker.killed", pid=process.pid,
                                  after_s=self.close_timeout_s)
                process.kill()
                await asyncio.to_thread(process.join, 5.0)
            with contextlib.suppress(ValueError):
                process.close()
        self._process = None

    async def __aenter__(self) -> SearchWorker:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    # -- requests ------------------------------------------------------------------------------

    async def search(
        self, backend: str, query: str, user_id: uuid.UUID | str, limit: int
    ) -> tuple[Hit, ...]:
        """The ids and match kinds `backend`'s `search(..., highlights=False)` returns.

        Raises `ShadowWorkerError` (and nothing else but cancellation) when it cannot answer.
        """
        result: tuple[Hit, ...] = await self._request(
            backend, query, str(user_id), limit, self.timeout_s, None
        )
        return result

    async def compare(
        self, ctx: SearchContext, primary: tuple[Hit, ...], pending: frozenset[uuid.UUID], *,
        timeout_s: float,
    ) -> Compared | None:
        """Search `ctx.shadow_backend` in the child, compare with `primary` and record it there.

        Returns the comparison's figures once it is recorded (the child's shadow error or
        timeout included), or None when comparing failed there (counted through
        `on_internal_error`, nothing recorded). Raises `ShadowWorkerError` when the child could
        not answer and TimeoutError when it answered too late to record (`LATE_S`): then nothing
        was recorded. `pending` is the set of rows with a mirror write pending now.
        """
        result: Compared | None = await self._request(
            ctx.shadow_backend, ctx.query, ctx.user_id, ctx.limit, timeout_s,
            self._compare_with(ctx, primary, pending),
        )
        return result

    def send_compare(
        self, ctx: SearchContext, primary: tuple[Hit, ...], pending: frozenset[uuid.UUID], *,
        timeout_s: float, done: Callable[[Compared | BaseException | None], None],
    ) -> None:
        """`compare` without a coroutine: queue the request and return; `done` is called once,
        on this loop, with what `compare` would return, or the exception it would raise (it
        must not raise itself). Raises `ShadowWorkerError` at once when nothing was queued.

        What `ShadowRunner` uses: the caller's process then spends no task, future or timer
        on a shadow (bench/shadow_overhead.py, see `shadow.experiment`)."""
        self._enqueue(ctx.shadow_backend, ctx.query, ctx.user_id, ctx.limit,
                      timeout_s, self._compare_with(ctx, primary, pending), done)

    def _compare_with(
        self, ctx: SearchContext, primary: tuple[Hit, ...], pending: frozenset[uuid.UUID]
    ) -> CompareWith:
        if self.recording is None:
            raise WorkerUnavailable("the shadow worker was started without recording")
        self._pending = pending
        return CompareWith(ctx.primary_backend,
                           [(h.question_id.int, h.match_kind) for h in primary])

    async def _request(
        self, backend: str, query: str, user_id: str, limit: int,
        timeout_s: float | None, compare: CompareWith | None,
    ) -> Any:
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()

        def settle(outcome: Any) -> None:
            if future.done():  # cancelled (the runner's timeout)
                return
            if isinstance(outcome, BaseException):
                future.set_exception(outcome)
            else:
                future.set_result(outcome)

        rid = self._enqueue(backend, query, user_id, limit, timeout_s, compare, settle)
        try:
            return await future
        finally:
            # cancelled: forget the future, keep counting the request as unanswered until the
            # child answers it (or dies)
            self._waiting.pop(rid, None)

    def _enqueue(
        self, backend: str, query: str, user_id: str, limit: int,
        timeout_s: float | None, compare: CompareWith | None, settle: Callable[[Any], None],
    ) -> int:
        """Queue a request for the next batch; its answer (or the child's death) calls
        `settle`. Returns the request's id."""
        if self._closed or self._loop is None:
            raise WorkerUnavailable("the shadow worker is not running")
        if self._conn is None:
            self._restart()
        conn = self._conn
        assert conn is not None
        if len(self._unanswered) >= self.max_outstanding:
            raise WorkerBusy(f"{len(self._unanswered)} requests wait for the shadow worker")
        rid = next(self._ids)
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        self._outgoing.append(Request(rid, backend, query, user_id, limit, deadline, compare))
        if self._send_handle is None:
            self._send_handle = self._loop.call_later(self.batch_delay_s, self._send_batch)
        self._unanswered.add(rid)
        self._waiting[rid] = settle
        return rid

    def _restart(self) -> None:
        now = time.monotonic()
        while self._starts and now - self._starts[0] > self.restart_window_s:
            self._starts.popleft()
        if len(self._starts) > self.max_restarts:  # the first start is not a restart
            if not self._refused_logged:
                self._refused_logged = True
                self._log.error("shadow_worker.restart_refused", restarts=self.restarts,
                                window_s=self.restart_window_s)
            raise WorkerUnavailable(
                f"the shadow worker's child was restarted {len(self._starts) - 1} times within "
                f"{self.restart_window_s:.0f} s; not restarted again yet"
            )
        self.restarts += 1
        try:
            self._spawn()
        except Exception as exc:
            raise WorkerUnavailable(f"could not start the shadow worker: {exc!r}"[:300]) from exc

    def _send_batch(self) -> None:
        self._send_handle = None
        batch, self._outgoing = self._outgoing, []
        conn = self._conn
        if not batch or conn is None:
            return
        pending: bytes | None = None
        if self._pending is not self._pending_sent and self._pending != self._pending_sent:
            # 16 bytes a row: a mirror outage can leave thousands pending
            pending = b"".join(u.bytes for u in self._pending)
        self._pending_sent = self._pending
        try:
            conn.send_bytes(pickle.dumps(Batch(pending, batch), protocol=pickle.HIGHEST_PROTOCOL))
        except OSError as exc:  # fails every request waiting, these included
            self._child_gone(f"send failed: {type(exc).__name__}")

    # -- answers -------------------------------------------------------------------------------

    def _on_readable(self) -> None:
        conn = self._conn
        if conn is None:
            return
        try:
            # one batch per wake-up: the fd stays readable while more wait, and poll(0)
            # would build a selector each time (it cost more than reading an answer)
            for answer in pickle.loads(conn.recv_bytes()):
                self._answer(answer)
                if self._conn is None:  # an answer we could not read detached the child
                    return
        except (EOFError, OSError):
            self._child_gone("its pipe closed")
        except Exception as exc:  # an answer we cannot read: treat the child as broken
            self._child_gone(f"unreadable answer: {type(exc).__name__}")

    def _answer(self, message: Answer) -> None:
        if isinstance(message, Ready):
            if self._ready is not None and not self._ready.done():
                self._ready.set_result(None)
            return
        if isinstance(message, InternalError):
            if self.on_internal_error is not None:
                with contextlib.suppress(Exception):
                    self.on_internal_error(message.stage)
            return
        self._unanswered.discard(message.rid)
        settle = self._waiting.pop(message.rid, None)
        if settle is None:
            return  # abandoned by its caller (timed out)
        outcome: Any
        if isinstance(message, Found):
            outcome = tuple([Hit(uuid.UUID(bytes=b), k) for b, k in message.hits])
        elif isinstance(message, CompareDone):
            outcome = message.figures
        elif isinstance(message, Late):
            outcome = TimeoutError("the shadow worker answered past its deadline")
        else:
            outcome = WorkerSearchFailed(message.error)
        self._settle(settle, outcome)

    def _settle(self, settle: Callable[[Any], None], outcome: Any) -> None:
        # a caller's callback that raises must not be taken for an unreadable answer (which
        # detaches the child): count it as the runner's publishing failing
        try:
            settle(outcome)
        except Exception:
            if self.on_internal_error is not None:
                with contextlib.suppress(Exception):
                    self.on_internal_error("publish")

    def _child_gone(self, why: str) -> None:
        process = self._process
        pid = process.pid if process is not None else None
        failed = self._detach(WorkerUnavailable(f"the shadow worker's child died ({why})"))
        exitcode = None
        if process is not None:
            with contextlib.suppress(Exception):
                process.join(0)  # reap it if it has exited already (no wait)
                exitcode = process.exitcode
        self._log.error("shadow_worker.died", pid=pid, exitcode=exitcode, reason=why,
                        failed_requests=failed)

    def _detach(self, error: ShadowWorkerError) -> int:
        """Forget the child's pipe and fail every request waiting for it (returns how many)."""
        conn, self._conn = self._conn, None
        if self._send_handle is not None:
            self._send_handle.cancel()
            self._send_handle = None
        self._outgoing.clear()
        if conn is not None:
            if self._loop is not None:
                with contextlib.suppress(Exception):
                    self._loop.remove_reader(conn.fileno())
            with contextlib.suppress(OSError):
                conn.close()
        waiting, self._waiting = self._waiting, {}
        self._unanswered.clear()
        for settle in waiting.values():
            self._settle(settle, error)
        failed = len(waiting)
        if self._ready is not None and not self._ready.done():
            self._ready.cancel()
        return failed


# -- the child ---------------------------------------------------------------------------------

def _child_main(conn: Connection, searchers: OpenSearchers, niceness: int,
                concurrency: int = CONCURRENCY, batch_delay_s: float = BATCH_DELAY_S,
                recording: Recording | None = None) -> None:
    # The parent decides when this process ends (a close message, or its end of the pipe
    # closing): a Ctrl-C in the terminal reaches the whole process group and must not kill it.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    # The shadow is off the caller's path and has a timeout; the caller's process serves
    # requests whose latency users see. When both want a core, the caller's process wins: on
    # Linux the child runs in the idle scheduling class (SCHED_IDLE), so it gets a core only
    # when nothing else wants it. A few nice levels (about a third of the parent's weight) had
    # still cost the primary search 13 % at 119 searches a second with every search shadowed;
    # SCHED_IDLE, 3 % (bench/shadow_overhead.py --qps 119). On a saturated machine shadows then
    # wait and may time out, which the verdict counts against a flip: no evidence, no go.
    # (The PostgreSQL server's work for a shadow runs in the server's processes, at their own
    # priority.)
    with contextlib.suppress(OSError):
        os.nice(niceness)
    with contextlib.suppress(AttributeError, OSError):  # not Linux, or not permitted
        os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))
    if recording is not None:
        _configure_logging(recording.log_config)
    asyncio.run(_serve(conn, searchers, concurrency, batch_delay_s, recording))


def _configure_logging(config: dict[str, Any]) -> None:
    """The caller's structlog configuration (`portable_log_config`), printing to stderr."""
    config = dict(config)
    stream = sys.stdout if config.pop("logger_factory", None) == "stdout" else sys.stderr
    config.setdefault("processors", [
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        structlog.processors.format_exc_info,
        structlog.processors.JSONRenderer(),
    ])
    structlog.configure(logger_factory=structlog.PrintLoggerFactory(stream), **config)


async def _serve(conn: Connection, open_searchers: OpenSearchers, concurrency: int,
                 batch_delay_s: float, recording: Recording | None = None) -> None:
    # no more connections or reader threads than searches it runs at once (a store of one
    # connection holds it rather than pooling it: less CPU a search)
    searchers = open_searchers(concurrency)
    child = _Child(conn, searchers, concurrency, batch_delay_s)
    shadow_store: ShadowStore | None = None
    if recording is not None:
        child.recorder, shadow_store = _open_recorder(recording, child.send)
    try:
        await child.run()
    finally:
        for searcher in searchers.values():
            with contextlib.suppress(Exception):
                await searcher.close()
        if shadow_store is not None:
            with contextlib.suppress(Exception):
                shadow_store.close()
        conn.close()


def _open_recorder(recording: Recording,
                   send: Callable[[Answer], None]) -> tuple[Recorder, ShadowStore | None]:
    """The child's recorder as `recording` says, and the shadow store it writes to (None when
    there is none, or it could not be opened: comparisons are then logged and counted only)."""
    log = structlog.get_logger("cutover.shadow")
    shadow_store: ShadowStore | None = None
    if recording.store_path is not None:
        try:
            shadow_store = ShadowStore(recording.store_path,
                                       max_comparisons=recording.max_comparisons,
                                       max_mismatches=recording.max_mismatches)
        except Exception:
            log.exception("shadow.internal_error", stage="store", what="open")
            send(InternalError("store"))
    recorder = Recorder(
        logger=log, salt=recording.salt, store=shadow_store,
        log_query_text=recording.log_query_text,
        store_query_text=recording.store_query_text,
        on_error=lambda stage, what: send(InternalError(stage)),
    )
    return recorder, shadow_store


class _Searched(NamedTuple):
    """A search's outcome in the child."""

    results: Sequence[RankedHit] | None  # None: it failed
    failure: str  # "Type: why" when it failed
    expired: bool  # whether the deadline stopped it
    took_s: float | None  # the search's own time (None if it never started)


class _Child:
    """The child's side: reads batches of requests, runs them `concurrency` at a time and
    answers in batches, until the parent closes its end or asks it to finish."""

    def __init__(self, conn: Connection, searchers: Mapping[str, Searcher], concurrency: int,
                 batch_delay_s: float) -> None:
        self.conn = conn
        self.searchers = searchers
        self.batch_delay_s = batch_delay_s
        self.recorder: Recorder | None = None  # set to serve compare requests
        self.loop = asyncio.get_running_loop()
        self.running = asyncio.Semaphore(concurrency)
        self.pending: frozenset[uuid.UUID] = frozenset()  # the newest set the parent sent
        self.tasks: set[asyncio.Task[None]] = set()
        self.done: asyncio.Future[None] = self.loop.create_future()
        self._answers: list[Answer] = []  # the batch not sent yet
        self._timer: asyncio.TimerHandle | None = None  # sends the batch, while one is set

    async def run(self) -> None:
        # open the PostgreSQL pool before saying ready, so the first requests find it
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.searchers["postgres"].ping(), 10.0)
        self.loop.add_reader(self.conn.fileno(), self.on_readable)
        self._answers.append(Ready())
        self.flush()  # at once: the parent waits for it
        await self.done
        if self.tasks:
            await asyncio.wait(set(self.tasks), timeout=5.0)
        if self.recorder is not None:
            await self.recorder.aclose()
        self.flush()  # what the last searches answered (the parent may be gone: no harm)

    def send(self, answer: Answer) -> None:
        self._answers.append(answer)
        if self._timer is None:
            self._timer = self.loop.call_later(self.batch_delay_s, self.flush)

    def flush(self) -> None:
        """Send the answers waiting (called by the timer, or before it)."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if not self._answers:
            return
        batch, self._answers = self._answers, []
        try:
            self.conn.send_bytes(pickle.dumps(batch, protocol=pickle.HIGHEST_PROTOCOL))
        except OSError:  # the parent is gone
            self._finish()

    def on_readable(self) -> None:
        try:
            message = self.conn.recv_bytes()  # one batch per wake-up, as in the parent's
            if message == _CLOSE:
                raise EOFError
            batch: Batch = pickle.loads(message)
        except (EOFError, OSError):
            self.loop.remove_reader(self.conn.fileno())
            self._finish()
            return
        if batch.pending is not None:
            self.pending = frozenset(uuid.UUID(bytes=batch.pending[i:i + 16])
                                     for i in range(0, len(batch.pending), 16))
        for request in batch.requests:
            if request.compare is None:
                work = self._search_and_answer(request)
            elif self.recorder is not None:
                work = self._compare(request, request.compare, self.recorder)
            else:
                self.send(Failed(request.rid, "RuntimeError: started without recording"))
                continue
            task = self.loop.create_task(work)
            self.tasks.add(task)
            task.add_done_callback(self.tasks.discard)

    def _finish(self) -> None:
        if not self.done.done():
            self.done.set_result(None)

    async def _search(self, request: Request) -> _Searched:
        deadline = request.deadline
        # the loop's clock is time.monotonic() too
        timer = asyncio.timeout_at(deadline)  # None: no deadline
        started: float | None = None
        try:
            async with self.running:
                if deadline is not None and deadline <= time.monotonic():
                    return _Searched(None, "TimeoutError: expired before it started", True, None)
                started = time.perf_counter()
                async with timer:
                    results = await self.searchers[request.backend].search(
                        request.query, uuid.UUID(request.user_id), request.limit,
                        highlights=False)
            return _Searched(results, "", False, time.perf_counter() - started)
        except TimeoutError as exc:
            expired = timer.expired()
            failure = f"TimeoutError: {'cancelled at its deadline' if expired else exc}"
        except Exception as exc:
            expired, failure = False, f"{type(exc).__name__}: {exc}"
        took = None if started is None else time.perf_counter() - started
        return _Searched(None, failure[:500], expired, took)

    async def _search_and_answer(self, request: Request) -> None:
        searched = await self._search(request)
        if searched.results is None:
            self.send(Failed(request.rid, searched.failure))
        else:
            self.send(Found(request.rid, [(r.question_id.bytes, r.match_kind)
                                          for r in searched.results]))

    async def _compare(self, request: Request, primary_answer: CompareWith,
                       recorder: Recorder) -> None:
        pending_before = self.pending
        searched = await self._search(request)
        assert request.deadline is not None  # a compare always has one
        if time.monotonic() > request.deadline + LATE_S:
            self.send(Late(request.rid))  # the parent may have given up: it records a timeout
            return
        primary = tuple([Hit(uuid.UUID(int=i), k) for i, k in primary_answer.primary])
        if searched.results is None:
            ids = [h.question_id for h in primary]
            if searched.expired:
                comparison = Comparison.failed(ids, Outcome.TIMEOUT)
            else:  # only the type: a message may quote the query
                comparison = Comparison.failed(ids, Outcome.ERROR,
                                               searched.failure.split(":", 1)[0])
        else:
            try:
                # pending rows read again: a write that landed meanwhile explains it too
                comparison = classify(
                    primary, snapshot(searched.results),
                    CompareContext(request.query, request.limit, pending_before | self.pending))
            except Exception:
                recorder.internal_error("compare", "compare")
                self.send(CompareDone(request.rid, None))
                return
        recorder.record(SearchContext(request.query, request.user_id, request.limit,
                                      primary_answer.primary_backend, request.backend),
                        comparison, searched.took_s)
        self.send(CompareDone(request.rid, Compared.of(comparison, searched.took_s)))
