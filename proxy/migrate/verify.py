"""`cutover verify`: prove the two stores hold the same rows, in bounded memory.

The comparison bisects the way data-diff does: each table's rows are grouped by the first hex
digits of their id; each side reduces a group to (count, sum of the first 64 bits of the md5 of
the normalised row) - PostgreSQL in SQL, SQLite in Python over streamed rows - and only groups
whose checksums differ are split further (two more hex digits per level) or, once small enough,
fetched row by row from both sides and compared. No step holds more than one group's rows.

Normalised across the engines: ids as canonical UUID text, timestamps as integer microseconds
since the epoch (UTC), decimals at the column's scale (a REAL rounded half-even, as the backfill
does), integers and text exactly, NULL as its own marker.

Rows the backfill rejected or changed (`cutover_backfill_rejects`) and rows with a mirror write
still pending (either outbox) are listed in their own sections and are not differences. Dead
letters (mirror writes given up on, `proxy.deadletters`) are: the store they were meant for lacks
their writes, so they are counted and listed, and the stores do not agree.
"""

from __future__ import annotations

import asyncio
import hashlib
import multiprocessing
import os
import random
import re
import sqlite3
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from concurrent.futures import Executor, ProcessPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any, TypeVar

import asyncpg

from proxy.codec import quantum
from proxy.errors import SchemaMissing, SQLiteNotUpgraded
from proxy.legacy import _CANONICAL, parse_timestamp
from proxy.migrate.backfill import REJECTS_TABLE, open_pool
from proxy.migrate.source import rowid_bounds
from proxy.models import BY_TABLE, ENTITIES, Column, Entity, Kind

PREFIX_STEP = 2  # hex digits per bisection level (256-way)
MAX_PREFIX = 8  # the digits before the first hyphen
LEAF_ROWS = 2000  # a group this small is compared row by row
SCAN_SLICES = 8  # whole-table scans are split into this many jobs
PROCESS_MIN_ROWS = 50_000  # smaller tables are not worth a worker process's start
MAX_LISTED = 1000  # rows listed per section (the counts are always complete)
DEAD_LISTED = 20  # dead letters listed (the count is always complete)
SEP, NULL = "\x1f", "\x1e"
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MICRO = timedelta(microseconds=1)

Normal = tuple[str | None, ...]
T = TypeVar("T")


# -- normalising a row ------------------------------------------------------------------------


def _pg_expr(c: Column) -> str:
    """SQL giving the column's normal text on PostgreSQL."""
    if c.kind is Kind.TIMESTAMP:
        return f"(extract(epoch FROM t.{c.name}) * 1000000)::bigint::text"
    if c.kind is Kind.TEXT:
        return f"t.{c.name}"
    return f"t.{c.name}::text"  # uuid, integer and numeric(p, s) print canonically


def _py_normaliser(c: Column) -> Callable[[Any], str | None]:
    """A function giving the column's normal text from a SQLite value (the same text as
    `_pg_expr`, or a `raw:` text that cannot equal it when the value is not valid)."""
    if c.kind is Kind.UUID:
        def norm_uuid(v: Any) -> str | None:
            if v is None:
                return None
            if type(v) is str and _CANONICAL.fullmatch(v):
                return v
            try:
                return str(uuid.UUID(v))
            except (ValueError, TypeError, AttributeError):
                return f"raw:{v!r}"
        return norm_uuid
    if c.kind is Kind.TIMESTAMP:
        def norm_ts(v: Any) -> str | None:
            if v is None:
                return None
            try:
                return str((parse_timestamp(v) - _EPOCH) // _MICRO)
            except (ValueError, TypeError, OverflowError):
                return f"raw:{v!r}"
        return norm_ts
    if c.kind is Kind.DECIMAL:
        q = quantum(c.scale or 0)

        def norm_dec(v: Any) -> str | None:
            if v is None:
                return None
            if type(v) is float or type(v) is int:
                try:
                    d = Decimal(repr(v)).quantize(q, rounding="ROUND_HALF_EVEN")
                except ArithmeticError:
                    return f"raw:{v!r}"
                return str(d if d else abs(d))  # PostgreSQL has no negative zero
            return f"raw:{v!r}"
        return norm_dec
    if c.kind is Kind.INT:
        def norm_int(v: Any) -> str | None:
            if v is None:
                return None
            return str(v) if type(v) is int else f"raw:{v!r}"
        return norm_int

    def norm_text(v: Any) -> str | None:
        if v is None or type(v) is str:
            return v
        return f"raw:{v!r}"
    return norm_text


def row_hash(values: Normal) -> int:
    """The signed first 64 bits of the md5 of the normal row (PostgreSQL computes the same)."""
    text = SEP.join(NULL if v is None else v for v in values)
    h = int.from_bytes(hashlib.md5(text.encode("utf-8", "surrogatepass"),
                                   usedforsecurity=False).digest()[:8], "big")
    return h - (1 << 64) if h >= 1 << 63 else h


@dataclass(frozen=True, slots=True)
class TableSpec:
    """How one table is read and normalised on each side."""

    entity: Entity
    pg_fields: str
    pg_hash: str
    normalisers: tuple[Callable[[Any], str | None], ...]
    normal: Callable[[Sequence[Any]], Normal]

    @classmethod
    def of(cls, entity: Entity) -> TableSpec:
        exprs = [f"coalesce({_pg_expr(c)}, chr(30))" for c in entity.columns]
        fields = ", ".join(_pg_expr(c) for c in entity.columns)
        text = " || chr(31) || ".join(exprs)
        normalisers = tuple(_py_normaliser(c) for c in entity.columns)
        return cls(entity, fields, f"('x' || substr(md5({text}), 1, 16))::bit(64)::bigint",
                   normalisers, _unrolled(normalisers))


def _unrolled(fs: Sequence[Callable[[Any], str | None]]) -> Callable[[Sequence[Any]], Normal]:
    """`lambda raw: (f0(raw[0]), f1(raw[1]), ...)` without a loop: the SQLite side runs it on
    every row, and the unrolled form takes a third less time than a generator."""
    names = {f"f{i}": f for i, f in enumerate(fs)}
    body = ", ".join(f"f{i}(raw[{i}])" for i in range(len(fs)))
    return eval(f"lambda raw: ({body},)", names)  # type: ignore[no-any-return]


# -- ranges of ids ----------------------------------------------------------------------------


def prefix_range(prefix: str) -> tuple[str | None, str | None]:
    """[lo, hi) of canonical UUID text starting with `prefix` (hex digits, at most 8)."""
    if not prefix:
        return None, None
    pad = MAX_PREFIX - len(prefix)
    lo = prefix + "0" * pad + "-0000-0000-0000-000000000000"
    n = int(prefix, 16) + 1
    if n >= 16 ** len(prefix):
        return lo, None
    return lo, format(n, f"0{len(prefix)}x") + "0" * pad + "-0000-0000-0000-000000000000"


Sums = dict[str, tuple[int, int]]  # prefix -> (rows, sum of row hashes)


class SQLiteSide:
    """Streams one table's rows from the SQLite file (read-only), in a worker thread; whole-table
    scans go to worker processes when given: hashing rows in Python is the bulk of a verify,
    and a second process uses the core that would otherwise idle."""

    def __init__(self, path: Path, processes: Executor | None = None) -> None:
        self.path = path
        self.processes = processes

    async def scan(self, spec: TableSpec, prefix: str, width: int) -> tuple[Sums, int]:
        lo, hi = (0, -1) if prefix else await asyncio.to_thread(self.rowid_bounds,
                                                                spec.entity.table)
        if self.processes is None or prefix or hi - lo < PROCESS_MIN_ROWS:
            found: tuple[Sums, int] = await asyncio.to_thread(self.sums, spec, prefix, width)
            return found
        # the whole table in slices of rowids, each read in table order; the counts and hash
        # sums of a prefix simply add up across slices
        step = max(1, -(-(hi - lo + 1) // SCAN_SLICES))
        loop = asyncio.get_running_loop()
        jobs = [loop.run_in_executor(self.processes, _scan_job, self.path, spec.entity.table,
                                     width, start, start + step)
                for start in range(lo, hi + 1, step)]
        merged: Sums = {}
        unkeyed = 0
        for part, odd in await asyncio.gather(*jobs):
            unkeyed += odd
            for key, (n, h) in part.items():
                m = merged.get(key, (0, 0))
                merged[key] = (m[0] + n, m[1] + h)
        return merged, unkeyed

    def rowid_bounds(self, table: str) -> tuple[int, int]:
        conn = self._connect(False)
        try:
            return rowid_bounds(conn, table) or (0, -1)
        finally:
            conn.close()

    def _connect(self, tolerant: bool) -> sqlite3.Connection:
        conn = sqlite3.connect(f"{self.path.resolve().as_uri()}?mode=ro", uri=True,
                               isolation_level=None)
        if tolerant:
            conn.text_factory = lambda b: b.decode("utf-8", "surrogateescape")
        return conn

    def _query(self, spec: TableSpec, prefix: str,
               rowids: tuple[int, int] | None) -> tuple[str, list[Any]]:
        where, args = ["true"], list[Any]()
        if rowids is not None:
            where.append("rowid >= ? AND rowid < ?")
            args += rowids
        lo, hi = prefix_range(prefix)
        if lo is not None:
            where.append("id >= ?")
            args.append(lo)
        if hi is not None:
            where.append("id < ?")
            args.append(hi)
        cols = ", ".join(spec.entity.column_names)
        return f"SELECT {cols} FROM {spec.entity.table} WHERE {' AND '.join(where)}", args

    def _read(self, spec: TableSpec, prefix: str, rowids: tuple[int, int] | None,
              consume: Callable[[Iterator[Any]], T]) -> T:
        """`consume` the rows of a range as they stream from SQLite."""
        sql, args = self._query(spec, prefix, rowids)
        for tolerant in (False, True):
            conn = self._connect(tolerant)
            try:
                return consume(iter(conn.execute(sql, args)))
            except sqlite3.OperationalError as exc:
                # text that is not UTF-8: read it again with the bad bytes kept as surrogates;
                # it then differs from PostgreSQL (which cannot hold it) instead of failing
                if tolerant or "decode" not in str(exc).lower():
                    raise
            finally:
                conn.close()
        raise AssertionError("unreachable")

    def sums(self, spec: TableSpec, prefix: str, width: int,
             rowids: tuple[int, int] | None = None) -> tuple[Sums, int]:
        """Checksums per id prefix of `width` digits within `prefix` (and a slice of rowids),
        and the number of rows without a text id (they cannot be compared)."""
        normal = spec.normal

        def consume(rows: Iterator[Any]) -> tuple[Sums, int]:
            out: dict[str, list[int]] = {}
            unkeyed = 0
            for raw in rows:
                if type(raw[0]) is not str:
                    unkeyed += 1  # NULL or a BLOB: the backfill rejected it
                    continue
                values = normal(raw)
                rid = values[0]
                if rid != raw[0]:
                    # range reads by id text would miss it: the ids must be upgraded first
                    raise SQLiteNotUpgraded(
                        f"{spec.entity.table} id {raw[0]!r} is not a canonical UUID: run "
                        "`cutover schema init` to upgrade the SQLite database first")
                assert rid is not None
                acc = out.get(rid[:width])
                if acc is None:
                    acc = out[rid[:width]] = [0, 0]
                acc[0] += 1
                acc[1] += row_hash(values)
            return {k: (v[0], v[1]) for k, v in out.items()}, unkeyed

        return self._read(spec, prefix, rowids, consume)

    def rows(self, spec: TableSpec, prefix: str) -> dict[str, Normal]:
        """The normal rows of one group (a leaf: at most a few thousand)."""
        def consume(rows: Iterator[Any]) -> dict[str, Normal]:
            out = {}
            for raw in rows:
                values = spec.normal(raw)
                if values[0] is not None and not values[0].startswith("raw:"):
                    out[values[0]] = values
            return out

        return self._read(spec, prefix, None, consume)


def _scan_job(path: Path, table: str, width: int, lo: int, hi: int) -> tuple[Sums, int]:
    """One slice of rowids' checksums, computed in a worker process."""
    return SQLiteSide(path).sums(_spec(table), "", width, (lo, hi))


def scan_processes() -> Executor | None:
    """Two worker processes for the SQLite scans (started on first use), or None on one core.

    Spawned, not forked: a fork of this process (asyncio, store threads) could inherit a lock
    some other thread held at that instant and hang.
    """
    if (os.cpu_count() or 1) < 2:
        return None
    return ProcessPoolExecutor(max_workers=2, mp_context=multiprocessing.get_context("spawn"))


_SPECS: dict[str, TableSpec] = {}


def _spec(table: str) -> TableSpec:
    spec = _SPECS.get(table)
    if spec is None:
        spec = _SPECS[table] = TableSpec.of(BY_TABLE[table])
    return spec


class PostgresSide:
    """The same reductions, computed by PostgreSQL."""

    def __init__(self, pool: asyncpg.Pool) -> None:
        self.pool = pool

    @staticmethod
    def _where(prefix: str) -> tuple[str, list[uuid.UUID]]:
        lo, hi = prefix_range(prefix)
        where, args = ["true"], []
        if lo is not None:
            args.append(uuid.UUID(lo))
            where.append(f"t.id >= ${len(args)}")
        if hi is not None:
            args.append(uuid.UUID(hi))
            where.append(f"t.id < ${len(args)}")
        return " AND ".join(where), args

    async def sums(self, spec: TableSpec, prefix: str, width: int) -> Sums:
        where, args = self._where(prefix)
        rows = await self.pool.fetch(
            f"SELECT substr(t.id::text, 1, {width}) AS p, count(*) AS n, "
            f"sum({spec.pg_hash}) AS h FROM {spec.entity.table} t WHERE {where} GROUP BY 1",
            *args)
        return {r["p"]: (r["n"], int(r["h"])) for r in rows}

    async def rows(self, spec: TableSpec, prefix: str) -> dict[str, Normal]:
        where, args = self._where(prefix)
        rows = await self.pool.fetch(
            f"SELECT {spec.pg_fields} FROM {spec.entity.table} t WHERE {where}", *args)
        return {r[0]: tuple(r) for r in rows}


# -- the comparison ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class RowDiff:
    """One row that is not the same on both stores."""

    table: str
    id: str
    kind: str  # missing_in_postgres | missing_in_sqlite | content
    columns: tuple[str, ...] = ()


@dataclass
class TableResult:
    table: str
    sqlite_rows: int = 0
    postgres_rows: int = 0
    unkeyed: int = 0  # SQLite rows without a text id (the backfill rejects them)
    differences: int = 0
    pending: int = 0
    backfill: int = 0
    groups_compared: int = 0


async def compare_table(
    spec: TableSpec, lite: SQLiteSide, pg: PostgresSide, *, leaf_rows: int = LEAF_ROWS,
) -> AsyncIterator[tuple[TableResult, list[RowDiff]]]:
    """Yield the table's result (updated in place) with each batch of differing rows found."""
    result = TableResult(spec.entity.table)
    (lite_sums, result.unkeyed), pg_sums = await asyncio.gather(
        lite.scan(spec, "", PREFIX_STEP), pg.sums(spec, "", PREFIX_STEP))
    result.sqlite_rows = sum(n for n, _ in lite_sums.values())
    result.postgres_rows = sum(n for n, _ in pg_sums.values())
    todo = [(p, lite_sums.get(p), pg_sums.get(p)) for p in sorted(set(lite_sums) | set(pg_sums))]
    while todo:
        prefix, a, b = todo.pop(0)
        if a == b:
            continue
        result.groups_compared += 1
        if max((a or (0, 0))[0], (b or (0, 0))[0]) > leaf_rows and len(prefix) < MAX_PREFIX:
            width = len(prefix) + PREFIX_STEP
            (sub_a, _), sub_b = await asyncio.gather(
                asyncio.to_thread(lite.sums, spec, prefix, width), pg.sums(spec, prefix, width))
            todo[:0] = [(p, sub_a.get(p), sub_b.get(p)) for p in sorted(set(sub_a) | set(sub_b))]
            continue
        rows_a, rows_b = await asyncio.gather(asyncio.to_thread(lite.rows, spec, prefix),
                                              pg.rows(spec, prefix))
        diffs = diff_rows(spec.entity, rows_a, rows_b)
        if diffs:
            yield result, diffs
    yield result, []


def diff_rows(entity: Entity, lite: dict[str, Normal], pg: dict[str, Normal]) -> list[RowDiff]:
    out = []
    names = entity.column_names
    for rid in sorted(set(lite) | set(pg)):
        a, b = lite.get(rid), pg.get(rid)
        if a == b:
            continue
        if b is None:
            out.append(RowDiff(entity.table, rid, "missing_in_postgres"))
        elif a is None:
            out.append(RowDiff(entity.table, rid, "missing_in_sqlite"))
        else:
            cols = tuple(n for n, x, y in zip(names, a, b, strict=True) if x != y)
            out.append(RowDiff(entity.table, rid, "content", cols))
    return out


@dataclass
class Exclusions:
    """Rows that are not differences: backfill findings and pending mirror writes."""

    backfill: dict[tuple[str, str], str] = field(default_factory=dict)  # -> kind: reason
    pending: set[str] = field(default_factory=set)

    def why(self, d: RowDiff) -> str | None:
        if d.id in self.pending:
            return "pending"
        if (d.table, d.id) in self.backfill:
            return "backfill"
        return None


async def load_backfill_findings(pool: asyncpg.Pool) -> dict[tuple[str, str], str]:
    exists = await pool.fetchval("SELECT to_regclass($1) IS NOT NULL", REJECTS_TABLE)
    if not exists:
        return {}
    out: dict[tuple[str, str], str] = {}
    async with pool.acquire() as conn, conn.transaction():
        async for r in conn.cursor(
                f"SELECT table_name, mapped_id, kind, reason FROM {REJECTS_TABLE} "
                "WHERE mapped_id IS NOT NULL ORDER BY seq"):
            out.setdefault((r["table_name"], str(r["mapped_id"])), f"{r['kind']}: {r['reason']}")
    return out


# -- search parity (informational) ------------------------------------------------------------

_WORD = re.compile(r"[A-Za-z]{4,}")


@dataclass(frozen=True, slots=True)
class SearchSample:
    query: str
    user_id: str
    sqlite_hits: int
    postgres_hits: int
    jaccard: float


async def sample_queries(pool: asyncpg.Pool, n: int, seed: int = 7) -> list[tuple[str, str]]:
    """`n` (query, user_id) pairs: two words of a random question, and its owner."""
    if n <= 0:
        return []
    async with pool.acquire() as conn:
        rows = await conn.fetch(
            "SELECT q.question, b.user_id FROM questions q TABLESAMPLE BERNOULLI ($2) "
            "REPEATABLE ($3) JOIN study_books b ON b.id = q.study_book_id LIMIT $1",
            n * 4, await _sample_percent(conn, n * 4), seed)
    rng = random.Random(seed)
    out = []
    for r in rows:
        words = _WORD.findall(r["question"])
        if words:
            k = min(len(words), 2)
            start = rng.randrange(len(words) - k + 1)
            out.append((" ".join(words[start:start + k]).lower(), str(r["user_id"])))
        if len(out) == n:
            break
    return out


async def _sample_percent(conn: asyncpg.Connection, want: int) -> float:
    estimate = await conn.fetchval(
        "SELECT greatest(reltuples, 1) FROM pg_class WHERE oid = 'questions'::regclass")
    return float(min(100.0, max(0.01, 300.0 * want / float(estimate or 1))))


async def search_parity(sqlite_store: Any, pg_store: Any, samples: list[tuple[str, str]],
                        limit: int = 10) -> list[SearchSample]:
    out = []
    for query, user in samples:
        uid = uuid.UUID(user)
        a = {h.question_id for h in await sqlite_store.search(query, uid, limit)}
        b = {h.question_id for h in await pg_store.search(query, uid, limit)}
        union = a | b
        out.append(SearchSample(query, user, len(a), len(b),
                                1.0 if not union else round(len(a & b) / len(union), 3)))
    return out


# -- the whole verification -------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """A mirror write given up on: `target` never got it."""

    target: str
    entity: str
    row_id: str
    op: str
    attempts: int
    last_error: str | None

    def to_json(self) -> dict[str, Any]:
        return {"target": self.target, "entity": self.entity, "id": self.row_id, "op": self.op,
                "attempts": self.attempts, "last_error": self.last_error}


@dataclass
class VerifyReport:
    tables: dict[str, TableResult]
    differences: list[RowDiff]
    pending: list[RowDiff]
    backfill: list[tuple[RowDiff, str]]
    orphans: dict[str, int]
    search: list[SearchSample]
    seconds: float = 0.0
    totals: dict[str, int] = field(default_factory=dict)
    search_error: str | None = None
    dead_letters: list[DeadLetter] = field(default_factory=list)  # the first DEAD_LISTED

    @property
    def ok(self) -> bool:
        return (self.totals.get("differences", 0) == 0 and not any(self.orphans.values())
                and self.totals.get("dead_letters", 0) == 0)

    def to_json(self) -> dict[str, Any]:
        def row(d: RowDiff) -> dict[str, Any]:
            out: dict[str, Any] = {"table": d.table, "id": d.id, "kind": d.kind}
            if d.columns:
                out["columns"] = list(d.columns)
            return out

        jaccards = [s.jaccard for s in self.search]
        return {
            "ok": self.ok,
            "seconds": round(self.seconds, 3),
            "tables": {t: {"sqlite": r.sqlite_rows, "postgres": r.postgres_rows,
                           "differences": r.differences, "pending": r.pending,
                           "backfill": r.backfill, "sqlite_rows_without_id": r.unkeyed}
                       for t, r in self.tables.items()},
            "totals": self.totals,
            "differences": [row(d) for d in self.differences],
            "pending": [row(d) for d in self.pending],
            "backfill": [{**row(d), "reason": why} for d, why in self.backfill],
            "dead_letters": [d.to_json() for d in self.dead_letters],
            "foreign_keys": {"orphans": self.orphans},
            "search": {
                "informational": True,
                "queries": len(self.search),
                "mean_jaccard": round(sum(jaccards) / len(jaccards), 3) if jaccards else None,
                "error": self.search_error,
                "samples": [{"query": s.query, "user_id": s.user_id, "sqlite": s.sqlite_hits,
                             "postgres": s.postgres_hits, "jaccard": s.jaccard}
                            for s in self.search],
            },
        }


async def pg_orphans(pool: asyncpg.Pool) -> dict[str, int]:
    """Rows whose reference names no row, per `table.column` (PostgreSQL)."""
    out = {}
    for e in ENTITIES:
        for c in e.columns:
            if c.references:
                out[f"{e.table}.{c.name}"] = await pool.fetchval(
                    f"SELECT count(*) FROM {e.table} t WHERE t.{c.name} IS NOT NULL AND NOT "
                    f"EXISTS (SELECT 1 FROM {c.references} p WHERE p.id = t.{c.name})")
    return out


OnDiffs = Callable[[list[RowDiff]], Any]
OnStep = Callable[[str], None]  # told each step's name as it ends (the CLI's progress bar)
VERIFY_STEPS = len(ENTITIES) + 1  # each table compared, then the search sample
MAX_RECHECK = 100_000  # differing ids kept to re-check against the outboxes at the end


async def compare_stores(
    sqlite_path: Path, pool: asyncpg.Pool, *, pending: Callable[[], Any],
    on_diffs: OnDiffs | None = None, sequential: bool = False, leaf_rows: int = LEAF_ROWS,
    processes: Executor | None = None, on_table: OnStep | None = None,
) -> VerifyReport:
    """Compare every table. `pending()` returns the ids with a pending mirror write; it is
    asked before and after, so a write that lands meanwhile is not a difference.
    `on_diffs` gets each batch of real differences as it is found (reconcile repairs them);
    `sequential` compares parents before children instead of all tables at once; `on_table`
    gets each table's name once it is compared."""
    started = time.perf_counter()
    await require_tables(sqlite_path, pool)
    lite, pg = SQLiteSide(sqlite_path, processes), PostgresSide(pool)
    ex = Exclusions(await load_backfill_findings(pool), set(await pending()))
    report = VerifyReport({}, [], [], [], {}, [])
    totals = {"differences": 0, "pending": 0, "backfill": 0}
    recheck: list[RowDiff] = []

    def classify(d: RowDiff, why: str | None) -> None:
        result = report.tables[d.table]
        if why == "pending":
            result.pending += 1
            totals["pending"] += 1
            if len(report.pending) < MAX_LISTED:
                report.pending.append(d)
        elif why == "backfill":
            result.backfill += 1
            totals["backfill"] += 1
            if len(report.backfill) < MAX_LISTED:
                report.backfill.append((d, ex.backfill[(d.table, d.id)]))
        else:
            result.differences += 1
            totals["differences"] += 1

    async def one(table: str) -> None:
        async for result, diffs in compare_table(TableSpec.of(BY_TABLE[table]), lite, pg,
                                                 leaf_rows=leaf_rows):
            report.tables[table] = result
            real = []
            for d in diffs:
                why = ex.why(d)
                classify(d, why)
                if why is None:
                    real.append(d)
                    if len(recheck) < MAX_RECHECK:
                        recheck.append(d)
            if real and on_diffs is not None:
                await on_diffs(real)
        if on_table is not None:
            on_table(table)

    order = [e.table for e in ENTITIES]
    if sequential:
        for table in order:
            await one(table)
    else:
        await asyncio.gather(*(one(t) for t in order))
    # a mirror write that was queued while the tables were read explains its row too
    ex.pending |= set(await pending())
    for d in recheck:
        if d.id in ex.pending:
            report.tables[d.table].differences -= 1
            totals["differences"] -= 1
            classify(d, "pending")
        elif len(report.differences) < MAX_LISTED:
            report.differences.append(d)
    report.totals = totals
    report.orphans = await pg_orphans(pool)
    report.tables = {t: report.tables[t] for t in order if t in report.tables}
    report.seconds = time.perf_counter() - started
    return report


# -- opening the stores -----------------------------------------------------------------------


async def require_tables(sqlite_path: Path, pool: asyncpg.Pool) -> None:
    tables = [e.table for e in ENTITIES]
    missing = await pool.fetchval(
        "SELECT min(t) FROM unnest($1::text[]) AS t WHERE to_regclass(t) IS NULL", tables)
    if missing:
        raise SchemaMissing(f"postgres has no table {missing}: run `cutover schema init` first")

    def sqlite_missing() -> str | None:
        conn = sqlite3.connect(f"{sqlite_path.resolve().as_uri()}?mode=ro", uri=True)
        try:
            names = {r[0] for r in conn.execute("SELECT name FROM sqlite_master")}
        except sqlite3.DatabaseError as exc:
            return f"is not a SQLite database ({exc})"
        finally:
            conn.close()
        gone = [t for t in tables if t not in names]
        return f"has no table {gone[0]}" if gone else None

    problem = await asyncio.to_thread(sqlite_missing)
    if problem:
        raise SchemaMissing(f"SQLITE_PATH={sqlite_path} {problem}")


async def pending_rows(sqlite_store: Any, pg_store: Any) -> set[str]:
    """Ids with a mirror write waiting in either outbox (dead letters included)."""
    ids: set[str] = set()
    for store, target in ((sqlite_store, "postgres"), (pg_store, "sqlite")):
        try:
            stats = await store.outbox_stats(target)
        except (sqlite3.OperationalError, asyncpg.UndefinedTableError):
            continue  # a store without the cutover's tables has no outbox yet
        ids |= {str(x) for x in stats.by_row}
    return ids


async def add_dead_letters(report: VerifyReport, sqlite_store: Any, pg_store: Any) -> None:
    """Count the dead letters of both outboxes into `report` and list the first few."""
    count, listed = 0, []
    for store, target in ((sqlite_store, "postgres"), (pg_store, "sqlite")):
        try:
            stats = await store.outbox_stats(target)
            entries = await store.outbox_dead(target, DEAD_LISTED) if stats.dead else []
        except (sqlite3.OperationalError, asyncpg.UndefinedTableError):
            continue  # a store without the cutover's tables has no outbox yet
        count += stats.dead
        listed += [DeadLetter(target, e.mutation.entity, str(e.mutation.row_id), e.mutation.op,
                              e.attempts, e.last_error) for e in entries]
    report.totals["dead_letters"] = count
    report.dead_letters = listed[:DEAD_LISTED]


def is_upgraded(path: Path) -> bool:
    """True when the SQLite file holds the cutover's tables (schema init ran on it)."""
    conn = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True)
    try:
        return conn.execute(
            "SELECT 1 FROM sqlite_master WHERE name = 'cutover_outbox'").fetchone() is not None
    except sqlite3.DatabaseError:
        return False  # not a SQLite file: require_tables says so
    finally:
        conn.close()


async def run_verify(sqlite_path: Path, dsn: str, *, queries: int = 20,
                     progress: OnStep | None = None) -> VerifyReport:
    """Compare the SQLite file at `sqlite_path` with the database at `dsn`; `progress` is told
    each of the VERIFY_STEPS steps as it ends."""
    from proxy.stores.postgres import PostgresStore
    from proxy.stores.sqlite import SQLiteStore

    pool = await open_pool(dsn)
    upgraded = await asyncio.to_thread(is_upgraded, sqlite_path)
    sqlite_store = SQLiteStore(sqlite_path)
    pg_store = PostgresStore(dsn, min_size=1, max_size=2)
    try:
        async def pending() -> set[str]:
            # a legacy file not yet upgraded has no outbox (and is not opened for writing)
            return await pending_rows(sqlite_store, pg_store) if upgraded else set()

        processes = scan_processes()
        try:
            report = await compare_stores(
                sqlite_path, pool, pending=pending, processes=processes,
                on_table=None if progress is None else (lambda t: progress(f"{t} compared")))
        finally:
            if processes is not None:
                processes.shutdown(wait=False, cancel_futures=True)
        if upgraded:
            await add_dead_letters(report, sqlite_store, pg_store)
        if not upgraded:
            report.search_error = "the SQLite database is not upgraded (no search index)"
        else:
            try:
                samples = await sample_queries(pool, queries)
                report.search = await search_parity(sqlite_store, pg_store, samples)
            except (sqlite3.Error, asyncpg.PostgresError) as exc:
                report.search_error = f"{type(exc).__name__}: {exc}"[:200]
        if progress is not None:
            progress("search sample")
        return report
    finally:
        await pool.close()
        await sqlite_store.close()
        await pg_store.close()
