"""`cutover backfill`: stream a legacy SQLite database into PostgreSQL, safely beside dual writes.

A batch lands in one PostgreSQL transaction that also moves its checkpoint, so a run killed at any
point resumes with no gap and no duplicate:
- rows are read from the source (opened read-only) in rowid order, with a flag per reference
  saying whether the parent exists in the source, each read checked against rowids renumbered
  under the pass (`proxy.migrate.source`): no row is lost, and when the rows moved too far to
  tell, the table is read again;
- every value is checked against its target column (`proxy.migrate.checks`). A row with any
  problem is rejected whole and each problem is reported; a value that lands changed (a REAL
  rounded to the column's scale, sub-microsecond digits dropped, an orphan reference set to NULL)
  is reported too. Nothing is replaced silently;
- the good rows go in with `row_version` 0, so a row the repository wrote (version > 0) is never
  overwritten: straight COPY into a table that was empty at the start (the fast path; as a
  superuser with the per-row foreign key checks off, one anti-join checking the whole table at
  its end instead), else COPY into a temp table and `INSERT ... SELECT ... ON CONFLICT DO
  NOTHING` that skips tombstoned rows and rows whose parent the repository deleted meanwhile;
- the problems go to `cutover_backfill_rejects` (verify reads them), ids that were not UUIDs to
  `legacy_ids`, the last row read (rowid and id) to `cutover_backfill_progress`.
After a table: rows the repository deleted while they were being copied are swept (their
tombstone is newer), references are checked, and its indexes are built if they were deferred.

The typo vocabulary (counted by triggers on questions) is, for a load into an empty questions
table, counted once at the end in one set-based statement (`proxy.migrate.vocabulary`): the pass's
sessions defer the triggers, whose per-batch upsert was planned on the statistics of a table
growing under it (the same file took 11 s or 70 s). The pass's progress holds a row for it, so a
run stopped before its recount leaves it owed to the run that resumes.

Orphans: a required parent missing from the source (or rejected) rejects the row ("orphan:
users X missing"); a nullable one (typing_logs.question_id) lands as NULL, reported. A parent the
repository deleted after dual writes began takes its children with it, as ON DELETE would have.

Speed: parents load before children (users, study_books, questions, typing_logs) while
learning_events, which has no parent, loads beside them; big tables load as `jobs` rowid ranges
at once.
A table empty at the start has its secondary and search indexes dropped and built once it is
loaded, beside the tables still loading; a table holding rows keeps them (live searches may be
using them).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import itertools
import json
import re
import sqlite3
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import asyncpg

from proxy.errors import BackfillRunning, BadSource, StoreUnavailable
from proxy.migrate.checks import PROBLEM_COLUMNS, Batch, Problem, RowChecker, problem_records
from proxy.migrate.columnar import ColumnarBatch, ColumnarSource, open_columnar
from proxy.migrate.source import (
    Part,
    mark_rowid,
    on_source,
    open_source,
    parts_hold,
    plan_parts,
    read_batch,
    row_mark,
)
from proxy.migrate.vocabulary import WORDS, rebuild_vocabulary
from proxy.models import BY_TABLE, ENTITIES, Entity
from proxy.stores import migrations, postgres_schema

DEFAULT_BATCH_SIZE = 2000  # rows per transaction; a 2000-row batch of questions is ~3 MB
DEFAULT_JOBS = 2  # the machine's cores: loads per big table, and the recount's parts
REJECTS_TABLE = "cutover_backfill_rejects"
PROGRESS_TABLE = "cutover_backfill_progress"
# The vocabulary's recount has a progress row too (WORDS, part 0): not done while a pass owes it.
# Parents before children; learning_events has no parent and runs on its own lane, after the
# vocabulary's count when the pass owes a recount (`LATE`).
LANES: tuple[tuple[str, ...], ...] = (
    ("users", "study_books", "questions", "typing_logs"),
    ("learning_events",),
)
# Loaded once the recount has counted: the rest of the recount (the fill, its key, its trigram
# index) runs on one backend and leaves a core to this load, which takes little of the server;
# loaded beside the questions instead, it slowed the questions and the count that waits for them
# (`bench/scale.py --sizes 300k,3M --steps backfill`: docs/backfill-at-scale.md).
LATE = "learning_events"
ORDER = tuple(e.table for e in ENTITIES)
_LOCK_KEY = 7715002

DDL = f"""
CREATE TABLE IF NOT EXISTS {PROGRESS_TABLE} (
    table_name TEXT NOT NULL,
    part INTEGER NOT NULL,
    source TEXT NOT NULL,
    read_by TEXT,
    after_rowid BIGINT,
    until_rowid BIGINT,
    first_row TEXT,
    end_row TEXT,
    last_row TEXT,
    done BOOLEAN NOT NULL DEFAULT false,
    read BIGINT NOT NULL DEFAULT 0,
    inserted BIGINT NOT NULL DEFAULT 0,
    present BIGINT NOT NULL DEFAULT 0,
    skipped BIGINT NOT NULL DEFAULT 0,
    rejected BIGINT NOT NULL DEFAULT 0,
    changed BIGINT NOT NULL DEFAULT 0,
    updated_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (table_name, part)
);
CREATE TABLE IF NOT EXISTS {REJECTS_TABLE} (
    seq BIGSERIAL PRIMARY KEY,
    table_name TEXT NOT NULL,
    row_id TEXT,
    mapped_id UUID,
    column_name TEXT,
    value JSONB,
    new_value JSONB,
    reason TEXT NOT NULL,
    kind TEXT NOT NULL CHECK (kind IN ('rejected', 'changed', 'skipped')),
    at TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE INDEX IF NOT EXISTS idx_{REJECTS_TABLE}_mapped ON {REJECTS_TABLE} (table_name, mapped_id);
-- a progress table from before rowid order: its rows say nothing in read_by, so a pass it
-- recorded is not resumed but started afresh
ALTER TABLE {PROGRESS_TABLE} ADD COLUMN IF NOT EXISTS read_by TEXT,
    ADD COLUMN IF NOT EXISTS after_rowid BIGINT, ADD COLUMN IF NOT EXISTS until_rowid BIGINT,
    ADD COLUMN IF NOT EXISTS first_row TEXT, ADD COLUMN IF NOT EXISTS last_row TEXT,
    ADD COLUMN IF NOT EXISTS end_row TEXT;
"""


# -- what a run reports ---------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class TableReport:
    """Counts for one table over the whole pass (resumed runs included)."""

    read: int = 0
    inserted: int = 0
    present: int = 0  # already in PostgreSQL (written by the repository or an earlier pass)
    skipped: int = 0  # deleted through the repository since dual writes began
    rejected: int = 0
    changed: int = 0  # landed with a reported change


@dataclass(frozen=True, slots=True)
class BackfillReport:
    source: str
    seconds: float
    resumed: bool
    tables: dict[str, TableReport]
    rejects_file: str
    problems: int
    indexes_built: tuple[str, ...]
    fast_path: tuple[str, ...]  # tables loaded by COPY straight in
    fk_checked_after: tuple[str, ...]  # of those, tables whose foreign keys were checked once,
    # at the end, instead of per row
    timings: dict[str, float]

    def to_json(self) -> dict[str, Any]:
        out = asdict(self)
        out["tables"] = {t: asdict(r) for t, r in self.tables.items()}
        return out


Progress = Callable[[str, int], None]  # (table, rows just read)


# -- loading a part ---------------------------------------------------------------------------


class PartLoader:
    """Copies one part batch by batch; each batch is one transaction with its checkpoint."""

    def __init__(self, part: Part, pool: asyncpg.Pool, source_path: Path,
                 checker: RowChecker, *, batch_size: int, fast: FastPath,
                 progress: Progress, moved: asyncio.Event, columnar: bool = True) -> None:
        self.part = part
        self.entity = BY_TABLE[part.table]
        self.pool = pool
        self.source_path = source_path
        self.checker = checker
        self.batch_size = batch_size
        self.fast = fast
        self.progress = progress
        self.cols = list(self.entity.column_names)
        self.required = [c for c in self.entity.columns if c.references and not c.nullable]
        self.optional = [c for c in self.entity.columns if c.references and c.nullable]
        self.reading: concurrent.futures.Future[Any] | None = None  # the batch read ahead
        self.moved = moved  # set by the table's first part to find its rowids renumbered
        self.columnar = columnar  # plain batches through `proxy.migrate.columnar`

    async def run(self, last_row: str | None) -> None:
        """Copy the part from after `last_row` (its checkpoint; None: from its start)."""
        source = await asyncio.to_thread(open_source, self.source_path)
        reader = concurrent.futures.ThreadPoolExecutor(1, f"read-{self.part.table}")
        columnar = None
        try:
            if self.columnar:
                columnar = await asyncio.wrap_future(reader.submit(
                    open_columnar, self.source_path, self.entity, self.checker.rejected,
                    self.batch_size))
            await self._run(source, columnar, reader, last_row)
        finally:
            if self.reading is not None:
                # a batch read ahead may still be running on the connection (also when this
                # task was cancelled: its thread was not): closing the connection under the
                # read crashed the whole process (a segfault, not an exception)
                concurrent.futures.wait([self.reading])
            source.close()
            if columnar is not None:
                columnar.close()
            reader.shutdown(wait=False)

    async def _run(self, source: sqlite3.Connection, columnar: ColumnarSource | None,
                   reader: concurrent.futures.ThreadPoolExecutor, last_row: str | None) -> None:
        p = self.part
        start = (p.after, p.first_row) if last_row is None else (mark_rowid(last_row), last_row)

        def next_batch(last: Sequence[Sequence[Any]]) -> Any:
            got = None if columnar is None else columnar.read(self.batch_size, p.until, start,
                                                              last)
            return got or read_batch(source, self.entity, self.batch_size, p.until, start,
                                     last, p.end_row)

        def read(last: Sequence[Sequence[Any]]) -> asyncio.Future[Any]:
            self.reading = reader.submit(next_batch, last)
            got = asyncio.wrap_future(self.reading)
            # a read ahead left unused when the part stops: its failure says nothing more
            got.add_done_callback(lambda f: f.cancelled() or f.exception())
            return got

        pending = read(())
        while not self.moved.is_set():
            got = await pending
            if got is None:
                self.moved.set()  # the table is read again from its start (`load`)
                return
            if isinstance(got, ColumnarBatch):  # every row plain and new: checked already
                rows: Sequence[Sequence[Any]] = got.rows
                batch, fresh = Batch(copy_data=got.copy_data, copy_count=len(rows)), len(rows)
                pending = read(rows)
            else:
                rows, new = got
                if not rows:
                    await self._write(Batch(), 0, None, done=True)
                    return
                pending = read(rows)  # the next batch, read while this one is written
                batch, fresh = await asyncio.to_thread(self.checker.check, new), len(new)
            last = rows[-1]
            await self._write(batch, fresh, row_mark(last[-1], last[0]))
            self.progress(self.entity.table, fresh)

    async def _write(self, batch: Batch, read: int, last_row: str | None,
                     *, done: bool = False) -> None:
        counts = {"inserted": 0, "present": 0, "skipped": 0}
        async with self.pool.acquire() as conn:
            if self.fast.on and batch.size:
                try:
                    async with conn.transaction():
                        if self.fast.unchecked:
                            # foreign keys are checked for the whole table at its end instead
                            # (`check_references`): one anti-join beats a lookup per row
                            await conn.execute("SET LOCAL session_replication_role = replica")
                        await self._copy(conn, self.entity.table, batch)
                        counts["inserted"] = batch.size
                        await self._bookkeep(conn, batch, read, last_row, counts, done)
                    self.fast.used = True
                    return
                except (asyncpg.UniqueViolationError, asyncpg.ForeignKeyViolationError):
                    # a concurrent write got there first: from now on go through staging
                    self.fast.on = False
            async with conn.transaction():
                if batch.size:
                    await self._stage_insert(conn, batch, counts)
                await self._bookkeep(conn, batch, read, last_row, counts, done)

    async def _copy(self, conn: asyncpg.Connection, table: str, batch: Batch) -> None:
        if batch.rows:
            await conn.copy_records_to_table(table, records=batch.rows, columns=self.cols)
        if batch.copy_count:
            await conn.copy_to_table(table, source=_once(batch.copy_data), columns=self.cols,
                                     format="binary")

    async def _stage_insert(self, conn: asyncpg.Connection, batch: Batch,
                            counts: dict[str, int]) -> None:
        e = self.entity
        stage = f"_stage_{e.table}"
        cols = ", ".join(self.cols)
        await conn.execute(f"CREATE TEMP TABLE {stage} ON COMMIT DROP AS "
                           f"SELECT {cols} FROM {e.table} WITH NO DATA")
        await self._copy(conn, stage, batch)
        for c in self.optional:
            # the parent was deleted through the repository since: ON DELETE SET NULL would
            # have cleared the reference, so clear it here too, and say so
            gone = await conn.fetch(
                f"SELECT id, {c.name} AS old FROM {stage} s WHERE {c.name} IS NOT NULL AND "
                f"NOT EXISTS (SELECT 1 FROM {c.references} p WHERE p.id = s.{c.name})")
            if not gone:
                continue
            await conn.execute(f"UPDATE {stage} SET {c.name} = NULL WHERE id = ANY($1::uuid[])",
                               [r["id"] for r in gone])
            for r in gone:
                batch.changed_ids.add(str(r["id"]))
                batch.problems.append(Problem(
                    e.table, str(r["id"]), str(r["id"]), c.name, str(r["old"]),
                    f"{c.references} {r['old']} deleted through the repository since dual "
                    "writes began; reference set to NULL", "changed"))
        parents = "".join(
            f" AND EXISTS (SELECT 1 FROM {c.references} p WHERE p.id = s.{c.name})"
            for c in self.required)
        inserted = await conn.fetch(
            f"INSERT INTO {e.table} ({cols}) SELECT {cols} FROM {stage} s "
            "WHERE NOT EXISTS (SELECT 1 FROM cutover_tombstones d "
            f"WHERE d.entity = '{e.name}' AND d.row_id = s.id){parents} "
            "ON CONFLICT DO NOTHING RETURNING id")
        counts["inserted"] = len(inserted)
        if len(inserted) == batch.size:
            return
        orphaned = " OR ".join(
            f"NOT EXISTS (SELECT 1 FROM {c.references} p WHERE p.id = s.{c.name})"
            for c in self.required) or "false"
        left = await conn.fetch(
            f"SELECT s.id, EXISTS (SELECT 1 FROM {e.table} t WHERE t.id = s.id) AS present, "
            "EXISTS (SELECT 1 FROM cutover_tombstones d "
            f"WHERE d.entity = '{e.name}' AND d.row_id = s.id) AS deleted, "
            f"({orphaned}) AS orphaned "
            f"FROM {stage} s WHERE s.id <> ALL($1::uuid[])", [r["id"] for r in inserted])
        for r in left:
            rid = str(r["id"])
            if r["present"]:
                counts["present"] += 1  # the repository's row (or an earlier pass's) stays
            elif r["deleted"] or r["orphaned"]:
                counts["skipped"] += 1
                why = ("deleted through the repository since dual writes began" if r["deleted"]
                       else "parent deleted through the repository since dual writes began")
                batch.problems.append(Problem(e.table, rid, rid, None, None, why, "skipped"))
            else:
                batch.rejected += 1
                batch.problems.append(Problem(e.table, rid, rid, None, None,
                                              "unique constraint in PostgreSQL", "rejected"))

    async def _bookkeep(self, conn: asyncpg.Connection, batch: Batch, read: int,
                        last_row: str | None, counts: dict[str, int], done: bool) -> None:
        if batch.problems:
            await conn.copy_records_to_table(
                REJECTS_TABLE, records=problem_records(batch.problems), columns=PROBLEM_COLUMNS)
        if batch.mappings:
            await conn.executemany(
                "INSERT INTO legacy_ids (table_name, legacy_id, id) VALUES ($1, $2, $3) "
                "ON CONFLICT DO NOTHING", batch.mappings)
        await conn.execute(
            f"UPDATE {PROGRESS_TABLE} SET last_row = coalesce($3, last_row), done = $4, "
            "read = read + $5, inserted = inserted + $6, present = present + $7, "
            "skipped = skipped + $8, rejected = rejected + $9, changed = changed + $10, "
            "updated_at = now() WHERE table_name = $1 AND part = $2",
            self.part.table, self.part.index, last_row, done, read, counts["inserted"],
            counts["present"], counts["skipped"], batch.rejected, len(batch.changed_ids))


async def _once(data: bytes) -> AsyncIterator[bytes]:
    yield data


@dataclass
class FastPath:
    """Whether a table still takes COPY straight in (shared by its parts), and whether those
    COPYs may skip the per-row foreign key lookups."""

    on: bool
    unchecked: bool = False
    used: bool = False


async def check_references(pool: asyncpg.Pool, entity: Entity) -> None:
    """After an unchecked load: rows whose parent is not in PostgreSQL (deleted through the
    repository while they were copied; the source had it) go, or lose the reference when it
    is nullable, as ON DELETE would have done; each is reported."""
    for c in (c for c in entity.columns if c.references):
        async with pool.acquire() as conn, conn.transaction():
            # waits for deletes of parents in flight, whose cascade may have run before these
            # rows were committed, and keeps new ones out for the length of one anti-join
            await conn.execute("SET LOCAL lock_timeout = '10s'")
            await conn.execute(f"LOCK TABLE {c.references} IN SHARE MODE")
            orphan = (f"{c.name} IS NOT NULL AND NOT EXISTS "
                      f"(SELECT 1 FROM {c.references} p WHERE p.id = t.{c.name})")
            if c.nullable:
                rows = await conn.fetch(
                    f"UPDATE {entity.table} t SET {c.name} = NULL FROM (SELECT id, {c.name} AS old"
                    f" FROM {entity.table} t WHERE {orphan}) o WHERE t.id = o.id "
                    "RETURNING t.id, o.old")
                problems: list[tuple[Any, ...]] = [(entity.table, str(r["id"]), r["id"], c.name,
                             json.dumps(str(r["old"])), "null",
                             f"{c.references} {r['old']} deleted through the repository since "
                             "dual writes began; reference set to NULL", "changed") for r in rows]
                column = "changed"
            else:
                rows = await conn.fetch(
                    f"DELETE FROM {entity.table} t WHERE {orphan} RETURNING t.id, t.{c.name}")
                problems = [(entity.table, str(r["id"]), r["id"], c.name,
                             json.dumps(str(r[c.name])), None,
                             "parent deleted through the repository since dual writes began",
                             "skipped") for r in rows]
                column = "skipped"
            if rows:
                await conn.copy_records_to_table(REJECTS_TABLE, records=problems,
                                                 columns=PROBLEM_COLUMNS)
                minus = "" if c.nullable else ", inserted = inserted - $2"
                await conn.execute(
                    f"UPDATE {PROGRESS_TABLE} SET {column} = {column} + $2{minus} "
                    "WHERE table_name = $1 AND part = 0", entity.table, len(rows))


async def sweep_tombstoned(pool: asyncpg.Pool, entity: Entity) -> int:
    """Delete rows this pass copied that were deleted through the repository meanwhile (their
    tombstone is newer); return how many."""
    async with pool.acquire() as conn, conn.transaction():
        # waits for deletes in flight, so none commits its tombstone unseen after this
        await conn.execute("SET LOCAL lock_timeout = '10s'")
        await conn.execute("LOCK TABLE cutover_tombstones IN SHARE ROW EXCLUSIVE MODE")
        gone = await conn.fetch(
            f"DELETE FROM {entity.table} t USING cutover_tombstones d "
            f"WHERE d.entity = '{entity.name}' AND d.row_id = t.id "
            "AND t.row_version < d.version RETURNING t.id")
        if gone:
            await conn.copy_records_to_table(REJECTS_TABLE, records=[
                (entity.table, str(r["id"]), r["id"], None, "null", None,
                 "deleted through the repository while being copied", "skipped")
                for r in gone], columns=PROBLEM_COLUMNS)
            await conn.execute(
                f"UPDATE {PROGRESS_TABLE} SET inserted = inserted - $2, skipped = skipped + $2 "
                "WHERE table_name = $1 AND part = 0", entity.table, len(gone))
    return len(gone)


# -- indexes ----------------------------------------------------------------------------------

_INDEX = re.compile(r"CREATE INDEX IF NOT EXISTS (\w+)\s+ON (\w+)[^;]*;", re.S)


@dataclass(frozen=True, slots=True)
class Index:
    name: str
    table: str
    statement: str  # CREATE INDEX IF NOT EXISTS ...


def deferrable_indexes() -> list[Index]:
    """The secondary indexes the schema defines (search indexes included): the ones a load
    into an empty table may build afterwards. Primary keys and unique constraints stay."""
    ddl = postgres_schema.DDL + postgres_schema.SEARCH_INDEXES
    return [Index(m.group(1), m.group(2), m.group(0)) for m in _INDEX.finditer(ddl)
            if m.group(2) in BY_TABLE]


async def build_index(pool: asyncpg.Pool, index: Index) -> float:
    """Build one index; return the seconds it took.

    A plain CREATE INDEX, not CONCURRENTLY: it only runs on a table that was empty when the pass
    began, its builds on one table run side by side (CONCURRENTLY ones would queue, and take two
    scans each), and writes to the table wait for it (a mirror write that waits too long goes
    to the outbox and is replayed).
    """
    started = time.perf_counter()
    async with pool.acquire() as conn:
        await conn.execute("SET maintenance_work_mem = '256MB'")
        try:
            await conn.execute(index.statement)
        finally:
            await conn.execute("RESET maintenance_work_mem")
    return time.perf_counter() - started


# -- the vocabulary ---------------------------------------------------------------------------




async def _rebuild_owed_vocabulary(pool: asyncpg.Pool, parts: int,
                                   counted: asyncio.Event) -> float:
    """The recount this pass owes, then its progress row marked done (a crash in between costs
    one more recount, never a stale vocabulary). `counted` is set once the words are counted,
    or the recount failed."""
    try:
        seconds = await rebuild_vocabulary(pool, parts, counted)
    finally:
        counted.set()
    async with pool.acquire() as conn:
        await conn.execute(f"UPDATE {PROGRESS_TABLE} SET done = true, updated_at = now() "
                           "WHERE table_name = $1", WORDS)
    return seconds


# -- the run ----------------------------------------------------------------------------------

MAX_READS = 3  # a table whose rowids keep moving under the pass fails it instead
SMALL = {"users", "study_books"}  # one part each: a user has a book or two, not thousands


def part_count(table: str, jobs: int) -> int:
    """How many parts a fresh pass splits `table` into."""
    return 1 if table in SMALL else jobs


_PLAN = (f"UPDATE {PROGRESS_TABLE} SET read_by = 'rowid', after_rowid = $3, until_rowid = $4, "
         "first_row = $5, end_row = $6, last_row = NULL, done = false, read = 0, inserted = 0, "
         "present = 0, skipped = 0, rejected = 0, changed = 0, updated_at = now() "
         "WHERE table_name = $1 AND part = $2")


async def _plan(conn: asyncpg.Connection, src: sqlite3.Connection, table: str, n: int) -> None:
    """Plan `table` in `n` parts from its start, into the progress rows already there."""
    await conn.executemany(_PLAN, [(table, p.index, p.after, p.until, p.first_row, p.end_row)
                                   for p in await on_source(plan_parts, src, table, n)])


def _part(row: asyncpg.Record) -> Part:
    """A part as its progress row keeps it."""
    return Part(row["table_name"], row["part"], row["after_rowid"], row["until_rowid"],
                row["first_row"], row["end_row"])


async def _replan(conn: asyncpg.Connection, src: sqlite3.Connection, table: str,
                  n: int) -> None:
    """Read `table` again from its start in `n` parts: its rowids moved (the file dumped and
    restored, the table rebuilt, a VACUUM). The rows already copied are found present; what
    was reported of them is reported again, so the last report goes."""
    await conn.execute(f"DELETE FROM {REJECTS_TABLE} WHERE table_name = $1", table)
    await _plan(conn, src, table, n)


async def _prepare(conn: asyncpg.Connection, source_path: Path, source: str,
                   restart: bool, jobs: int) -> bool:
    """Create the bookkeeping tables; start a fresh pass or resume one. True when resuming.
    A resumed pass keeps the parts its first run planned, whatever `jobs` is now."""
    async with conn.transaction():
        # the same lock as the migrations take: one schema change at a time
        await conn.execute("SELECT pg_advisory_xact_lock($1)", migrations.SCHEMA_LOCK)
        await conn.execute(DDL)
    src = await asyncio.to_thread(open_source, source_path)
    try:
        async with conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock($1)", _LOCK_KEY)
            rows = await conn.fetch(f"SELECT * FROM {PROGRESS_TABLE} ORDER BY table_name, part")
            keys = {(r["table_name"], r["part"]) for r in rows}
            counts = {t: sum(1 for k in keys if k[0] == t) for t in (*ORDER, WORDS)}
            resumable = (not restart and keys == {(t, i) for t, n in counts.items()
                                                  for i in range(n)}
                         and all(counts.values()) and counts[WORDS] == 1
                         and all(r["read_by"] == "rowid" for r in rows
                                 if r["table_name"] != WORDS)
                         and all(r["source"] == source for r in rows)
                         and not all(r["done"] for r in rows))
            if resumable:
                for table in ORDER:
                    mine = [r for r in rows if r["table_name"] == table]
                    parts = [_part(r) for r in mine]
                    if not all(r["done"] for r in mine) and not await on_source(
                            parts_hold, src, parts, [r["last_row"] for r in mine]):
                        await _replan(conn, src, table, len(mine))
                return True
            # a fresh pass checks every row again, so the last pass's findings go
            await conn.execute(f"DELETE FROM {PROGRESS_TABLE}")
            await conn.execute(f"DELETE FROM {REJECTS_TABLE}")
            planned = {(t, i) for t in ORDER for i in range(part_count(t, jobs))} | {(WORDS, 0)}
            await conn.executemany(
                f"INSERT INTO {PROGRESS_TABLE} (table_name, part, source) VALUES ($1, $2, $3)",
                [(t, i, source) for t, i in sorted(planned)])
            for table in ORDER:
                await _plan(conn, src, table, part_count(table, jobs))
    finally:
        src.close()
    return False


async def _copy_source_legacy_ids(conn: asyncpg.Connection, path: Path) -> None:
    """An upgraded SQLite store keeps the original ids in its own legacy_ids: carry them over."""
    def read() -> list[Any]:
        src = open_source(path)
        try:
            if not src.execute("SELECT 1 FROM sqlite_master WHERE name = 'legacy_ids'").fetchone():
                return []
            return src.execute("SELECT table_name, legacy_id, id FROM legacy_ids").fetchall()
        finally:
            src.close()

    rows = await asyncio.to_thread(read)
    if rows:
        await conn.executemany(
            "INSERT INTO legacy_ids (table_name, legacy_id, id) VALUES ($1, $2, $3::uuid) "
            "ON CONFLICT DO NOTHING", rows)


async def open_pool(dsn: str, *, max_size: int = 6,
                    init: Callable[[asyncpg.Connection], Awaitable[None]] | None = None,
                    settings: dict[str, str] | None = None) -> asyncpg.Pool:
    """A pool for bulk work; `StoreUnavailable` (exit 3) when the server cannot be reached.
    `settings` are the sessions' own defaults (a SET would be undone by the reset on release)."""
    try:
        pool = await asyncpg.create_pool(dsn, min_size=1, max_size=max_size, timeout=10,
                                         init=init, server_settings=settings)
    except (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
        raise StoreUnavailable("postgres", f"{type(exc).__name__}: {exc}"[:200]) from None
    assert pool is not None
    return pool


def _load_settings(defer_words: bool) -> dict[str, str]:
    # A server crash may lose the last commits, checkpoint included, so a resumed pass stays
    # exact; nothing has to wait for every batch's fsync.
    settings = {"synchronous_commit": "off"}
    if defer_words:
        settings[postgres_schema.DEFER_WORDS] = "on"  # counted once, by rebuild_vocabulary
    return settings


async def run_backfill(
    source_path: Path, dsn: str, *, rejects_path: Path, batch_size: int = DEFAULT_BATCH_SIZE,
    restart: bool = False, progress: Progress | None = None,
    totals: Callable[[dict[str, int]], None] | None = None, analyze: bool = True,
    jobs: int = DEFAULT_JOBS, columnar: bool = True,
) -> BackfillReport:
    """Run (or resume) a backfill pass from `source_path` into the database at `dsn`.

    `jobs`: how many parts of each big table load side by side (a fresh pass's split), and how
    many parts the vocabulary's recount counts side by side; about the server's cores.

    `columnar`: batches whose rows are all plain go through `proxy.migrate.columnar` (off: every
    batch row by row, as the checks see it; the tests compare the two).

    With `analyze`, each table is analyzed once its indexes are built: a bulk load leaves the
    planner without statistics until autovacuum gets to it, and the first searches after a
    cutover would be planned on guesses (pgcopydb does the same after its copy)."""
    if jobs < 1:
        raise ValueError(f"jobs must be at least 1, not {jobs}")
    started = time.perf_counter()
    open_source(source_path).close()  # fail early, with one line, on a bad file
    source = str(await asyncio.to_thread(source_path.resolve))
    timings: dict[str, float] = {}
    guard_pool = await open_pool(dsn, max_size=1)
    guard = await guard_pool.acquire()  # holds the run's lock until the end
    try:
        if not await guard.fetchval("SELECT pg_try_advisory_lock($1)", _LOCK_KEY + 1):
            raise BackfillRunning("another backfill is running against this database")
        await migrations.upgrade_postgres(dsn)  # the schema, at the newest revision
        resumed = await _prepare(guard, source_path, source, restart, jobs)
        await _copy_source_legacy_ids(guard, source_path)
        state = {(r["table_name"], r["part"]): r for r in await guard.fetch(
            f"SELECT * FROM {PROGRESS_TABLE}")}
        rejected: dict[str, set[str]] = {t: set() for t in ORDER}
        for r in await guard.fetch(
                f"SELECT DISTINCT table_name, row_id FROM {REJECTS_TABLE} "
                "WHERE kind = 'rejected' AND row_id IS NOT NULL"):
            rejected[r["table_name"]].add(r["row_id"])
        fast: dict[str, FastPath] = {}
        for e in ENTITIES:
            empty = await guard.fetchval(f"SELECT NOT EXISTS (SELECT 1 FROM {e.table})")
            tombs = await guard.fetchval(
                "SELECT EXISTS (SELECT 1 FROM cutover_tombstones WHERE entity = $1)", e.name)
            fast[e.table] = FastPath(bool(empty and not tombs))
            if fast[e.table].on and any(c.references for c in e.columns):
                fast[e.table].unchecked = await _may_skip_fk_checks(guard, e.table)
        # Building an index once over loaded rows beats maintaining it row by row, but only
        # an empty table may lose its indexes: one with rows may be serving live searches.
        deferred = [ix for ix in deferrable_indexes() if fast[ix.table].on]
        for ix in deferred:
            await guard.execute(f"DROP INDEX IF EXISTS {ix.name}")
        # Questions going into an empty table leave the vocabulary to one recount at the
        # end (rebuild_vocabulary); a pass that stopped before its recount still owes it.
        if not resumed:
            await guard.execute(f"UPDATE {PROGRESS_TABLE} SET done = $2 WHERE table_name = $1",
                               WORDS, not fast["questions"].on)
        defer_words = not await guard.fetchval(
            f"SELECT done FROM {PROGRESS_TABLE} WHERE table_name = $1", WORDS)
        # two tables loading, their index builds, the recount's parts
        pool = await open_pool(dsn, max_size=3 * jobs + 3, settings=_load_settings(defer_words))
        try:
            if totals is not None:
                counts = await asyncio.to_thread(_source_counts, source_path, state)
                totals({**counts, "indexes": len(deferrable_indexes())})
            index_tasks: list[asyncio.Task[float]] = []
            counted = asyncio.Event()  # the recount's words are counted (LATE loads then)
            if not defer_words:
                counted.set()
            analyze_tasks: list[asyncio.Task[float]] = []
            words_tasks: list[asyncio.Task[float]] = []

            async def build_one(ix: Index) -> float:
                seconds = await build_index(pool, ix)
                (progress or _no_progress)("indexes", 1)
                return seconds

            async def analyze_after(table: str, builds: list[asyncio.Task[float]]) -> float:
                await asyncio.gather(*builds)  # statistics on its expression indexes too
                t0 = time.perf_counter()
                analyzed = ", ".join((table, *postgres_schema.DERIVED_TABLES.get(table, ())))
                async with pool.acquire() as conn:
                    await conn.execute(f"ANALYZE {analyzed}")
                return time.perf_counter() - t0

            def build(table: str) -> None:
                builds = [asyncio.ensure_future(build_one(ix))
                          for ix in deferrable_indexes() if ix.table == table]
                index_tasks.extend(builds)
                if table == "questions" and defer_words:
                    words_tasks.append(asyncio.ensure_future(
                        _rebuild_owed_vocabulary(pool, jobs, counted)))
                    builds = [*builds, *words_tasks]
                if analyze:
                    analyze_tasks.append(asyncio.ensure_future(analyze_after(table, builds)))

            async def replan(table: str) -> None:
                async with pool.acquire() as conn, conn.transaction():
                    src = await asyncio.to_thread(open_source, source_path)
                    try:
                        await _replan(conn, src, table, sum(1 for k in state if k[0] == table))
                    finally:
                        src.close()
                    for r in await conn.fetch(
                            f"SELECT * FROM {PROGRESS_TABLE} WHERE table_name = $1", table):
                        state[(table, r["part"])] = r

            async def read_parts(table: str, checker: RowChecker) -> bool:
                """Copy the table's parts not done yet; False when its rowids were renumbered
                meanwhile (rows may have slid below a checkpoint unread)."""
                moved = asyncio.Event()
                loaders = [
                    PartLoader(_part(r), pool, source_path, checker,
                               batch_size=batch_size, fast=fast[table],
                               progress=progress or _no_progress, moved=moved,
                               columnar=columnar)
                    for k, r in sorted(state.items()) if k[0] == table and not r["done"]
                ]
                await asyncio.gather(*(ld.run(state[(table, ld.part.index)]["last_row"])
                                       for ld in loaders))
                return not moved.is_set()

            async def load(table: str) -> None:
                if table == LATE:
                    await counted.wait()
                t0 = time.perf_counter()
                checker = RowChecker(BY_TABLE[table], rejected)
                parts = [r for k, r in state.items() if k[0] == table]
                fresh = all(r["last_row"] is None and not r["done"] for r in parts)
                for attempt in itertools.count(1):
                    if attempt > 1 or fresh:
                        # planned now, not when the pass began: the first rows it checks are
                        # those of the moment (a retention job deletes the oldest meanwhile);
                        # and again when the rowids were renumbered under a read
                        await replan(table)
                    if await read_parts(table, checker):
                        break
                    if attempt == MAX_READS:
                        raise BadSource(
                            f"--from {source_path}: the rowids of {table} were renumbered "
                            f"{attempt} times while it was read (a VACUUM, the table rebuilt?); "
                            "run the backfill again once that has stopped: it resumes")
                # also after a staged load: an earlier run cut short may have copied rows unchecked
                await check_references(pool, BY_TABLE[table])
                await sweep_tombstoned(pool, BY_TABLE[table])
                timings[table] = round(time.perf_counter() - t0, 3)
                build(table)  # beside the tables still loading

            async def lane(tables: tuple[str, ...]) -> None:
                for table in tables:
                    await load(table)

            lanes = [asyncio.ensure_future(lane(t)) for t in LANES]
            try:
                await asyncio.gather(*lanes)
                index_seconds = await asyncio.gather(*index_tasks)
                words_seconds = await asyncio.gather(*words_tasks)
                analyze_seconds = await asyncio.gather(*analyze_tasks)
            finally:
                # a failed lane stops the pass whole: the other is cancelled (the late table would
                # wait for a recount that will not come), and the next run resumes from progress
                rest = (*lanes, *index_tasks, *words_tasks, *analyze_tasks)
                for task in rest:
                    task.cancel()
                await asyncio.gather(*rest, return_exceptions=True)
            timings["indexes"] = round(max(index_seconds, default=0.0), 3)
            if words_seconds:
                timings["vocabulary"] = round(words_seconds[0], 3)
            if analyze:
                timings["analyze"] = round(max(analyze_seconds, default=0.0), 3)
            async with pool.acquire() as conn:
                report_rows = await conn.fetch(
                    f"SELECT table_name, sum(read) AS read, sum(inserted) AS inserted, "
                    "sum(present) AS present, sum(skipped) AS skipped, sum(rejected) AS rejected, "
                    f"sum(changed) AS changed FROM {PROGRESS_TABLE} GROUP BY table_name")
                problems = await write_rejects(conn, rejects_path)
            tables = {r["table_name"]: TableReport(int(r["read"]), int(r["inserted"]),
                                                   int(r["present"]), int(r["skipped"]),
                                                   int(r["rejected"]), int(r["changed"]))
                      for r in report_rows}
            return BackfillReport(
                source=source, seconds=round(time.perf_counter() - started, 3), resumed=resumed,
                tables={t: tables[t] for t in ORDER}, rejects_file=str(rejects_path),
                problems=problems, indexes_built=tuple(ix.name for ix in deferred),
                fast_path=tuple(t for t, f in fast.items() if f.used),
                fk_checked_after=tuple(t for t, f in fast.items() if f.used and f.unchecked),
                timings=timings)
        finally:
            await pool.close()
    finally:
        await guard_pool.release(guard)  # the run's lock goes with it
        await guard_pool.close()


async def _may_skip_fk_checks(conn: asyncpg.Connection, table: str) -> bool:
    """True when this session may load `table` with its per-row foreign key checks off: it may
    set session_replication_role (a superuser, or granted it), and the table has no triggers of
    its own that the setting would skip too (the schema's own fire ALWAYS)."""
    own = await conn.fetchval(
        "SELECT count(*) FROM pg_trigger WHERE tgrelid = $1::regclass AND NOT tgisinternal "
        "AND tgenabled <> 'A'", table)
    if own:
        return False
    try:
        async with conn.transaction():
            await conn.execute("SET LOCAL session_replication_role = replica")
    except asyncpg.InsufficientPrivilegeError:
        return False
    return True


def _no_progress(table: str, n: int) -> None:
    return None


def _source_counts(path: Path, state: dict[tuple[str, int], Any]) -> dict[str, int]:
    src = open_source(path)
    try:
        return {t: src.execute(f"SELECT count(*) FROM {t}").fetchone()[0] for t in ORDER
                if not all(r["done"] for k, r in state.items() if k[0] == t)}
    finally:
        src.close()


async def write_rejects(conn: asyncpg.Connection, path: Path) -> int:
    """Write the JSON Lines report from `cutover_backfill_rejects` (streamed); return lines."""
    tmp = path.with_name(path.name + ".tmp")
    n = 0
    order = "CASE table_name " + " ".join(f"WHEN '{t}' THEN {i}" for i, t in enumerate(ORDER))
    with tmp.open("w", encoding="utf-8") as out:
        async with conn.transaction():
            async for r in conn.cursor(
                    f"SELECT table_name, row_id, mapped_id, column_name, value, new_value, "
                    f"reason, kind FROM {REJECTS_TABLE} ORDER BY {order} END, seq"):
                line: dict[str, Any] = {
                    "table": r["table_name"], "id": r["row_id"], "column": r["column_name"],
                    "value": None if r["value"] is None else json.loads(r["value"]),
                    "reason": r["reason"], "kind": r["kind"],
                }
                if r["mapped_id"] is not None and str(r["mapped_id"]) != r["row_id"]:
                    line["mapped_id"] = str(r["mapped_id"])
                if r["new_value"] is not None:
                    line["new_value"] = json.loads(r["new_value"])
                out.write(json.dumps(line, ensure_ascii=False) + "\n")
                n += 1
    tmp.replace(path)
    return n


def iter_lines(path: Path) -> Iterator[dict[str, Any]]:
    """The rejects report's objects (tests and tools read it back with this)."""
    with path.open(encoding="utf-8") as f:
        for line in f:
            if line.strip():
                yield json.loads(line)
