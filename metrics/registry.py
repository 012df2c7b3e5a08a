"""The project's Prometheus metrics, created on a registry passed in.

Nothing is registered at import: `Metrics(registry)` creates every series on the registry it is
given, so tests build a fresh `CollectorRegistry()` and a process can hold more than one set.
Every label combination is created up front, so each series exists at 0 from the first scrape
(dashboards and alert expressions never see "no data" for a quiet series).

Label values come from the fixed tuples below; anything else raises `ValueError`, because an
unbounded label value (a query, a user id, a row id, a DSN) must never reach a label.
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, Final

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from config.settings import BACKENDS

#: `Entity.name` of each table (proxy.models): the `entity` label.
ENTITIES: Final = ("user", "study_book", "question", "typing_log", "learning_event")
WRITE_OPS: Final = ("insert", "update", "delete")
#: ok = applied; error = the store raised; timeout = abandoned (a mirror write then goes to the
#: outbox); deferred = not attempted inline because earlier writes to the row are still queued.
WRITE_OUTCOMES: Final = ("ok", "error", "timeout", "deferred")
SEARCH_ROLES: Final = ("primary", "shadow")
#: `cutover_shadow_comparisons_total{outcome}`; skipped = not sampled, shed, or runner closed.
SHADOW_OUTCOMES: Final = ("match", "mismatch", "error", "timeout", "skipped")
#: `cutover_shadow_discrepancies_total{reason}`: the values of `shadow.Reason`.
DISCREPANCY_REASONS: Final = (
    "stale_mirror",
    "order_only",
    "fuzzy_only",
    "k_boundary",
    "stemming_or_stopword",
    "shadow_error",
    "shadow_timeout",
    "unexplained",
)
#: `cutover_store_errors_total{op}`: what the store was doing when it failed.
STORE_OPS: Final = ("write", "read", "search", "replay", "health")
#: `cutover_shadow_internal_errors_total{stage}`: failures of the shadow machinery itself.
SHADOW_STAGES: Final = ("pending", "compare", "publish", "store")
#: `cutover_instance_info{instance_id}`: the longest instance id accepted.
MAX_INSTANCE_ID: Final = 128

# Jaccard and RBO live in [0, 1]; the fine buckets near 1 are where go/no-go is decided.
RATIO_BUCKETS: Final = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.99, 1.0)
LATENCY_BUCKETS: Final = (
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
)


def _check(name: str, value: str, allowed: tuple[str, ...]) -> str:
    if value not in allowed:
        raise ValueError(f"{name}={value!r} is not a known label value: allowed {allowed}")
    return value


class Metrics:
    """Every metric of the contract (plus a few extras) on one registry."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry
        r = registry
        self.read_primary = Gauge(
            "cutover_read_primary", "1 for the store that currently answers reads.",
            ["backend"], registry=r,
        )
        self.writes = Counter(
            "cutover_writes_total", "Writes sent to a store, by entity, operation and outcome.",
            ["backend", "entity", "op", "outcome"], registry=r,
        )
        self.write_duration = Histogram(
            "cutover_write_duration_seconds", "Time one write took on one store.",
            ["backend", "op"], buckets=LATENCY_BUCKETS, registry=r,
        )
        self.mirror_failures = Counter(
            "cutover_mirror_failures_total",
            "Mirror writes that failed or timed out and were left to the outbox.",
            ["backend", "entity"], registry=r,
        )
        self.outbox_pending = Gauge(
            "cutover_outbox_pending", "Mirror writes waiting to reach the store.",
            ["backend"], registry=r,
        )
        self.outbox_oldest_age = Gauge(
            "cutover_outbox_oldest_age_seconds",
            "Age of the oldest mirror write still waiting for the store (0 when none).",
            ["backend"], registry=r,
        )
        self.outbox_dead_letters = Gauge(
            "cutover_outbox_dead_letters",
            "Mirror writes that gave up after their retries and need an operator.",
            ["backend"], registry=r,
        )
        self.store_errors = Counter(
            "cutover_store_errors_total", "Errors raised by a store, by what it was doing.",
            ["backend", "op"], registry=r,
        )
        self.search_duration = Histogram(
            "cutover_search_duration_seconds",
            "Time one search took, on the primary or as the shadow.",
            ["backend", "role"], buckets=LATENCY_BUCKETS, registry=r,
        )
        self.shadow_comparisons = Counter(
            "cutover_shadow_comparisons_total",
            "Searches considered for shadowing, by outcome (skipped = not sampled or shed).",
            ["outcome"], registry=r,
        )
        self.shadow_overlap = Histogram(
            "cutover_shadow_overlap", "Jaccard@k of primary and shadow ids, per comparison.",
            buckets=RATIO_BUCKETS, registry=r,
        )
        self.shadow_rank_agreement = Histogram(
            "cutover_shadow_rank_agreement",
            "Rank-biased overlap (p=0.9, extrapolated) of primary and shadow, per comparison "
            "(of the full-text matches alone for a fuzzy_only one).",
            buckets=RATIO_BUCKETS, registry=r,
        )
        self.shadow_top1_agreement = Counter(
            "cutover_shadow_top1_agreement_total",
            "Completed comparisons whose first result is the same on both sides.",
            registry=r,
        )
        self.shadow_discrepancies = Counter(
            "cutover_shadow_discrepancies_total", "Shadow discrepancies by classified reason.",
            ["reason"], registry=r,
        )
        self.shadow_shed = Counter(
            "cutover_shadow_shed_total",
            "Sampled searches not shadowed because the concurrency bound was reached.",
            registry=r,
        )
        self.shadow_inflight = Gauge(
            "cutover_shadow_inflight", "Shadow searches running now.", registry=r,
        )
        self.shadow_internal_errors = Counter(
            "cutover_shadow_internal_errors_total",
            "Failures inside the shadow machinery (never raised to the caller), by stage.",
            ["stage"], registry=r,
        )
        self.ready = Gauge(
            "cutover_ready", "1 when the go/no-go verdict says go, else 0.", registry=r,
        )
        # -- the fleet: what tells processes apart, and what each one believes --------------
        self.instance_info = Gauge(
            "cutover_instance_info",
            "1 for this process: its instance id, pid and hostname (tells the fleet apart).",
            ["instance_id", "pid", "hostname"], registry=r,
        )
        self.primary_epoch = Gauge(
            "cutover_primary_epoch",
            "Epoch of the control record this process acts on (every flip increments it).",
            registry=r,
        )
        self.dual_write = Gauge(
            "cutover_dual_write",
            "1 while the control record's stage says dual writes are on, else 0.", registry=r,
        )
        self.primary_source_error = Gauge(
            "cutover_primary_source_error",
            "1 while READ_PRIMARY_FILE is missing, unreadable or holds a bad word "
            "(the process keeps the control record's primary).",
            registry=r,
        )
        self.fenced_writes = Counter(
            "cutover_fenced_writes_total",
            "Writes a store refused because they carried an old epoch (retried on the new "
            "primary).",
            ["backend"], registry=r,
        )
        self._preinitialise()

    def _preinitialise(self) -> None:
        self._write_series: dict[tuple[str, str, str, str], tuple[Any, Any]] = {}
        self._search_series: dict[tuple[str, str], Any] = {}
        for backend in BACKENDS:
            self.read_primary.labels(backend=backend)
            self.outbox_pending.labels(backend=backend)
            self.outbox_oldest_age.labels(backend=backend)
            self.outbox_dead_letters.labels(backend=backend)
            self.fenced_writes.labels(backend=backend)
            for op in WRITE_OPS:
                self.write_duration.labels(backend=backend, op=op)
            for entity in ENTITIES:
                self.mirror_failures.labels(backend=backend, entity=entity)
                for op in WRITE_OPS:
                    for outcome in WRITE_OUTCOMES:
                        # every write looks its two series up here: labels() costs more
                        self._write_series[(backend, entity, op, outcome)] = (
                            self.writes.labels(backend=backend, entity=entity, op=op,
                                               outcome=outcome),
                            self.write_duration.labels(backend=backend, op=op),
                        )
            for store_op in STORE_OPS:
                self.store_errors.labels(backend=backend, op=store_op)
            for role in SEARCH_ROLES:
                # every search (and every shadow) looks its series up here
                self._search_series[(backend, role)] = self.search_duration.labels(
                    backend=backend, role=role)
        for shadow_outcome in SHADOW_OUTCOMES:
            self.shadow_comparisons.labels(outcome=shadow_outcome)
        for reason in DISCREPANCY_REASONS:
            self.shadow_discrepancies.labels(reason=reason)
        for stage in SHADOW_STAGES:
            self.shadow_internal_errors.labels(stage=stage)

    # -- writes and the outbox ---------------------------------------------------------------

    def observe_write(
        self, backend: str, entity: str, op: str, outcome: str, seconds: float
    ) -> None:
        """Count one write to one store and record how long it took."""
        try:
            count, duration = self._write_series[(backend, entity, op, outcome)]
        except KeyError:  # say which label is off
            _check("backend", backend, BACKENDS)
            _check("entity", entity, ENTITIES)
            _check("op", op, WRITE_OPS)
            _check("outcome", outcome, WRITE_OUTCOMES)
            raise
        count.inc()
        duration.observe(max(seconds, 0.0))

    def mirror_failure(self, backend: str, entity: str) -> None:
        """Count a mirror write to `backend` that failed and was left to the outbox."""
        self.mirror_failures.labels(
            backend=_check("backend", backend, BACKENDS),
            entity=_check("entity", entity, ENTITIES),
        ).inc()

    def store_error(self, backend: str, op: str) -> None:
        """Count an error a store raised while doing `op` (one of STORE_OPS)."""
        self.store_errors.labels(
            backend=_check("backend", backend, BACKENDS), op=_check("op", op, STORE_OPS)
        ).inc()

    def set_outbox(
        self, backend: str, pending: int, oldest_age_s: float, dead: int = 0
    ) -> None:
        """Publish the outbox state of the writes waiting to reach `backend`."""
        backend = _check("backend", backend, BACKENDS)
        self.outbox_pending.labels(backend=backend).set(max(pending, 0))
        self.outbox_oldest_age.labels(backend=backend).set(max(oldest_age_s, 0.0))
        self.outbox_dead_letters.labels(backend=backend).set(max(dead, 0))

    def set_read_primary(self, backend: str) -> None:
        """Mark `backend` as the primary (1) and every other backend as not (0)."""
        backend = _check("backend", backend, BACKENDS)
        for other in BACKENDS:
            self.read_primary.labels(backend=other).set(1 if other == backend else 0)

    # -- searches and the shadow -------------------------------------------------------------

    def observe_search(self, backend: str, role: str, seconds: float) -> None:
        """Record one search's duration; `role` is "primary" or "shadow"."""
        try:
            series = self._search_series[(backend, role)]
        except KeyError:  # say which label is off
            _check("backend", backend, BACKENDS)
            _check("role", role, SEARCH_ROLES)
            raise
        series.observe(max(seconds, 0.0))

    @contextmanager
    def time_search(self, backend: str, role: str) -> Iterator[None]:
        """Time the body as one search (recorded even when the body raises)."""
        # validate before timing so a typo fails loudly instead of at exit
        _check("backend", backend, BACKENDS)
        _check("role", role, SEARCH_ROLES)
        start = time.perf_counter()
        try:
            yield
        finally:
            self.observe_search(backend, role, time.perf_counter() - start)

    def shadow_outcome(self, outcome: str) -> None:
        """Count one search under `cutover_shadow_comparisons_total{outcome}`."""
        self.shadow_comparisons.labels(
            outcome=_check("outcome", outcome, SHADOW_OUTCOMES)
        ).inc()

    def shadow_skipped(self, *, shed: bool = False) -> None:
        """Count a search that was not shadowed; `shed` when the concurrency bound said no."""
        self.shadow_outcome("skipped")
        if shed:
            self.shadow_shed.inc()

    def observe_comparison(
        self,
        outcome: str,
        reason: str | None,
        *,
        jaccard: float | None = None,
        rbo: float | None = None,
        top1: bool | None = None,
    ) -> None:
        """Record one finished comparison: outcome, reason and the agreement figures."""
        if reason is not None:
            reason = _check("reason", reason, DISCREPANCY_REASONS)
        self.shadow_outcome(outcome)
        if reason is not None:
            self.shadow_discrepancies.labels(reason=reason).inc()
        if jaccard is not None:
            self.shadow_overlap.observe(jaccard)
        if rbo is not None:
            self.shadow_rank_agreement.observe(rbo)
        if top1:
            self.shadow_top1_agreement.inc()

    def set_shadow_inflight(self, n: int) -> None:
        """Publish how many shadow searches are running."""
        self.shadow_inflight.set(max(n, 0))

    def shadow_internal_error(self, stage: str) -> None:
        """Count a failure of the shadow machinery at `stage` (one of SHADOW_STAGES)."""
        self.shadow_internal_errors.labels(stage=_check("stage", stage, SHADOW_STAGES)).inc()

    # -- the fleet ---------------------------------------------------------------------------

    def set_instance(self, instance: str) -> None:
        """Publish `cutover_instance_info{instance_id, pid, hostname}` = 1 for this process.

        `instance` names the process (not a user, a query or a DSN); the pid and hostname are
        read now, so a call after a fork names the child. A second call replaces the series.
        """
        if not instance or not instance.isprintable() or len(instance) > MAX_INSTANCE_ID:
            raise ValueError(
                f"instance_id={instance!r} must be 1 to {MAX_INSTANCE_ID} printable characters"
            )
        self.instance_info.clear()
        self.instance_info.labels(
            instance_id=instance, pid=str(os.getpid()), hostname=socket.gethostname(),
        ).set(1)

    def set_epoch(self, epoch: int) -> None:
        """Publish the control record's epoch this process acts on."""
        self.primary_epoch.set(epoch)

    def set_dual_write(self, on: bool) -> None:
        """Publish the control record's stage: 1 while dual writes are on."""
        self.dual_write.set(1 if on else 0)

    def set_primary_source_error(self, bad: bool) -> None:
        """1 while READ_PRIMARY_FILE cannot be used (the record's primary is kept), else 0."""
        self.primary_source_error.set(1 if bad else 0)

    def fenced_write(self, backend: str) -> None:
        """Count a write `backend` refused for its old epoch (then retried on the new primary)."""
        self.fenced_writes.labels(backend=_check("backend", backend, BACKENDS)).inc()

    # -- the verdict -------------------------------------------------------------------------

    def set_ready(self, ready: bool) -> None:
        """Publish the go/no-go verdict as `cutover_ready` (1 = go)."""
        self.ready.set(1 if ready else 0)
