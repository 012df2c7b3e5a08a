"""`cutover reconcile`: replay pending mirror writes, then repair what verify finds, from the
primary.

A repair copies the primary's row to the other store as a new write: `Store.apply` of a
`Mutation` whose version is taken *before* the primary's row is read, so a write the repository
makes after that read carries a newer version and is never overwritten by the repair. A row the
primary does not hold becomes a delete (and a tombstone) on the other store.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from proxy.clock import next_version
from proxy.deadletters import is_dead
from proxy.migrate.verify import RowDiff
from proxy.mirror import apply_following
from proxy.models import BY_TABLE, ENTITIES
from proxy.stores.base import ApplyOutcome, Mutation, Store

DRAIN_BATCH = 200
RECONCILE_STEPS = 1 + 2 * len(ENTITIES)  # the outboxes drained, each table repaired, checked


async def drain_outboxes(sqlite_store: Store, pg_store: Store, *,
                         batch: int = DRAIN_BATCH) -> dict[str, dict[str, int]]:
    """Apply every pending mirror write of both outboxes once; return counts per direction.

    Applied and superseded entries are acknowledged; a failure is retried on a later run, or
    becomes a dead letter as `proxy.deadletters.is_dead` decides (the repository's policy).
    """
    report: dict[str, dict[str, int]] = {}
    for source, target in ((sqlite_store, pg_store), (pg_store, sqlite_store)):
        counts = {"applied": 0, "superseded": 0, "failed": 0, "dead": 0}
        failed: set[int] = set()  # stay at the head of the queue until a later run
        while True:
            entries = [e for e in await source.outbox_pending(target.backend,
                                                              batch + len(failed))
                       if e.seq not in failed]
            if not entries:
                break
            # as the repository's replay loop applies them (missing parents settled by the
            # store that wrote them, a parent's delete sparing the children it still holds)
            results = await apply_following(source, target, [e.mutation for e in entries])
            done = []
            for entry, result in zip(entries, results, strict=True):
                if result.outcome is ApplyOutcome.FAILED:
                    dead = is_dead(entry, result)
                    await source.outbox_retry(entry.seq, result.error or "failed", dead=dead)
                    failed.add(entry.seq)
                    counts["dead" if dead else "failed"] += 1
                else:
                    done.append(entry.seq)
                    counts[result.outcome.value] += 1
            await source.outbox_ack(done)
        report[f"{source.backend}->{target.backend}"] = counts
    return report


async def requeue_dead_letters(sqlite_store: Store, pg_store: Store) -> dict[str, int]:
    """Put both outboxes' dead letters back in the queue (attempts 0, last error kept); return
    how many per direction. The next drain replays them; `is_dead` decides again."""
    return {f"{source.backend}->{target.backend}":
            await source.outbox_requeue_dead(target.backend)
            for source, target in ((sqlite_store, pg_store), (pg_store, sqlite_store))}


@dataclass
class RepairReport:
    repaired: dict[str, int] = field(default_factory=dict)
    failed: list[dict[str, Any]] = field(default_factory=list)

    def add(self, kind: str) -> None:
        self.repaired[kind] = self.repaired.get(kind, 0) + 1


class Repairer:
    """Makes the mirror's rows equal to the primary's, one verify batch at a time."""

    def __init__(self, primary: Store, mirror: Store, report: RepairReport) -> None:
        self.primary = primary
        self.mirror = mirror
        self.report = report

    async def __call__(self, diffs: list[RowDiff]) -> None:
        mutations, kinds = [], []
        for d in diffs:
            entity = BY_TABLE[d.table]
            rid = uuid.UUID(d.id)
            version = next_version()  # before the read: a later write must win over this copy
            try:
                row = await self.primary.get_row(entity, rid)
            except (ValueError, TypeError) as exc:
                self.report.failed.append({"table": d.table, "id": d.id,
                                           "error": f"cannot read on {self.primary.backend}: "
                                                    f"{exc}"})
                continue
            if row is None:
                mutations.append(Mutation(entity.name, "delete", rid, version))
                kinds.append(f"deleted on {self.mirror.backend}")
            else:
                mutations.append(Mutation(entity.name, "update", rid, version, row))
                kinds.append(f"copied to {self.mirror.backend}")
        results = await self.mirror.apply(mutations) if mutations else []
        for m, kind, result in zip(mutations, kinds, results, strict=True):
            if result.outcome is ApplyOutcome.FAILED:
                self.report.failed.append({"table": BY_TABLE_NAME[m.entity], "id": str(m.row_id),
                                           "error": result.error or "failed"})
            else:
                self.report.add(kind)


BY_TABLE_NAME = {e.name: e.table for e in BY_TABLE.values()}


@dataclass(frozen=True, slots=True)
class ReconcileReport:
    primary: str
    drained: dict[str, dict[str, int]]
    repaired: dict[str, int]
    failed: list[dict[str, Any]]
    after: Any  # the VerifyReport of the check that follows the repairs
    requeued: dict[str, int] = field(default_factory=dict)  # dead letters, with --retry-dead

    def to_json(self) -> dict[str, Any]:
        return {"primary": self.primary, "requeued": self.requeued, "drained": self.drained,
                "repaired": self.repaired, "failed": self.failed, "ok": bool(self.after.ok),
                "verify": self.after.to_json()}


async def run_reconcile(sqlite_path: Path, dsn: str, primary: str, *,
                        retry_dead: bool = False,
                        progress: Callable[[str], None] | None = None) -> ReconcileReport:
    """Drain both outboxes (their dead letters first requeued when `retry_dead`), repair every
    difference from `primary`, then verify again; `progress` is told each of the
    RECONCILE_STEPS steps as it ends."""
    from proxy.errors import SchemaMissing
    from proxy.migrate.backfill import open_pool
    from proxy.migrate.verify import (
        add_dead_letters,
        compare_stores,
        is_upgraded,
        pending_rows,
        require_tables,
    )
    from proxy.stores.postgres import PostgresStore
    from proxy.stores.sqlite import SQLiteStore

    if not await asyncio.to_thread(is_upgraded, sqlite_path):
        raise SchemaMissing(f"SQLITE_PATH={sqlite_path} has no outbox: run `cutover schema init` "
                            "first")
    pool = await open_pool(dsn)
    sqlite_store = SQLiteStore(sqlite_path)
    pg_store = PostgresStore(dsn, min_size=1, max_size=2)
    try:
        await require_tables(sqlite_path, pool)
        requeued = await requeue_dead_letters(sqlite_store, pg_store) if retry_dead else {}
        drained = await drain_outboxes(sqlite_store, pg_store)
        step = progress or (lambda name: None)
        step("outboxes drained")
        main, other = ((sqlite_store, pg_store) if primary == "sqlite"
                       else (pg_store, sqlite_store))
        repairs = RepairReport()

        def pending() -> Any:
            return pending_rows(sqlite_store, pg_store)

        # parents before children, so a copied child finds its parent already there
        await compare_stores(sqlite_path, pool, pending=pending,
                             on_diffs=Repairer(main, other, repairs), sequential=True,
                             on_table=lambda t: step(f"{t} repaired"))
        after = await compare_stores(sqlite_path, pool, pending=pending,
                                     on_table=lambda t: step(f"{t} checked"))
        await add_dead_letters(after, sqlite_store, pg_store)
        return ReconcileReport(primary, drained, repairs.repaired, repairs.failed, after,
                               requeued)
    finally:
        await pool.close()
        await sqlite_store.close()
        await pg_store.close()
