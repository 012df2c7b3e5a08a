"""Records finished comparisons: one structlog event per discrepancy, a row in the `ShadowStore`.

Used where the comparison is made: by `ShadowRunner` in the caller's process (the inline
worker), or in the worker's child process (`shadow.worker`), whose log lines and store writes
then cost the caller's process nothing. Metrics are not recorded here: the registry lives in the
caller's process, which observes every comparison's figures itself.

Store rows are written in batches: a batch's first record waits `flush_delay_s` for others, then
a worker thread writes them in one transaction. Nothing here raises to its caller: a failure is
logged (`shadow.internal_error`) and handed to `on_error(stage, what)`, which counts it.

Log events: `shadow.mismatch` (outcome mismatch), `shadow.failed` (error or timeout; only the
exception's type, since a message may quote the query), `shadow.internal_error`.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, NamedTuple

from shadow.compare import Comparison, Outcome
from shadow.store import ComparisonRecord, ShadowStore

#: records waiting for the store beyond this are dropped (oldest first) rather than grow memory
MAX_BUFFERED_RECORDS = 10_000
#: how long the first record of a batch waits for others before the store is written
FLUSH_DELAY_S = 0.05


def fingerprint(query: str, salt: bytes) -> str:
    """A short keyed hash of the query: equal for the same terms, useless without the salt."""
    normalised = " ".join(query.split()).casefold()
    return hmac.new(salt, normalised.encode("utf-8"), hashlib.sha256).hexdigest()[:16]


@dataclass(frozen=True, slots=True)
class SearchContext:
    """What a comparison was about, as logs and the store show it."""

    query: str
    user_id: str
    limit: int
    primary_backend: str
    shadow_backend: str


class Compared(NamedTuple):
    """A comparison made in another process, as this one needs it: its metrics' values.

    Plain values (no enums, no ids), so it crosses a pipe cheaply."""

    outcome: str
    reason: str | None
    jaccard: float | None
    agreement: float | None
    top1: bool | None
    #: the shadow search's own time (None when it never ran)
    shadow_s: float | None

    @classmethod
    def of(cls, c: Comparison, shadow_s: float | None) -> Compared:
        reason = None if c.reason is None else c.reason.value
        return cls(c.outcome.value, reason, c.jaccard, c.agreement, c.top1, shadow_s)


class Recorder:
    """Logs each discrepancy and keeps each comparison in `store` (when there is one)."""

    def __init__(
        self,
        *,
        logger: Any,
        salt: bytes,
        store: ShadowStore | None = None,
        log_query_text: bool = False,
        store_query_text: bool = True,
        flush_delay_s: float = FLUSH_DELAY_S,
        on_error: Callable[[str, str], None] | None = None,
        before_flush: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        self.store = store
        self.log_query_text = log_query_text
        self.store_query_text = store_query_text
        self.flush_delay_s = flush_delay_s
        self._log = logger
        self.salt = salt  # keys the fingerprints; the worker's child takes the same
        self._on_error = on_error
        self._before_flush = before_flush  # the runner waits for its primaries to finish
        self._buffer: list[ComparisonRecord] = []
        self._flush_task: asyncio.Task[None] | None = None
        self._closing = False

    def fingerprint(self, query: str) -> str:
        return fingerprint(query, self.salt)

    def record(self, ctx: SearchContext, c: Comparison, shadow_s: float | None) -> None:
        """Log a discrepancy and queue the store row; never raises."""
        try:
            fp = self.fingerprint(ctx.query)
        except Exception:
            self.internal_error("publish", "fingerprint")
            return
        if c.outcome is not Outcome.MATCH:
            try:
                self._log_discrepancy(ctx, c, fp)
            except Exception:
                self.internal_error("publish", "log")
        if self.store is not None:
            try:
                self._enqueue(ComparisonRecord(
                    ts=time.time(), comparison=c, fingerprint=fp,
                    query=ctx.query if self.store_query_text else None, user_id=ctx.user_id,
                    limit=ctx.limit, primary_backend=ctx.primary_backend,
                    shadow_backend=ctx.shadow_backend,
                    shadow_ms=None if shadow_s is None else shadow_s * 1000.0,
                ))
            except Exception:
                self.internal_error("store", "enqueue")

    def _log_discrepancy(self, ctx: SearchContext, c: Comparison, fp: str) -> None:
        fields: dict[str, Any] = {
            "fingerprint": fp,
            "outcome": c.outcome.value,
            "reason": None if c.reason is None else c.reason.value,
            "primary_backend": ctx.primary_backend,
            "shadow_backend": ctx.shadow_backend,
            "limit": ctx.limit,
            "primary_ids": [str(x) for x in c.primary_ids],
        }
        if self.log_query_text:
            fields["query"] = ctx.query
        if c.outcome is Outcome.MISMATCH:
            # the ids found on one side only follow from the two lists: logging them too would
            # double the line (the store keeps both lists)
            fields.update(
                shadow_ids=[str(x) for x in c.shadow_ids],
                jaccard=c.jaccard, rbo=c.rbo, top1=c.top1, kendall_tau=c.kendall_tau,
                hints=sorted(c.hints),
            )
            self._log.warning("shadow.mismatch", **fields)
        else:
            self._log.warning("shadow.failed", error=c.detail or None, **fields)

    def internal_error(self, stage: str, what: str) -> None:
        """Log and hand on a failure of our own (the last line of defence: never raises)."""
        with contextlib.suppress(Exception):
            if self._on_error is not None:
                self._on_error(stage, what)
        with contextlib.suppress(Exception):
            self._log.exception("shadow.internal_error", stage=stage, what=what)

    # -- the store ---------------------------------------------------------------------------

    def _enqueue(self, record: ComparisonRecord) -> None:
        self._buffer.append(record)
        if len(self._buffer) > MAX_BUFFERED_RECORDS:
            del self._buffer[: len(self._buffer) - MAX_BUFFERED_RECORDS]
        if self._flush_task is None or self._flush_task.done():
            # one flusher at a time; records arriving meanwhile form the next batch
            self._flush_task = asyncio.get_running_loop().create_task(
                self._flush(), name="cutover-shadow-store"
            )

    async def _flush(self) -> None:
        store = self.store
        if not self._closing and self.flush_delay_s > 0:
            # let a batch form: one thread hop and one transaction for many comparisons
            await asyncio.sleep(self.flush_delay_s)
            if self._before_flush is not None:
                await self._before_flush()
        while self._buffer and store is not None:
            batch, self._buffer = self._buffer, []
            try:
                await asyncio.to_thread(store.add, batch)
            except Exception:
                self.internal_error("store", "add")

    async def drain(self, timeout_s: float) -> None:
        """Wait (at most `timeout_s`) for the store write under way, if any."""
        task = self._flush_task
        if task is not None and not task.done():
            await asyncio.wait({task}, timeout=timeout_s)

    async def aclose(self, timeout_s: float = 5.0) -> None:
        """Write what is buffered now (no more batching delay), waiting at most `timeout_s`."""
        self._closing = True
        task = self._flush_task
        try:
            async with asyncio.timeout(max(timeout_s, 1.0)):
                if task is not None and not task.done():
                    await task
                if self._buffer:
                    await self._flush()
        except Exception:
            self.internal_error("store", "final_flush")
