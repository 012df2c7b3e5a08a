"""The dual-write repository: one flag moves the primary; no acknowledged write is ever lost.

One write travels: caller -> validation -> primary store (the row and an outbox entry in one
transaction) -> mirror store (version-guarded, idempotent) -> outbox entry acknowledged. When
the mirror fails or is slower than MIRROR_TIMEOUT_MS, the call still succeeds: the entry stays
in the primary's outbox and the replay loop applies it, in commit order, until it lands.
Order between a replay and a live write of the same row does not matter: a mirror keeps the
highest version and tombstones of deletes. After a mirror failure, new writes skip the inline
attempt (a breaker, so an outage costs one timeout, not one per call) until the replay loop
reaches the store again. A mirror call that times out is abandoned, not cancelled: cancelling
a driver mid-statement can poison its connection.

Log events (structlog): `write.ok`, `write.failed` (primary refused or unreachable),
`mirror.failed`, `mirror.deferred`, `outbox.replayed`, `outbox.retry`, `outbox.dead_letter`,
`primary.flipped`, `primary.flip_refused`, `primary.flip_finished` (a flip its process left
half-way, finished by this one), `primary_file.invalid`.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any, TypedDict, TypeVar

import structlog
from prometheus_client import CollectorRegistry

from config import Settings
from config.settings import BACKENDS, Backend, ConfigError, other_backend
from metrics import Metrics
from proxy.clock import next_version
from proxy.codec import now_utc
from proxy.connect import SearchStores, resolve_dsn
from proxy.control import Control, newest
from proxy.deadletters import is_dead
from proxy.entity_methods import EntityMethods, stamp_create, stamp_update
from proxy.errors import (
    Fenced,
    FlipRefused,
    NotFoundError,
    OutcomeUnknown,
    SchemaMismatch,
    StoreUnavailable,
)
from proxy.flip_gate import dead_letter_refusal, outbox_figures, refusal
from proxy.mirror import (
    TIMED_OUT,
    MirrorPipeline,
    apply_following,
    deletes_a_parent,
    settle_missing_parents,
)
from proxy.models import Entity, SearchResult
from proxy.primary_source import read_primary_file, write_primary_file
from proxy.sqlite_file import backup_sqlite, is_legacy_file
from proxy.stores import migrations
from proxy.stores.base import ApplyOutcome, Mutation, Op, OutboxStats, Written
from proxy.stores.postgres import PostgresStore
from proxy.stores.searchtext import DEFAULT_LIMIT, check_limit
from proxy.stores.sqlite import SQLiteStore
from proxy.validation import parse_id
from shadow import RankedHit, ShadowRunner, ShadowStore
from shadow.experiment import DEFAULT_MAX_CONCURRENCY
from shadow.verdict import MirrorFigures, Verdict, refresh_ready
from shadow.worker import SHADOWS_IN_FLIGHT, Recording, SearchWorker

log = structlog.get_logger("cutover.repository")
T = TypeVar("T")

AnyStore = SQLiteStore | PostgresStore

REPLAY_BATCH = 500
PRIMARY_TIMEOUT_S = 10.0
FILE_POLL_S = 0.5
FOLLOW_S = 0.25  # how often a process reads the control record: it follows a flip within 1 s
FENCED_RETRY_S = 5.0  # how long a write refused for its epoch keeps retrying on the new primary


class _WriteGate:
    """Writes share the gate; a flip takes it alone, after the writes in flight finish."""

    def __init__(self) -> None:
        self._writers = 0
        self._open = asyncio.Event()  # cleared while a flip holds the gate
        self._open.set()
        self._idle = asyncio.Event()  # set while no write is in flight
        self._idle.set()

    def write(self) -> _WriteGate:
        return self  # `async with gate.write():` (a plain object: no generator per write)

    async def __aenter__(self) -> None:
        while not self._open.is_set():
            await self._open.wait()
        self._writers += 1
        self._idle.clear()

    async def __aexit__(self, *exc: object) -> None:
        self._writers -= 1
        if self._writers == 0:
            self._idle.set()

    @asynccontextmanager
    async def flip(self) -> AsyncIterator[None]:
        while not self._open.is_set():  # one flip at a time
            await self._open.wait()
        self._open.clear()
        try:
            await self._idle.wait()
            yield
        finally:
            self._open.set()


def _file_word(path: Path) -> Backend | None:
    """READ_PRIMARY_FILE's word at start-up: a bad or unreadable file stops the process; a
    missing one asks for nothing (said in the log, and by the watcher's metric)."""
    try:
        return read_primary_file(path)
    except FileNotFoundError:
        log.warning("primary_file.missing", path=str(path))
        return None
    except (OSError, ValueError) as exc:
        raise ConfigError(f"READ_PRIMARY_FILE={path}: {exc}") from None


class Repository(EntityMethods):
    """The application's one entry point: the contract's methods over both stores."""

    def __init__(
        self, settings: Settings, sqlite: SQLiteStore, postgres: PostgresStore, *,
        metrics: Metrics, shadow: ShadowRunner | None = None,
        replay_interval_s: float = 0.25,
    ) -> None:
        self.settings = settings
        self.metrics = metrics
        self.shadow = shadow
        self._stores: dict[str, AnyStore] = {"sqlite": sqlite, "postgres": postgres}
        #: runs a shadow search in this process: (backend, query, user id, limit) -> ids and
        #: match kinds (unused when the runner compares in the worker's child process)
        self.shadow_search: Callable[
            [str, str, uuid.UUID, int], Awaitable[Sequence[RankedHit]]
        ] = self._store_search
        self._primary: Backend = settings.read_primary
        # the control record this process acts on (proxy.control); None until `bootstrap`:
        # a repository built by hand writes unfenced, with its settings' primary
        self._control: Control | None = None
        #: the store and epoch of this process's latest acknowledged primary write (audits)
        self.last_write: tuple[str, int | None] | None = None
        self._gate = _WriteGate()
        self._mirror_timeout_s = settings.mirror_timeout_ms / 1000
        # per mirror target: bumped on every failure; a replay pass closes the breaker only if no
        # failure happened while it ran
        self._failures = {b: 0 for b in BACKENDS}
        self._breaker_open = {b: False for b in BACKENDS}
        self._abandoned: set[asyncio.Task[Any]] = set()
        self._pipelines = {b: MirrorPipeline(store, timeout_s=self._mirror_timeout_s)
                           for b, store in self._stores.items()}
        self._acks: dict[str, list[int]] = {b: [] for b in BACKENDS}
        # rows with a write between its primary write and the end of its inline mirror write:
        # the replay loop leaves their entries alone meanwhile (the inline write carries the
        # row's latest image; replaying the entry too would be work for nothing)
        self._mirroring: Counter[uuid.UUID] = Counter()
        self._pending_rows: frozenset[uuid.UUID] = frozenset()
        self._outbox: dict[str, OutboxStats] = {}
        self._replay_interval_s = replay_interval_s
        #: how long a flip waits for the writes pending for its target before `FlipRefused`
        self.drain_timeout_s = 15.0
        self._unfinished = (0, 0.0)  # an unfinished flip's epoch, and when first seen
        self._batch = {b: REPLAY_BATCH for b in BACKENDS}
        self._mirror_writes = 0
        self.verdict: Verdict | None = None
        self._wake = asyncio.Event()
        self._scan_due = False  # entries the inline writes do not cover wait in the outbox
        self._tasks: list[asyncio.Task[None]] = []
        self._closed = False
        metrics.set_read_primary(self._primary)

    # -- the flag --
    @property
    def read_primary(self) -> Backend:
        return self._primary

    @property
    def mirror_backend(self) -> Backend:
        return other_backend(self._primary)

    @property
    def stores(self) -> dict[str, AnyStore]:
        return dict(self._stores)

    @property
    def epoch(self) -> int | None:
        """The control record's epoch this process acts on (None before `bootstrap`)."""
        return None if self._control is None else self._control.epoch

    @property
    def dual_write(self) -> bool:
        return self.settings.dual_write if self._control is None else self._control.dual_write

    async def set_read_primary(self, backend: str, *, force: bool = False) -> None:
        """Move reads and the source of truth to `backend`, for every process sharing the
        stores; flipping back is the rollback.

        This process's writes in flight finish first; the mirror writes still waiting to reach
        `backend` (every process's) are replayed; the old primary's control record is fenced
        (no write carrying the old epoch commits there after it), the last waiting writes are
        replayed, and `backend`'s record names it. If the writes cannot be replayed (the store
        is down), dead letters for `backend` wait, or dual writes have stopped and `backend`
        is SQLite, `FlipRefused` unless `force` (an emergency rollback).
        """
        if backend not in BACKENDS:
            raise ValueError(f"read primary must be sqlite or postgres, not {backend!r}")
        target: Backend = backend
        file = self.settings.read_primary_file
        await self._flip(target, force=force, file_word=target if file else None)
        if file is not None:
            # after the flip, never before: the file shows operators the primary, and its word
            # is recorded as taken, so no watcher asks for it again
            write_primary_file(file, target)

    async def _flip(self, target: Backend, *, force: bool, file_word: str | None = None,
                    env_value: str | None = None, dual_write: bool | None = None) -> None:
        """Flip to `target` (or, when it is already primary, record the other changes)."""
        async with self._gate.flip():
            await self._follow()
            current = self._control
            if current is None:  # not bootstrapped: a repository of this process alone
                await self._flip_alone(target, force=force)
                return
            changes = replace(
                current,
                file_word=current.file_word if file_word is None else file_word,
                env_applied=current.env_applied | ({env_value} if env_value else set()),
                dual_write=current.dual_write if dual_write is None else dual_write,
            )
            if target == current.primary:
                if changes != current:
                    await self._record(replace(changes, epoch=current.epoch + 1),
                                       on=current.primary, expect_epoch=current.epoch)
                return
            if target == "sqlite" and not current.dual_write and not force:
                raise FlipRefused("dual writes are off: SQLite lacks every write since; a "
                                  "rollback would lose them (force it only if you accept that)")
            old = current.primary
            try:
                await self._drain_to(target)  # while writes go on: the bulk of it
            except Exception as exc:
                if not force:
                    log.warning("primary.flip_refused", target=target, reason=str(exc))
                    raise FlipRefused(f"cannot flip to {target}: {exc}") from exc
            new = replace(changes, primary=target, epoch=current.epoch + 1)
            try:
                fenced = await self._stores[old].fence_control(new, expect_epoch=current.epoch)
            except StoreUnavailable as exc:
                if not force:
                    raise FlipRefused(f"cannot fence {old}: {exc.reason}") from exc
                fenced = True  # an emergency rollback from a store that is down
            if not fenced:
                await self._follow()
                raise FlipRefused(f"another flip happened meanwhile; the primary is now "
                                  f"{self._primary}")
            try:
                await self._drain_to(target)  # nothing new reaches the old primary now
            except Exception as exc:
                if not force:
                    await self._hand_back(new, old, exc)
            try:
                await self._stores[target].advance_control(new)  # the target takes writes
            except StoreUnavailable as exc:
                if not force:
                    await self._hand_back(new, old, exc)
            self._adopt(new)
            log.info("primary.flipped", old=old, new=target, epoch=new.epoch, forced=force)

    async def _hand_back(self, new: Control, old: Backend, exc: Exception) -> None:
        """The flip to `new` cannot end (its last replay or the target's record failed): give
        the primary back to `old` with a newer epoch (epochs only ever grow), fenced on `old`,
        which holds `new` (the target never did), and raise `FlipRefused`. Unless the fleet
        finished the flip meanwhile (`_catch_up`, this process having stalled): then it stands,
        and the caller adopts it."""
        with contextlib.suppress(StoreUnavailable):
            if await self._stores[new.primary].read_control() == new:
                return
        back = replace(new, primary=old, epoch=new.epoch + 1)
        await self._record(back, on=old, expect_epoch=new.epoch)
        reason = exc.reason if isinstance(exc, StoreUnavailable) else str(exc)
        log.warning("primary.flip_refused", target=new.primary, reason=reason[:300])
        raise FlipRefused(f"cannot flip to {new.primary}: {reason}") from exc

    async def _flip_alone(self, target: Backend, *, force: bool) -> None:
        if target == self._primary:
            return
        try:
            await self._drain_to(target)
        except Exception as exc:
            if not force:
                raise FlipRefused(f"cannot flip to {target}: {exc}") from exc
        old, self._primary = self._primary, target
        self.metrics.set_read_primary(target)
        log.info("primary.flipped", old=old, new=target, forced=force)

    async def _record(self, new: Control, *, on: Backend, expect_epoch: int) -> None:
        """Write `new` on both stores: first on `on`, fenced (only if its copy is still at
        `expect_epoch`), then on the other."""
        if not await self._stores[on].fence_control(new, expect_epoch=expect_epoch):
            await self._follow()
            raise FlipRefused("another flip happened meanwhile")
        with contextlib.suppress(StoreUnavailable):
            await self._stores[other_backend(on)].advance_control(new)
        self._adopt(new)

    # -- following the control record --
    async def bootstrap(self) -> None:
        """Read (or create) the control record, then act on what the settings ask for (see
        proxy.control). A bad READ_PRIMARY_FILE stops here (`ConfigError`)."""
        file = self.settings.read_primary_file
        word = _file_word(file) if file is not None else None
        copies = await self._read_copies()
        current = newest(*copies.values())
        if current is None:
            seed = Control(word or self.settings.read_primary, 1, self.settings.dual_write,
                           frozenset({self.settings.read_primary}), word)
            for store in self._stores.values():
                with contextlib.suppress(Exception):  # down, or its schema not there yet
                    await store.advance_control(seed)
            copies = await self._read_copies()
            current = newest(*copies.values())
            if current is None:
                # neither store can hold it now: act on the settings alone (unfenced) and try
                # again from the follow loop
                log.error("control.unavailable", keeping=self._primary)
                return
        await self._catch_up(copies, current)
        self._adopt(current)
        wanted: Backend | None = None
        env_value = None
        if self.settings.read_primary_given and \
                self.settings.read_primary not in current.env_applied:
            wanted, env_value = self.settings.read_primary, self.settings.read_primary
        if word is not None and word != current.file_word:
            wanted = word  # the later request of the two
        off = False if not self.settings.dual_write and current.dual_write else None
        if wanted is None and env_value is None and off is None:
            return
        try:
            await self._flip(wanted or current.primary, force=False, env_value=env_value,
                             file_word=word if word != current.file_word else None,
                             dual_write=off)
        except FlipRefused as exc:
            log.error("primary.request_refused", wanted=wanted, keeping=self._primary,
                      reason=str(exc)[:300])

    async def _read_copies(self) -> dict[str, Control | None]:
        """Each reachable store's copy of the control record (None: it has none yet)."""
        copies: dict[str, Control | None] = {}
        for backend, store in self._stores.items():
            with contextlib.suppress(StoreUnavailable):  # the other copy answers
                copies[backend] = await store.read_control()
        return copies

    async def _follow(self) -> None:
        """Adopt the newest control record either store holds."""
        if self._control is None:
            return
        copies = await self._read_copies()
        found = newest(*copies.values())
        if found is not None:
            await self._catch_up(copies, found)
            self._adopt(found)

    async def _catch_up(self, copies: dict[str, Control | None], current: Control) -> None:
        """Bring a copy left behind (its store was down) up to `current`.

        Where `current` names that store primary, a flip to it is not finished: writing that
        copy is the flip's last step, after its last replay, and until then the store must not
        take primary writes. Its own process has `drain_timeout_s` for that; past it, that
        process stopped (or the store was down), and this one finishes the flip the same way:
        the last replay, then the copy. Otherwise the fleet could write nowhere."""
        for backend, copy in copies.items():
            if copy == current:
                continue
            with contextlib.suppress(Exception):  # a store still down: the next look
                if current.primary == backend:
                    if self._unfinished[0] != current.epoch:
                        self._unfinished = (current.epoch, time.monotonic())
                    waited = time.monotonic() - self._unfinished[1]
                    if waited < self.drain_timeout_s + 1.0 or \
                            not await self._replayed_to(backend):
                        continue
                    log.warning("primary.flip_finished", new=backend, epoch=current.epoch)
                await self._stores[backend].advance_control(current)

    def _adopt(self, record: Control) -> None:
        if self._control is not None and record.epoch <= self._control.epoch:
            return
        old, self._control, self._primary = self._primary, record, record.primary
        self.metrics.set_read_primary(record.primary)
        self.metrics.set_epoch(record.epoch)
        self.metrics.set_dual_write(record.dual_write)
        if old != record.primary:
            log.info("primary.followed", old=old, new=record.primary, epoch=record.epoch)

    async def _follow_loop(self) -> None:
        while not self._closed:
            await asyncio.sleep(FOLLOW_S)
            with contextlib.suppress(Exception):  # a store down: the other copy still answers
                if self._control is None:
                    await self.bootstrap()
                else:
                    await self._follow()

    async def _drain_to(self, target: Backend) -> None:
        """Replay every pending write for `target`; raise if some remain after the timeout, or
        if dead letters for it are waiting (the store would take over without their rows)."""
        deadline = time.monotonic() + self.drain_timeout_s
        while not await self._replayed_to(target):
            if time.monotonic() > deadline:
                raise FlipRefused(f"mirror writes to {target} are still pending")
            await asyncio.sleep(0.05)
        stats = await self._stores[other_backend(target)].outbox_stats(target)
        dead = dead_letter_refusal(stats.dead, target)
        if dead is not None:
            raise FlipRefused(dead)

    async def _replayed_to(self, target: Backend) -> bool:
        """One replay pass to `target`; True when no write waits for it any more."""
        source = self._stores[other_backend(target)]
        await self._replay_pass(source, target)
        await self._flush_acks()
        return not await source.outbox_pending(target, 1)

    async def flip_refusal(self, target: Backend, *, override: str = "force") -> str | None:
        """Why an operator's flip to `target` is refused now (proxy.flip_gate), None when it
        may go: dead letters, a backlog of mirror writes, or a no-go verdict."""
        outbox = outbox_figures(await self.outbox_stats())
        verdict = await self.current_verdict() if target == "postgres" else None
        return refusal(target, self._primary, outbox, verdict, override=override)

    async def current_verdict(self) -> Verdict | None:
        """The go/no-go verdict now, the shadows in flight compared first (None without a
        shadow store); also published as `cutover_ready`."""
        if self.shadow is None or self.shadow.store is None:
            return None
        await self.shadow.drain()
        await self._refresh_outbox_metrics()
        await self._refresh_verdict()
        return self.verdict

    # -- writes --
    async def _write(
        self, entity: Entity, op: Op, row_id: uuid.UUID, values: dict[str, Any] | None,
    ) -> dict[str, Any] | None:
        async with self._gate.write():
            self._mirroring[row_id] += 1
            try:
                return await self._primary_then_mirror(entity, op, row_id, values)
            finally:
                self._mirroring[row_id] -= 1
                if not self._mirroring[row_id]:
                    del self._mirroring[row_id]

    async def _primary_then_mirror(
        self, entity: Entity, op: Op, row_id: uuid.UUID, values: dict[str, Any] | None,
    ) -> dict[str, Any] | None:
        deadline = time.monotonic() + FENCED_RETRY_S
        while True:
            primary = self._stores[self._primary]
            target = self.mirror_backend
            epoch = self.epoch
            start = time.perf_counter()
            try:
                written = await self._primary_write(primary, entity, op, row_id, values,
                                                    [target] if self.dual_write else [], start,
                                                    epoch)
                break
            except Fenced as exc:
                # the primary moved since this process looked: follow it and write there
                self.metrics.fenced_write(primary.backend)
                log.info("write.fenced", backend=primary.backend, epoch=exc.epoch,
                         current=exc.current)
                if time.monotonic() > deadline:
                    raise StoreUnavailable(primary.backend, "a flip is in progress") from exc
                await self._follow()
                if self.epoch == epoch:  # the flip is still on its way: wait a moment
                    await asyncio.sleep(0.02)
        self.last_write = (primary.backend, epoch)
        self._count(primary.backend, entity, op, "ok", start)
        if written.seq is None:
            return written.row
        # the mirror write carries what the primary committed, with the primary's version, and
        # starts only once the primary has committed: the mirror follows the primary's order
        mutation = Mutation(entity.name, op, row_id, written.version, written.row)
        if written.cascaded:  # their own entries too: the replay loop finds them applied
            self._scan_due = True
        if self._breaker_open[target]:
            self.metrics.observe_write(target, entity.name, op, "deferred", 0.0)
            self._wake.set()
            return written.row
        await self._mirror(mutation, written.seq, primary.backend, target, written.cascaded)
        return written.row

    async def _primary_write(
        self, store: AnyStore, entity: Entity, op: Op, row_id: uuid.UUID,
        values: dict[str, Any] | None, targets: Sequence[str], start: float,
        epoch: int | None,
    ) -> Written:
        clock = next_version()
        try:
            async with asyncio.timeout(PRIMARY_TIMEOUT_S):
                if op == "insert":
                    assert values is not None
                    return await store.insert_row(entity, values, clock=clock,
                                                  outbox_targets=targets, epoch=epoch)
                if op == "update":
                    assert values is not None
                    return await store.update_row(entity, row_id, values, clock=clock,
                                                  outbox_targets=targets, epoch=epoch)
                return await store.delete_row(entity, row_id, clock=clock,
                                              outbox_targets=targets, epoch=epoch)
        except TimeoutError as exc:
            # the statement was sent: it may still commit (and then be mirrored). Say so, so a
            # caller knows a blind retry of a create may duplicate it (retry with the same id)
            self._count(store.backend, entity, op, "timeout", start)
            self.metrics.store_error(store.backend, "write")
            log.error("write.failed", backend=store.backend, entity=entity.name, op=op,
                      reason="timeout")
            raise OutcomeUnknown(store.backend, f"no answer within {PRIMARY_TIMEOUT_S:g} s; "
                                 "the write may still commit") from exc
        except StoreUnavailable as exc:
            self._count(store.backend, entity, op, "error", start)
            self.metrics.store_error(store.backend, "write")
            log.error("write.failed", backend=store.backend, entity=entity.name, op=op,
                      reason=exc.reason)
            raise

    async def _mirror(self, mutation: Mutation, seq: int, source: str, target: Backend,
                      cascaded: Sequence[Mutation] = ()) -> None:
        """Mirror one committed write inline (a delete with the writes its ON DELETE rules
        made, which the mirror applies first), within the timeout; never raises. A failure or a
        timeout leaves the outbox entry to the replay loop and opens the breaker."""
        self._mirror_writes += 1
        start = time.perf_counter()
        outcome = "ok"
        try:
            primary, mirror = self._stores[source], self._stores[target]
            if deletes_a_parent(mutation):
                # a parent's delete goes after its children's writes (`apply_following`):
                # rare enough to skip the batching pipeline
                result = (await self._bounded(
                    apply_following(primary, mirror, [*cascaded, mutation]),
                    self._mirror_timeout_s))[-1]
            else:
                result = await self._pipelines[target].submit(mutation)  # within its timeout
                if result is not TIMED_OUT:
                    result = (await settle_missing_parents(primary, mirror, [mutation],
                                                           [result]))[0]
            if result is TIMED_OUT:
                outcome = "timeout"
                reason = f"no answer within {self.settings.mirror_timeout_ms} ms"
            elif result.outcome is ApplyOutcome.FAILED:
                outcome, reason = "error", result.error or "failed"
        except asyncio.CancelledError:
            task = asyncio.current_task()
            if task is not None and task.cancelling():
                raise  # the caller is being cancelled: not ours to swallow
            outcome, reason = "error", "the mirror pipeline closed"
        except Exception as exc:
            outcome, reason = "error", f"{type(exc).__name__}: {exc}"[:300]
        self._count(target, mutation.entity, mutation.op, outcome, start)
        if outcome == "ok":
            self._acks[source].append(seq)
            return
        self._failures[target] += 1
        self._breaker_open[target] = True
        self.metrics.mirror_failure(target, mutation.entity)
        log.warning("mirror.failed", backend=target, entity=mutation.entity, op=mutation.op,
                    outcome=outcome, reason=reason)
        self._wake.set()

    def _count(self, backend: str, entity: Entity | str, op: str, outcome: str,
               start: float) -> None:
        name = entity if isinstance(entity, str) else entity.name
        self.metrics.observe_write(backend, name, op, outcome, time.perf_counter() - start)

    # -- primitives behind the named methods --
    async def _create(self, entity: Entity, values: dict[str, Any]) -> Any:
        values = stamp_create(entity, values, now_utc())
        row = await self._write(entity, "insert", values["id"], values)
        return entity.make(row or values)

    async def _update(self, entity: Entity, row_id: uuid.UUID, changes: dict[str, Any]) -> Any:
        changes = stamp_update(entity, changes, now_utc())
        row = await self._write(entity, "update", row_id, changes)
        assert row is not None
        return entity.make(row)

    async def _delete(self, entity: Entity, row_id: uuid.UUID) -> None:
        await self._write(entity, "delete", row_id, None)

    async def _get(self, entity: Entity, row_id: uuid.UUID) -> Any:
        row = await self._stores[self._primary].get_row(entity, row_id)
        if row is None:
            raise NotFoundError(entity.name, row_id)
        return entity.make(row)

    async def _list(self, entity: Entity, owner: Any, limit: int, offset: int) -> list[Any]:
        rows = await self._stores[self._primary].list_rows(entity, owner, limit=limit,
                                                           offset=offset)
        return [entity.make(r) for r in rows]

    # -- search --
    async def search_questions(
        self, query: str, *, user_id: uuid.UUID | str, limit: int = DEFAULT_LIMIT
    ) -> list[SearchResult]:
        """Search the primary; a sampled copy runs on the other store off the caller's path."""
        check_limit(limit)
        uid = parse_id(user_id, "user_id")
        primary = self._stores[self._primary]
        shadow = self.shadow
        if shadow is not None:
            shadow.primary_started()
        start = time.perf_counter()
        try:
            results = await primary.search(query, uid, limit)
        except StoreUnavailable:
            self.metrics.store_error(primary.backend, "search")
            raise
        finally:
            self.metrics.observe_search(primary.backend, "primary", time.perf_counter() - start)
            if shadow is not None:
                shadow.primary_finished()
        if shadow is not None:
            other, shadow_search = self.mirror_backend, self.shadow_search
            shadow.submit(
                query, user_id=uid, limit=limit, primary_backend=primary.backend,
                primary_results=results,
                # a remote comparer (the worker's child) searches itself
                run_shadow=None if shadow.remote is not None
                else lambda: shadow_search(other, query, uid, limit),
            )
        return results

    async def _store_search(
        self, backend: str, query: str, user_id: uuid.UUID, limit: int
    ) -> list[SearchResult]:
        # comparisons read ids and match kinds only: skip the highlighting work
        return await self._stores[backend].search(query, user_id, limit, highlights=False)

    def pending_rows(self) -> frozenset[uuid.UUID]:
        """Rows with a mirror write still waiting (refreshed by the background loop)."""
        return self._pending_rows

    # -- the replay loop --
    async def replay_once(self) -> int:
        """One pass over both outboxes (entries from before a flip included); returns applied."""
        await self._flush_acks()  # first, so entries already mirrored are not applied again
        applied = 0
        for source_name in BACKENDS:
            target = other_backend(source_name)
            applied += await self._replay_pass(self._stores[source_name], target)
        await self._flush_acks()
        return applied

    async def _replay_pass(self, source: AnyStore, target: Backend) -> int:
        generation = self._failures[target]
        try:
            entries = await source.outbox_pending(target, self._batch[target])
        except StoreUnavailable:
            return 0
        # skip entries a live write is mirroring right now (its primary may have committed a
        # moment ago), or already mirrored and waiting to be deleted (the acknowledgements
        # below): re-applying them would be wasted work, and logged as replays that were not
        acked = set(self._acks[source.backend])
        entries = [e for e in entries
                   if e.seq not in acked and e.mutation.row_id not in self._mirroring]
        if not entries:
            if self._failures[target] == generation:
                self._breaker_open[target] = False
            return 0
        try:
            results = await self._bounded(
                apply_following(source, self._stores[target], [e.mutation for e in entries]),
                max(self._mirror_timeout_s, 1.0) * 5 + 0.02 * len(entries),
            )
        except Exception as exc:
            # a slow store gets smaller batches, so a pass can finish within its time
            self._batch[target] = max(10, self._batch[target] // 2)
            self._failures[target] += 1
            self.metrics.store_error(target, "replay")
            log.warning("outbox.retry", backend=target, pending=len(entries),
                        reason=f"{type(exc).__name__}: {exc}"[:300])
            return 0
        self._batch[target] = min(REPLAY_BATCH, self._batch[target] * 2)
        done: list[int] = []
        for entry, result in zip(entries, results, strict=True):
            if result.outcome is ApplyOutcome.FAILED:
                self._failures[target] += 1
                dead = is_dead(entry, result)
                await source.outbox_retry(entry.seq, result.error or "failed", dead=dead)
                event = "outbox.dead_letter" if dead else "outbox.retry"
                log.warning(event, backend=target, entity=entry.mutation.entity,
                            op=entry.mutation.op, attempts=entry.attempts + 1,
                            reason=(result.error or "")[:300])
            else:
                done.append(entry.seq)
        if done:
            self._acks[source.backend].extend(done)
            log.info("outbox.replayed", backend=target, count=len(done))
            if self._failures[target] == generation:
                self._breaker_open[target] = False
        return len(done)

    async def _bounded(self, call: Awaitable[T], timeout_s: float) -> T:
        """Await `call` for at most `timeout_s`; on timeout abandon it (never cancel it)."""
        task = asyncio.ensure_future(call)
        done, _ = await asyncio.wait({task}, timeout=timeout_s)
        if task in done:
            return task.result()
        self._abandoned.add(task)
        task.add_done_callback(_forget(self._abandoned))
        raise TimeoutError

    async def _flush_acks(self) -> None:
        for backend, seqs in self._acks.items():
            if seqs:
                batch, self._acks[backend] = seqs, []
                try:
                    # inline mirror commits may skip the WAL flush (see `apply_inline`): make
                    # them durable before the outbox forgets them
                    await self._stores[other_backend(backend)].flush_wal()
                    await self._stores[backend].outbox_ack(batch)
                except Exception:
                    # unacknowledged entries are replayed again: harmless, they are idempotent
                    self._acks[backend].extend(batch)

    async def _refresh_outbox_metrics(self) -> None:
        rows: set[uuid.UUID] = set()
        for source_name in BACKENDS:
            target = other_backend(source_name)
            try:
                stats = await self._stores[source_name].outbox_stats(target)
            except Exception:
                continue
            self._outbox[target] = stats
            rows |= stats.by_row
        for backend, figures in outbox_figures(self._outbox).items():
            self.metrics.set_outbox(backend, figures.pending, figures.oldest_age_s,
                                    figures.dead_letters)
        self._pending_rows = frozenset(rows)

    async def _refresh_verdict(self) -> None:
        """Publish `cutover_ready` from the shadow window, the outbox and mirror failures."""
        if self.shadow is None or self.shadow.store is None:
            return
        figures = outbox_figures(self._outbox)
        mirror = MirrorFigures(writes=self._mirror_writes, failures=sum(self._failures.values()))
        self.verdict = await refresh_ready(self.metrics, self.shadow.store, figures, mirror)

    async def outbox_stats(self) -> dict[str, OutboxStats]:
        """Mirror writes waiting to reach each backend (fresh from both stores)."""
        await self._refresh_outbox_metrics()
        return dict(self._outbox)

    async def _replay_loop(self) -> None:
        last_metrics = last_scan = 0.0
        while not self._closed:
            try:
                await self._flush_acks()
                # While every mirror write lands inline, the outbox holds only entries being
                # acknowledged: scanning it would re-read them for nothing. Scan after a
                # failure, and every few seconds as a safety net (entries left by a crash).
                if (any(self._breaker_open.values()) or self._scan_due
                        or time.monotonic() - last_scan > 5.0):
                    last_scan, self._scan_due = time.monotonic(), False
                    await self.replay_once()
                if time.monotonic() - last_metrics > 1.0:
                    last_metrics = time.monotonic()
                    await self._refresh_outbox_metrics()
                    await self._refresh_verdict()
            except Exception as exc:  # the loop must survive anything a store throws
                log.error("outbox.loop_error", reason=f"{type(exc).__name__}: {exc}"[:300])
            busy = any(self._breaker_open.values())
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(),
                                       self._replay_interval_s * (1 if busy else 2))
            self._wake.clear()

    async def _watch_primary_file(self, path: Path) -> None:
        """A new word in READ_PRIMARY_FILE asks for a flip (gated like any other); a bad file
        keeps the record's primary, said loudly (a log line per distinct problem, a metric)."""
        last_error = ""
        while not self._closed:
            await asyncio.sleep(FILE_POLL_S)
            try:
                wanted = await asyncio.to_thread(read_primary_file, path)
            except (OSError, ValueError) as exc:
                self.metrics.set_primary_source_error(True)
                if str(exc) != last_error:
                    log.error("primary_file.invalid", path=str(path), reason=str(exc),
                              keeping=self._primary)
                    last_error = str(exc)
                continue
            self.metrics.set_primary_source_error(False)
            if self._control is None or wanted == self._control.file_word:
                last_error = ""
                continue
            try:
                await self._flip(wanted, force=False, file_word=wanted)
                last_error = ""
            except Exception as exc:
                if str(exc) != last_error:
                    log.error("primary.flip_failed", target=wanted, keeping=self._primary,
                              reason=str(exc)[:300])
                    last_error = str(exc)

    # -- lifecycle --
    def start(self) -> None:
        """Start the background loops (replay; READ_PRIMARY_FILE watcher when set)."""
        self._tasks.append(asyncio.create_task(self._replay_loop(), name="cutover-replay"))
        self._tasks.append(asyncio.create_task(self._follow_loop(), name="cutover-follow"))
        if self.settings.read_primary_file is not None:
            self._tasks.append(asyncio.create_task(
                self._watch_primary_file(self.settings.read_primary_file),
                name="cutover-primary-file"))

    async def aclose(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._wake.set()
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        if self.shadow is not None:
            with contextlib.suppress(Exception):
                await self.shadow.aclose()
        for pipeline in self._pipelines.values():
            await pipeline.aclose()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self._flush_acks(), 5)


def _forget(tasks: set[asyncio.Task[Any]]) -> Any:
    def done(task: asyncio.Task[Any]) -> None:
        tasks.discard(task)
        if not task.cancelled():
            task.exception()  # retrieved: an abandoned call's failure is already in the outbox

    return done


def _committed() -> asyncio.Future[bool]:
    done: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
    done.set_result(True)
    return done


def default_shadow_path(settings: Settings) -> Path:
    """Where comparisons are kept: `shadow.db` beside the SQLite database."""
    return settings.sqlite_path.with_name("shadow.db")


async def _same_schema_revision(sqlite: SQLiteStore, postgres: PostgresStore) -> None:
    """Refuse to open (`SchemaMismatch`) on stores at different schema revisions, or both at
    one older than this code's newest: its writes could name a column a store lacks. A store at
    a newer revision is fine (revisions only add what older code ignores). A store that does not
    answer is not compared: the repository opens without it, as before."""
    try:
        revisions = await sqlite.schema_revision(), await postgres.schema_revision()
    except StoreUnavailable:
        return
    needed = migrations.head()
    if revisions[0] != revisions[1] or revisions[0] in migrations.older_than(needed):
        raise SchemaMismatch(*revisions, needed)


class GivenStores(TypedDict, total=False):
    """Open stores for `open_repository` to use instead of opening its own."""

    sqlite: SQLiteStore
    postgres: PostgresStore


@asynccontextmanager
async def open_repository(
    settings: Settings, *, registry: CollectorRegistry | None = None,
    shadow_store_path: Path | None = None, init_schema: bool = True,
    stores: GivenStores | None = None,
) -> AsyncIterator[Repository]:
    """Open both stores, the shadow runner and the background loops; close them all on exit.

    `stores` supplies open stores to use instead of opening them from `settings` (one or
    both, keyed by backend, on the same databases as `settings` names); they stay the
    caller's to close.
    """
    registry = registry if registry is not None else CollectorRegistry()
    metrics = Metrics(registry)
    dsn = await resolve_dsn(settings)
    given: GivenStores = stores or {}
    sqlite = given.get("sqlite") or SQLiteStore(settings.sqlite_path)
    postgres = given.get("postgres") or PostgresStore(dsn)
    server = None
    shadow_store: ShadowStore | None = None
    worker: SearchWorker | None = None
    repo: Repository | None = None
    try:
        if init_schema:
            # a legacy app.db is upgraded in place only after the backup `schema init` writes
            if is_legacy_file(settings.sqlite_path):
                backup_sqlite(settings.sqlite_path)
            await sqlite.init_schema()
            await postgres.init_schema()
        await _same_schema_revision(sqlite, postgres)
        shadow_store = ShadowStore(shadow_store_path or default_shadow_path(settings))
        repo = Repository(settings, sqlite, postgres, metrics=metrics)
        in_child = settings.shadow_worker == "process"
        repo.shadow = ShadowRunner(
            metrics, sample_rate=settings.shadow_sample_rate,
            timeout_s=settings.shadow_timeout_ms / 1000, store=shadow_store,
            pending_rows=repo.pending_rows,
            max_concurrency=SHADOWS_IN_FLIGHT if in_child else DEFAULT_MAX_CONCURRENCY,
        )
        if in_child:
            # the child searches, compares and records (log lines, the store's rows) itself
            worker = SearchWorker(
                SearchStores(settings.sqlite_path, dsn),
                timeout_s=settings.shadow_timeout_ms / 1000,
                recording=Recording.like(repo.shadow.recorder),
                on_internal_error=metrics.shadow_internal_error,
            )
            await worker.start()
            repo.shadow.remote = worker
        metrics.set_instance(uuid.uuid4().hex[:12])  # tells this process apart in Prometheus
        await repo.bootstrap()
        repo.start()
        if settings.metrics_port is not None:
            from metrics import serve_metrics

            server = serve_metrics(registry, settings.metrics_host, settings.metrics_port)
        yield repo
    finally:
        if repo is not None:
            await repo.aclose()
        if worker is not None:
            await worker.aclose()
        if server is not None:
            server.close()
        if "sqlite" not in given:
            await sqlite.close()
        if "postgres" not in given:
            await postgres.close()
        if shadow_store is not None:
            shadow_store.close()


