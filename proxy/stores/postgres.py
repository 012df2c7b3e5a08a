"""The PostgreSQL store: asyncpg, tsvector full-text search plus pg_trgm word similarity.

A primary write and its outbox entry are one statement (a data-modifying CTE), so they commit
together in one round trip.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from itertools import groupby
from typing import Any, Literal, TypeVar

import asyncpg

from proxy.codec import from_postgres
from proxy.control import COLUMNS, Control
from proxy.errors import Fenced, NotFoundError, StoreUnavailable, ValidationError
from proxy.models import BY_NAME, BY_TABLE, ENTITIES, REFERENCED_BY, Entity, Kind, SearchResult
from proxy.stores import migrations, postgres_schema
from proxy.stores.base import (
    WAITS,
    ApplyOutcome,
    ApplyResult,
    Mutation,
    OutboxEntry,
    OutboxStats,
    Written,
)
from proxy.stores.methods import StoreMethods
from proxy.stores.searchtext import (
    FTS_CANDIDATES,
    ParsedQuery,
    document,
    highlight,
    parse_query,
    rank_fts,
)

# word_similarity threshold of a query word to a vocabulary word it may be a typo of: 'ceter'
# scores 0.44 against 'center', pg_trgm's default of 0.6 would miss most typos of short words,
# 0.4 missed 'tetsfile' for 'testfile' (0.38). bench/parity.py's misspellings found in the top
# 10: 88.3-90.0% at 0.4, 95.0-96.7% at 0.3. Edits bound the corrections anyway (at most half
# the word). 0.4 had been kept while the verdict counted typo guesses against a flip (see
# shadow.compare, `agreement`).
FUZZY_THRESHOLD = 0.3
FUZZY_MIN_CHARS = 4  # shorter queries have too few trigrams for similarity to mean anything
MAX_FUZZY_WORDS = 8  # queries of more distinct words get the full-text branch only
FUZZY_FIXES = 5  # corrections per query word, from the vocabulary
# A user with at most this many questions is searched by reading them all (3,330 in 3.3 ms from
# shared buffers; a search about 20 ms when they come from the OS's cache: bench/search_plans.py)
# rather than through the full-text index, whose cost follows every user's matches
# (`_users_questions`). Each process counts a user's questions again after USER_SIZE_TTL_S: the
# choice only needs the order of magnitude.
SCAN_USER_QUESTIONS = 10_000
USER_SIZE_TTL_S = 60.0
USER_SIZES_KEPT = 10_000  # users whose size a process remembers (forgotten all at once)
SUBSTRING_SCORE = 0.5

# A process frozen (SIGSTOP, a stalled host) inside a transaction holds its locks, the control
# record's among them, which a flip waits for: the server ends such a session after this long
IDLE_IN_TRANSACTION = "10s"

UNAVAILABLE = (
    OSError,
    TimeoutError,
    asyncpg.InterfaceError,
    asyncpg.PostgresConnectionError,
    asyncpg.CannotConnectNowError,
    asyncpg.AdminShutdownError,
    asyncpg.CrashShutdownError,
)


# what makes a batch statement fail for one of its rows (then each row is applied on its own)
BATCH_REJECTED = (
    asyncpg.IntegrityConstraintViolationError,
    asyncpg.DataError,
    asyncpg.ProgramLimitExceededError,
    asyncpg.DeadlockDetectedError,
)


class _Connection(asyncpg.Connection):  # type: ignore[misc]
    """No reset query on release to the pool.

    asyncpg's default (`RESET ALL; UNLISTEN *; ...`) costs a round trip per release, doubling
    every call's latency, and would undo the fuzzy threshold set when the connection opens.
    The store holds no session state that needs resetting: no LISTEN, no cursors or advisory
    locks outside a transaction.
    """

    def get_reset_query(self) -> str:
        return ""


def _payload_sql(entity: Entity, alias: str) -> str:
    """jsonb of a row's columns, decimals as text so no float ever touches them."""
    parts = []
    for c in entity.columns:
        value = f"{alias}.{c.name}"
        if c.kind is Kind.DECIMAL:
            value += "::text"
        parts.append(f"'{c.name}', {value}")
    return f"jsonb_build_object('row', jsonb_build_object({', '.join(parts)}))"


def _outbox_cte(entity: Entity, op: str, target_param: str) -> str:
    """The outbox entries of the write `r` (which returns the version it gave the row)."""
    payload = "NULL" if op == "delete" else _payload_sql(entity, "r")
    return (
        "o AS (INSERT INTO cutover_outbox (target, entity, op, row_id, version, payload) "
        f"SELECT t, '{entity.name}', '{op}', r.id, r.row_version, {payload} "
        f"FROM r, unnest({target_param}::text[]) AS t RETURNING seq)"
    )


class _OneConnection:
    """A pool of one connection, held: callers take turns on it (a lock), as they would wait
    for a pool of one, without asyncpg's pool machinery per call (a task to release, timers, a
    few more turns of the loop). The shadow worker's child runs one search at a time on one of
    these: its CPU per PostgreSQL search fell from 0.48-0.50 to 0.33-0.35 ms (bench/shadow_cost.py,
    alternating with the pool).

    The connection opens on first use and again after it closed (a server restart, a
    terminated backend). On release a transaction left open is rolled back (`reset`); a
    statement cancelled mid-way (a deadline) is waited for by the next one, by asyncpg.
    """

    def __init__(self, dsn: str) -> None:
        self._dsn = dsn
        self._conn: asyncpg.Connection | None = None
        self._lock = asyncio.Lock()

    @contextlib.asynccontextmanager
    async def acquire(
        self, timeout: float | None = None  # noqa: ASYNC109 (asyncpg.Pool.acquire's signature)
    ) -> AsyncIterator[asyncpg.Connection]:
        async with asyncio.timeout(timeout):
            await self._lock.acquire()
        try:
            if self._conn is None or self._conn.is_closed():
                self._conn = None
                async with asyncio.timeout(timeout):
                    conn = await asyncpg.connect(self._dsn, timeout=10, command_timeout=30,
                                                 connection_class=_Connection)
                    await _init_connection(conn)
                self._conn = conn
            conn = self._conn
            try:
                yield conn
            finally:
                if conn.is_closed():  # lost, or terminated by the caller: the next one opens
                    self._conn = None
                else:
                    try:
                        await conn.reset()
                    except BaseException:  # its state is unknown: a fresh connection next time
                        self.terminate()
                        raise
        finally:
            self._lock.release()

    async def close(self) -> None:
        """Close once the call in progress ends (as a pool's `close` waits), at most 5 s."""
        try:
            async with asyncio.timeout(5):
                await self._lock.acquire()
        except TimeoutError:
            self.terminate()
            return
        try:
            conn, self._conn = self._conn, None
            if conn is not None:
                await conn.close(timeout=5)
        finally:
            self._lock.release()

    def terminate(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.terminate()


class PostgresStore(StoreMethods):
    """One PostgreSQL database.

    `max_size=1` holds one connection rather than a pool (`_OneConnection`: the same turns,
    less CPU a call).
    """

    backend: Literal["sqlite", "postgres"] = "postgres"

    def __init__(self, dsn: str, *, min_size: int = 2, max_size: int = 10) -> None:
        self.dsn = dsn
        self._min_size = min_size
        self._max_size = max_size
        self._pool: asyncpg.Pool | _OneConnection | None = None
        self._pool_made = asyncio.Lock()
        self._mirror: _MirrorSession | None = None
        # user -> (when counted, whether a search scans their questions)
        self._user_sizes: dict[uuid.UUID, tuple[float, bool]] = {}

    async def _get_pool(self) -> asyncpg.Pool | _OneConnection:
        # one pool even when the first calls come together: a second one, made beside it and
        # overwritten, stayed open, and kept reconnecting after the store was closed
        if self._pool is not None:
            return self._pool
        async with self._pool_made:
            if self._pool is None and self._max_size == 1:
                self._pool = _OneConnection(self.dsn)
            elif self._pool is None:
                try:
                    self._pool = await asyncpg.create_pool(
                        self.dsn, min_size=self._min_size, max_size=self._max_size,
                        init=_init_connection, timeout=10, command_timeout=30,
                        connection_class=_Connection,
                    )
                except UNAVAILABLE as exc:
                    raise StoreUnavailable("postgres", _reason(exc)) from exc
            return self._pool

    async def _fetch(self, sql: str, *args: Any) -> list[asyncpg.Record]:
        pool = await self._get_pool()

        async def once() -> list[asyncpg.Record]:
            async with pool.acquire(timeout=10) as conn:
                return list(await conn.fetch(sql, *args))

        try:  # each call its own transaction: one that lost PostgreSQL's race runs again
            return await _past_multixact_race(once)
        except UNAVAILABLE as exc:
            raise StoreUnavailable("postgres", _reason(exc)) from exc

    async def init_schema(self) -> None:
        await self._get_pool()  # StoreUnavailable when the server cannot be reached
        await migrations.upgrade_postgres(self.dsn)

    async def schema_revision(self) -> str | None:
        pool = await self._get_pool()
        try:
            async with pool.acquire(timeout=10) as conn:
                return await migrations.postgres_revision(conn)
        except UNAVAILABLE as exc:
            raise StoreUnavailable("postgres", _reason(exc)) from exc

    async def ping(self) -> None:
        await self._fetch("SELECT 1")

    async def close(self) -> None:
        if self._mirror is not None:
            mirror, self._mirror = self._mirror, None
            await mirror.close()
        if self._pool is not None:
            pool, self._pool = self._pool, None
            try:
                await pool.close()
            except UNAVAILABLE:
                pool.terminate()

    # -- writes as the primary: the version is chosen in the statement, under the row's lock
    # (see proxy.stores.base) --
    async def insert_row(
        self, entity: Entity, values: dict[str, Any], *, clock: int,
        outbox_targets: Sequence[str] = (), epoch: int | None = None,
    ) -> Written:
        cols = list(values)
        n = len(cols)
        id_param = f"${cols.index('id') + 1}"
        sql = (
            f"WITH {_FENCE}, r AS (INSERT INTO {entity.table} ({', '.join(cols)}, row_version) "
            f"SELECT {', '.join(f'${i + 1}' for i in range(n))}, GREATEST(${n + 1}, "
            "COALESCE((SELECT version + 1 FROM cutover_tombstones "
            f"WHERE entity = '{entity.name}' AND row_id = {id_param}), 0)) "
            f"WHERE {_fence_holds(f'${n + 3}')} RETURNING *), "
            f"{_outbox_cte(entity, 'insert', f'${n + 2}')} {_FENCED_RESULT}"
        )
        rows = await self._write(entity, values, sql, *values.values(), clock,
                                 list(outbox_targets), epoch)
        return _written(entity, _unfenced(rows[0], epoch, entity, values["id"]))

    async def update_row(
        self, entity: Entity, row_id: uuid.UUID, changes: dict[str, Any], *, clock: int,
        outbox_targets: Sequence[str] = (), epoch: int | None = None,
    ) -> Written:
        cols = list(changes)
        n = len(cols)
        sets = ", ".join(f"{c} = ${i + 1}" for i, c in enumerate(cols))
        sql = (
            f"WITH {_FENCE}, r AS (UPDATE {entity.table} SET {sets}, "
            f"row_version = GREATEST({entity.table}.row_version + 1, ${n + 1}) "
            f"WHERE id = ${n + 3} AND {_fence_holds(f'${n + 4}')} RETURNING *), "
            f"{_outbox_cte(entity, 'update', f'${n + 2}')} {_FENCED_RESULT}"
        )
        rows = await self._write(entity, changes, sql, *changes.values(), clock,
                                 list(outbox_targets), row_id, epoch)
        return _written(entity, _unfenced(rows[0], epoch, entity, row_id))

    async def delete_row(
        self, entity: Entity, row_id: uuid.UUID, *, clock: int,
        outbox_targets: Sequence[str] = (), epoch: int | None = None,
    ) -> Written:
        targets = list(outbox_targets)
        if not REFERENCED_BY[entity.table]:  # nothing references it: one statement does
            where = "id = $1 AND " + _fence_holds("$4")
            sql = (f"WITH {_FENCE}, {_delete_cte(entity, where)}, "
                   f"{_outbox_cte(entity, 'delete', '$3')} {_FENCED_RESULT}")
            rows = await self._fetch(sql, row_id, clock, targets, epoch)
            row = _unfenced(rows[0], epoch, entity, row_id)
            return Written(None, row["outbox_seq"], row["row_version"])
        pool = await self._get_pool()

        async def once() -> tuple[asyncpg.Record | None, list[Mutation]]:
            async with pool.acquire(timeout=10) as conn, conn.transaction():
                fence = await conn.fetchval(
                    "SELECT epoch FROM cutover_control WHERE id = 1 FOR KEY SHARE")
                if epoch is not None and fence != epoch:
                    raise Fenced("postgres", epoch, fence or 0)
                # locked first: a child inserted meanwhile would be cascaded with no entry
                locked = await conn.fetchval(
                    f"SELECT 1 FROM {entity.table} WHERE id = $1 FOR UPDATE", row_id)
                if locked is None:
                    raise NotFoundError(entity.name, row_id)
                cascaded = await _cascade(conn, entity, [row_id], clock, targets)
                return (await conn.fetchrow(_delete_primary_sql(entity), row_id, clock,
                                            targets), cascaded)

        try:
            row, cascaded = await _past_multixact_race(once)
        except UNAVAILABLE as exc:
            raise StoreUnavailable("postgres", _reason(exc)) from exc
        assert row is not None
        return Written(None, row["outbox_seq"], row["row_version"], tuple(cascaded))

    # -- the control record (see proxy.control) --
    async def read_control(self) -> Control | None:
        try:
            rows = await self._fetch(f"SELECT {COLUMNS} FROM cutover_control WHERE id = 1")
        except asyncpg.UndefinedTableError:
            return None  # a schema from before the record (`cutover schema init`)
        return Control.from_row(*rows[0]) if rows else None

    async def advance_control(self, control: Control) -> Control:
        """Store `control` if its epoch is higher than the stored one's; return the stored."""
        rows = await self._fetch(
            f"WITH w AS (INSERT INTO cutover_control (id, {COLUMNS}) "
            "VALUES (1, $1, $2, $3, $4, $5) ON CONFLICT (id) DO UPDATE SET "
            "read_primary = EXCLUDED.read_primary, epoch = EXCLUDED.epoch, "
            "dual_write = EXCLUDED.dual_write, env_applied = EXCLUDED.env_applied, "
            "file_word = EXCLUDED.file_word WHERE EXCLUDED.epoch > cutover_control.epoch "
            f"RETURNING {COLUMNS}) SELECT {COLUMNS} FROM w UNION ALL "
            f"SELECT {COLUMNS} FROM cutover_control WHERE NOT EXISTS (SELECT 1 FROM w)",
            *control.to_params())
        return Control.from_row(*rows[0])

    async def fence_control(self, control: Control, *, expect_epoch: int) -> bool:
        """Store `control` only if the stored epoch is still `expect_epoch` (a flip's fence).
        FOR UPDATE waits for the writes holding the record (FOR KEY SHARE) to commit; a write
        arriving later reads the new epoch and is refused."""
        pool = await self._get_pool()

        async def once() -> bool:
            async with pool.acquire(timeout=10) as conn, conn.transaction():
                stored = await conn.fetchval(
                    "SELECT epoch FROM cutover_control WHERE id = 1 FOR UPDATE")
                if stored != expect_epoch:
                    return False
                await conn.execute(
                    "UPDATE cutover_control SET read_primary = $1, epoch = $2, dual_write = $3,"
                    " env_applied = $4, file_word = $5 WHERE id = 1", *control.to_params())
                return True

        try:
            return await _past_multixact_race(once)
        except UNAVAILABLE as exc:
            raise StoreUnavailable("postgres", _reason(exc)) from exc

    async def _write(
        self, entity: Entity, values: dict[str, Any], sql: str, *args: Any
    ) -> list[asyncpg.Record]:
        try:
            return await self._fetch(sql, *args)
        except asyncpg.ForeignKeyViolationError as exc:
            raise _fk_error(entity, values, exc) from exc
        except asyncpg.UniqueViolationError as exc:
            column = (exc.constraint_name or "").removeprefix(f"{entity.table}_").removesuffix(
                "_key").removesuffix("_pkey") or "id"
            if column in ("", "pkey", "id"):
                raise ValidationError("id", "a row with this id already exists") from exc
            raise ValidationError(column, "already in use") from exc
        except (asyncpg.DataError, asyncpg.ProgramLimitExceededError) as exc:
            raise ValidationError(entity.name, f"rejected by the database: {exc}") from exc

    # -- reads --
    async def get_row(self, entity: Entity, row_id: uuid.UUID) -> dict[str, Any] | None:
        rows = await self._fetch(f"SELECT * FROM {entity.table} WHERE id = $1", row_id)
        return from_postgres(entity, rows[0]) if rows else None

    async def get_versioned(
        self, entity: Entity, row_ids: Sequence[uuid.UUID]
    ) -> dict[uuid.UUID, tuple[dict[str, Any], int]]:
        rows = await self._fetch(f"SELECT * FROM {entity.table} WHERE id = ANY($1::uuid[])",
                                 list(row_ids))
        return {r["id"]: (from_postgres(entity, r), r["row_version"]) for r in rows}

    async def list_rows(
        self, entity: Entity, owner: Any | None, *, limit: int, offset: int
    ) -> list[dict[str, Any]]:
        if entity.owner is not None and owner is not None:
            sql = (f"SELECT * FROM {entity.table} WHERE {entity.owner} = $1 "
                   f"ORDER BY {entity.order_by}, id LIMIT $2 OFFSET $3")
            rows = await self._fetch(sql, owner, limit, offset)
        else:
            sql = f"SELECT * FROM {entity.table} ORDER BY {entity.order_by}, id LIMIT $1 OFFSET $2"
            rows = await self._fetch(sql, limit, offset)
        return [from_postgres(entity, r) for r in rows]

    async def search(
        self, query: str, user_id: uuid.UUID, limit: int, *, highlights: bool = True
    ) -> list[SearchResult]:
        parsed = parse_query(query)
        if parsed.empty:
            return []
        hits: list[SearchResult] = []
        if parsed.terms:
            scan = await self._scan_users_questions(user_id)
            sql, args = search_statement(parsed, user_id, limit, scan=scan)
            rows = await self._fetch(sql, *args)
            # full-text candidates are ranked by the Python both stores share (searchtext);
            # fuzzy rows (only when there is no full-text row) keep word similarity's order
            ranked = rank_fts(parsed, ((r["id"], r["question"], r["answer"])
                                       for r in rows if r["is_fts"]), limit)
            hits = [_hit(qid, question, answer, parsed, score, "fts", highlights)
                    for score, qid, question, answer in ranked]
            fuzzy = sorted((r for r in rows if not r["is_fts"]),
                           key=lambda r: (-r["score"], r["id"]))
            hits += [_result(r, parsed, "fuzzy", highlights) for r in fuzzy[:limit]]
        if parsed.substrings and len(hits) < limit:
            seen = {h.question_id for h in hits}
            sql, args = substring_statement(parsed, user_id, limit + len(seen))
            rows = await self._fetch(sql, *args)
            for r in rows:
                if r["id"] not in seen and len(hits) < limit:
                    hits.append(_result(r, parsed, "substring", highlights))
        return hits

    async def _scan_users_questions(self, user_id: uuid.UUID) -> bool:
        """Whether a search of `user_id` reads the user's questions (at most
        SCAN_USER_QUESTIONS of them), remembered for USER_SIZE_TTL_S."""
        now = time.monotonic()
        known = self._user_sizes.get(user_id)
        if known is None or now - known[0] > USER_SIZE_TTL_S:
            rows = await self._fetch(USER_QUESTIONS_SQL, user_id, SCAN_USER_QUESTIONS + 1)
            if len(self._user_sizes) >= USER_SIZES_KEPT:
                self._user_sizes.clear()
            known = self._user_sizes[user_id] = (now, rows[0][0] <= SCAN_USER_QUESTIONS)
        return known[1]

    # -- as a mirror --
    async def apply(self, mutations: Sequence[Mutation]) -> list[ApplyResult]:
        pool = await self._get_pool()
        try:
            async with pool.acquire(timeout=10) as conn:
                return await _serializably(lambda: _apply_batch(conn, mutations))
        except UNAVAILABLE as exc:
            raise StoreUnavailable("postgres", _reason(exc)) from exc

    async def delete_parents(self, deletes: Sequence[Mutation]) -> list[ApplyResult]:
        """One mirror transaction (`_as_mirror`), a statement per delete: a child attached by
        a transaction that committed after the snapshot makes the foreign key's action fail
        with a serialization error (its check looks for new referencing rows), and the whole
        is tried again, seeing that child."""
        pool = await self._get_pool()

        async def each(conn: asyncpg.Connection) -> list[ApplyResult]:
            results = []
            for m in deletes:
                found = await conn.fetchrow(_DELETE_PARENT[m.entity], m.row_id, m.version)
                results.append(WAITS if found["waits"] else ApplyResult(
                    ApplyOutcome.APPLIED if found["n"] else ApplyOutcome.SUPERSEDED))
            return results

        async def attempt() -> list[ApplyResult]:
            async with pool.acquire(timeout=10) as conn:
                return await _as_mirror(conn, each)

        try:
            return await _serializably(attempt)
        except UNAVAILABLE as exc:
            raise StoreUnavailable("postgres", _reason(exc)) from exc

    async def apply_inline(self, mutations: Sequence[Mutation]) -> list[ApplyResult]:
        """`apply` on a connection of its own whose commits skip the WAL flush (see
        `_MirrorSession`): callers acknowledge the outbox entries only after a `flush_wal`."""
        if self._mirror is None:
            self._mirror = _MirrorSession(self.dsn)
        try:
            return await self._mirror.apply(mutations)
        except UNAVAILABLE as exc:
            raise StoreUnavailable("postgres", _reason(exc)) from exc

    async def flush_wal(self) -> None:
        """Make every commit so far durable, the asynchronous ones of `apply_inline` included.

        A transaction that writes (here one counter row) and commits synchronously flushes
        the WAL up to its commit record, so past every earlier commit. (One that only takes a
        transaction id writes nothing, and PostgreSQL skips the flush.)
        """
        pool = await self._get_pool()
        try:
            async with pool.acquire(timeout=10) as conn:
                try:
                    await conn.execute(_FLUSH_WAL)
                except asyncpg.UndefinedTableError:  # a schema from before the table
                    await conn.execute("ROLLBACK")
                    await conn.execute(postgres_schema.WAL_FLUSHES)
                    await conn.execute(_FLUSH_WAL)
        except UNAVAILABLE as exc:
            raise StoreUnavailable("postgres", _reason(exc)) from exc

    # -- outbox --
    async def outbox_pending(self, target: str, limit: int) -> list[OutboxEntry]:
        rows = await self._fetch(
            "SELECT * FROM cutover_outbox WHERE target = $1 AND NOT dead ORDER BY seq LIMIT $2",
            target, limit,
        )
        return [_entry(r) for r in rows]

    async def outbox_dead(self, target: str, limit: int) -> list[OutboxEntry]:
        rows = await self._fetch(
            "SELECT * FROM cutover_outbox WHERE target = $1 AND dead ORDER BY seq LIMIT $2",
            target, limit,
        )
        return [_entry(r) for r in rows]

    async def outbox_ack(self, seqs: Sequence[int]) -> None:
        if seqs:
            await self._fetch(
                "DELETE FROM cutover_outbox WHERE seq = ANY($1::bigint[])", list(seqs)
            )

    async def outbox_retry(self, seq: int, error: str, *, dead: bool) -> None:
        await self._fetch(
            "UPDATE cutover_outbox SET attempts = attempts + 1, last_error = $2, dead = $3 "
            "WHERE seq = $1", seq, error[:500], dead,
        )

    async def outbox_requeue_dead(self, target: str) -> int:
        rows = await self._fetch(
            "WITH u AS (UPDATE cutover_outbox SET dead = false, attempts = 0 "
            "WHERE target = $1 AND dead RETURNING 1) SELECT count(*) FROM u", target,
        )
        return int(rows[0][0])

    async def outbox_stats(self, target: str) -> OutboxStats:
        rows = await self._fetch(
            "SELECT count(*) FILTER (WHERE NOT dead) AS pending, "
            "min(created_at) FILTER (WHERE NOT dead) AS oldest, "
            "count(*) FILTER (WHERE dead) AS dead FROM cutover_outbox WHERE target = $1", target,
        )
        ids = await self._fetch(
            "SELECT DISTINCT row_id FROM cutover_outbox WHERE target = $1 LIMIT 10000", target
        )
        r = rows[0]
        return OutboxStats(r["pending"], r["oldest"], r["dead"],
                           frozenset(x["row_id"] for x in ids))


_DOC = postgres_schema.SEARCH_DOCUMENT
# The tsquery is built once per statement as an InitPlan (`(SELECT cutover_tsquery($1))`): a
# generic plan (asyncpg prepares statements, PostgreSQL switches to a generic plan after five
# runs) would otherwise call the SQL function again for every rechecked and ranked row.
_TSQUERY = "(SELECT cutover_tsquery($1::text[]))"
# A tsquery (`{}`) with every lexeme restricted to weight A (the question): 'json':A <-> 'dump':A.
# In tsquery's text form every lexeme is quoted (an inner quote doubled), so a quote followed by
# a space, a parenthesis or the end closes one.
_QUESTION_ONLY = r"regexp_replace({}::text, '''( |\)|$)', ''':A\1', 'g')::tsquery"
# The query's, built once per statement like _TSQUERY.
_QUESTION_TSQUERY = f"(SELECT {_QUESTION_ONLY.format('cutover_tsquery($1::text[])')})"
# Full-text hits rank before fuzzy ones (score 2..3 against 1..2). The fuzzy branch is the typo
# fallback: it runs (a one-time filter) only when the full-text branch found nothing. A common
# word then costs a GIN bitmap scan and a cheap sort key on its hits, never word_similarity over
# every hit as an OR of both predicates did (827 ms -> 22 ms for a word in 1 of 6 of 100k
# questions); a rare word found by full text skips the trigram recheck of thousands of candidate
# rows (1 s -> 5 ms on 100k docstring questions).
# Search parity: the full-text candidates come in the order the SQLite store computes too (rows
# matching every term in the question first, then the shorter question, or answer, then the id)
# and `search` ranks them with searchtext.rank_fts, the same Python on both stores: ts_rank's
# order disagreed with bm25's on most common words (bench/parity.py). One sort key (question
# matches sort by their question's length, the others after all of them by their answer's), so
# the weighted match is evaluated once per hit: as two keys it ran twice (`the` on 100k
# questions: 129 ms). Lengths in UTF-8 bytes (the SQLite side's too): octet_length is a header
# read, length() counts characters (`the`: 76 -> 67 ms). LIMIT names $4 so that FTS_ONLY_SQL
# still uses every parameter.
def _in_users_books(user_param: str) -> str:
    """The condition "question `q` is in a study book of the user `user_param` names", tested
    before the substring search's costlier filter (a join was tested after it)."""
    return ("q.study_book_id = ANY (ARRAY(SELECT b.id FROM study_books b "
            f"WHERE b.user_id = {user_param}))")


def _users_questions(scan: bool) -> str:
    """FROM and WHERE for the user $3's questions as `q`, each caller ANDing its conditions.

    `scan` (a user with at most SCAN_USER_QUESTIONS questions): read the user's rows through
    the study books' index and test each (OFFSET 0 keeps the planner from pushing the
    full-text match into an index scan). Otherwise the planner ANDs the GIN index's bitmap
    with the study books', so the table is read only for the user's matches; but the GIN
    index yields every user's matches, and for common words that is most of the table: on
    3.3M questions of 1,000 users (bench/search_plans.py), `what is the file of` took 31 ms in
    the full-text branch and 489 ms in the typo branch for one user's 3,330 questions, which a
    scan of them reads in 3.3 ms. (Joined to the study books, the branches read every user's
    matches, or scanned the GIN index once per study book: bench/tenants.py, 271 ms.)"""
    if scan:
        return (f"FROM (SELECT q.* FROM questions q WHERE {_in_users_books('$3')} "
                "OFFSET 0) q WHERE true")
    return f"FROM questions q WHERE {_in_users_books('$3')}"


# The vocabulary of a user's books as `v` (the caller names the user: `b.user_id = $3`), book by
# book: the trigram index leads with `study_book_id` (btree_gin), so each lookup reads the user's
# words only. Given the books as an array, the generic plan ANDed the trigram matches of every
# user's vocabulary with the books' key (6.5 ms a word on 1,000 books; 0.1 ms book by book).
_USERS_WORDS = "study_books b JOIN cutover_search_words v ON v.study_book_id = b.id"


def _fts_cte(scan: bool) -> str:
    return (
        "fts AS (SELECT q.id, q.question, q.answer, true AS is_fts, 2::float8 AS score "
        f"{_users_questions(scan)} AND q.search_vector @@ {_TSQUERY} "
        f"ORDER BY CASE WHEN q.search_vector @@ {_QUESTION_TSQUERY} "
        "THEN octet_length(q.question) ELSE 4294967296 + octet_length(q.answer) END, q.id "
        f"LIMIT GREATEST($4::int, {FTS_CANDIDATES}))"
    )


# Fuzzy scores are 1 + (_FIX_LIMIT - the corrections' rank + word similarity) / (_FIX_LIMIT + 1):
# in [1, 2), better corrections first, word similarity orders rows with equal corrections.
_FIX_LIMIT = 1000


def _fuzzy_ctes(scan: bool) -> str:
    """The typo fallback, run (a one-time filter) only when the full-text branch found nothing.

    Each query word is looked up in the vocabulary of the user's own study books
    (`cutover_search_words`, see postgres_schema; never another user's words): of the words
    word-similar to it (its trigram index, FUZZY_THRESHOLD), the
    FUZZY_FIXES fewest edits away are its corrections, the word itself first when it is there,
    none more edits away than half the word's length (at least 2: a transposition).
    Edits, not similarity, rank them: a transposition in a short word shares few trigrams
    (`ceter`: word similarity 0.50 to `deleter`, 0.44 to `center`, one edit away).
    The user's questions with a correction of every word (full text, the GIN index) are
    ordered by how good their corrections are, one in the question before one in the answer
    only; the first FTS_CANDIDATES of them are scored: that order first, then the whole query's
    word similarity to the question and to the whole document, averaged. So word similarity
    runs on at most FTS_CANDIDATES documents. Matching every document against the typo itself
    (a trigram index over the documents, as before) rechecked every document that resembled
    it: `relpacement` on 100k questions took 1.2 s (bench/search.py, README).
    """
    fix = "phraseto_tsquery('cutover_search', f.word)"
    return (
        "words AS MATERIALIZED (SELECT DISTINCT w FROM unnest($1::text[]) AS t, "
        "cutover_document_words(t) AS w WHERE NOT EXISTS (SELECT 1 FROM fts)), "
        f"fixes AS MATERIALIZED (SELECT words.w, f.rank, {fix} AS tq, "
        f"{_QUESTION_ONLY.format(fix)} AS tq_question "
        "FROM words CROSS JOIN LATERAL (SELECT v.word, row_number() OVER (ORDER BY "
        "levenshtein(words.w, v.word), word_similarity(words.w, v.word) DESC, "
        "similarity(words.w, v.word) DESC, v.word) "
        f"AS rank FROM (SELECT DISTINCT v.word FROM {_USERS_WORDS} "
        "WHERE b.user_id = $3 AND words.w <% v.word "
        "AND levenshtein(words.w, v.word) <= greatest(2, length(words.w) / 2)) v "
        f"ORDER BY rank LIMIT {FUZZY_FIXES}) f), "
        "fixed AS MATERIALIZED (SELECT cutover_tsquery_and(tq) AS tq, count(*) AS words "
        "FROM (SELECT w, cutover_tsquery_or(tq) AS tq FROM fixes GROUP BY w) s), "
        "fuzzy_candidates AS MATERIALIZED (SELECT q.id, q.question, q.answer, (SELECT sum(best) "
        "FROM (SELECT min(CASE WHEN q.search_vector @@ f.tq_question THEN f.rank "
        f"ELSE f.rank + {FUZZY_FIXES} END) AS best FROM fixes f "
        "WHERE q.search_vector @@ f.tq GROUP BY f.w) s) AS fix "
        f"{_users_questions(scan)} AND q.search_vector @@ (SELECT tq FROM fixed) "
        "AND (SELECT words FROM fixed) = (SELECT count(*) FROM words) "
        f"ORDER BY fix, octet_length(q.question), q.id LIMIT {FTS_CANDIDATES}), "
        "fuzzy AS (SELECT id, question, answer, false AS is_fts, "
        f"1::float8 + ({_FIX_LIMIT} - least(fix, {_FIX_LIMIT - 1}) "
        "+ (word_similarity($2::text, question) "
        f"+ word_similarity($2::text, {_DOC})) / 2) / {_FIX_LIMIT + 1} AS score "
        "FROM fuzzy_candidates ORDER BY score DESC, id LIMIT $4)"
    )


# The hybrid search ($1 the terms, $2 the query's text, $3 the user, $4 the limit): its two
# forms (full text with the typo fallback, full text only) for a user found through the indexes,
# then for one whose questions are scanned (`_users_questions`).
SEARCH_SQL, FTS_ONLY_SQL, SCAN_SEARCH_SQL, SCAN_FTS_ONLY_SQL = (
    sql
    for scan in (False, True)
    for sql in (f"WITH {_fts_cte(scan)}, {_fuzzy_ctes(scan)} "
                "SELECT * FROM fts UNION ALL SELECT * FROM fuzzy",
                f"WITH {_fts_cte(scan)} SELECT * FROM fts WHERE $2::text IS NOT NULL")
)
# A user's questions, counted up to one past SCAN_USER_QUESTIONS ($2).
USER_QUESTIONS_SQL = ("SELECT count(*) FROM (SELECT 1 FROM questions q "
                      f"WHERE {_in_users_books('$1')} LIMIT $2) s")


def search_statement(
    parsed: ParsedQuery, user_id: uuid.UUID, limit: int, *, scan: bool = False
) -> tuple[str, tuple[Any, ...]]:
    """The SQL and parameters `search` runs for a query with terms (tests EXPLAIN exactly this);
    `scan` for a user with at most SCAN_USER_QUESTIONS questions."""
    args: tuple[Any, ...] = (list(parsed.terms), parsed.text, user_id, limit)
    # the fuzzy branch looks each distinct word up: `a.b.c.d...` would be hundreds of lookups
    words = {w for term in parsed.terms for w in term.lower().split()}
    fuzzy = len(parsed.text) >= FUZZY_MIN_CHARS and len(words) <= MAX_FUZZY_WORDS
    if scan:
        return (SCAN_SEARCH_SQL if fuzzy else SCAN_FTS_ONLY_SQL), args
    return (SEARCH_SQL if fuzzy else FTS_ONLY_SQL), args


def substring_statement(
    parsed: ParsedQuery, user_id: uuid.UUID, limit: int
) -> tuple[str, tuple[Any, ...]]:
    """The SQL and parameters of the substring search (the CJK path: strpos on the document).

    One user's questions, reached through their study books, then the substring test: written
    as a join, the planner walked every user's questions in id order (strpos looks cheap to
    it), which costs the whole table whenever few rows match (a CJK term on the parity corpus:
    10.6 -> 1.2 ms; tests EXPLAIN exactly this)."""
    conds = " AND ".join(
        f"strpos(lower({postgres_schema.SEARCH_DOCUMENT}), ${i + 2}) > 0"
        for i in range(len(parsed.substrings))
    )
    sql = (
        "WITH mine AS MATERIALIZED (SELECT q.id, q.question, q.answer FROM questions q "
        f"WHERE {_in_users_books('$1')} AND {conds}) "
        "SELECT id, question, answer, 0.5::float8 AS score, false AS is_fts FROM mine "
        f"ORDER BY id LIMIT ${len(parsed.substrings) + 2}"
    )
    return sql, (user_id, *parsed.substrings, limit)


async def _init_connection(conn: asyncpg.Connection) -> None:
    # Generic plans only. asyncpg prepares every statement; PostgreSQL plans the first five
    # runs with their values and then keeps whichever kind its estimates favour, per statement
    # and so per whichever queries came first. A custom plan of the search statement costs 3-10
    # ms to make on 100k questions (pg_trgm's selectivity estimate computes word similarity
    # against the column's statistics), far more than running it (`harnesses` on
    # bench/search.py: 5.4 -> 0.5 ms). tests/test_search_plan.py checks the generic plans.
    # And the bound on a transaction its process left open (IDLE_IN_TRANSACTION).
    await conn.execute(f"SET pg_trgm.word_similarity_threshold = {FUZZY_THRESHOLD}; "
                       "SET plan_cache_mode = force_generic_plan; "
                       f"SET idle_in_transaction_session_timeout = '{IDLE_IN_TRANSACTION}'")


def _reason(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"[:200] if str(exc) else type(exc).__name__


_FLUSH_WAL = (
    "BEGIN; SET LOCAL synchronous_commit TO on; "
    "INSERT INTO cutover_wal_flushes VALUES (1, 1) ON CONFLICT (id) "
    "DO UPDATE SET flushes = cutover_wal_flushes.flushes + 1; COMMIT"
)


class _MirrorSession:
    """The connection inline mirror writes use: commits skip the WAL flush (the primary's
    outbox entry holds each write until `flush_wal` has run after it). A batch is applied in
    one round trip when it can be, each statement its own transaction, holding the control
    record itself; else as the pool's writes are (`_apply_batch`). The connection is the
    session's own, not the pool's:
    its setting never reaches a write that must be durable on its own. Batches come one at a
    time (the mirror pipeline has one worker).
    """

    def __init__(self, dsn: str) -> None:
        self._dsn = dsn
        self._conn: asyncpg.Connection | None = None

    async def _connection(self) -> asyncpg.Connection:
        if self._conn is None or self._conn.is_closed():
            self._conn = await asyncpg.connect(
                self._dsn, timeout=10, command_timeout=30, connection_class=_Connection,
                server_settings={"synchronous_commit": "off",
                                 "default_transaction_isolation": "serializable",
                                 "idle_in_transaction_session_timeout": IDLE_IN_TRANSACTION},
            )
        return self._conn

    async def apply(self, mutations: Sequence[Mutation]) -> list[ApplyResult]:
        try:
            conn = await self._connection()
            try:  # each run its own transaction, its statements holding the record
                return await _serializably(lambda: _apply_all(conn, mutations, held=True))
            except (NOT_AS_MIRROR, *BATCH_REJECTED):
                # PostgreSQL primary or without a record, or a row refused: runs applied
                # already are applied again, harmlessly (the versions decide)
                return await _serializably(lambda: _apply_batch(conn, mutations))
        except BaseException:
            self.terminate()  # its state is unknown: a fresh connection next time
            raise

    def terminate(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.terminate()

    async def close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            try:
                await asyncio.wait_for(conn.close(), 5)
            except Exception:
                conn.terminate()


def _fk_error(entity: Entity, values: dict[str, Any], exc: asyncpg.PostgresError) -> Exception:
    constraint = getattr(exc, "constraint_name", "") or ""
    for col in entity.columns:
        if col.references and constraint == f"{entity.table}_{col.name}_fkey":
            return NotFoundError(BY_TABLE[col.references].name, values.get(col.name), col.name)
    return NotFoundError(entity.name, None)


def _result(r: asyncpg.Record, parsed: ParsedQuery, kind: Any, marks: bool) -> SearchResult:
    return _hit(r["id"], r["question"], r["answer"], parsed, float(r["score"]), kind, marks)


def _hit(
    qid: uuid.UUID, question: str, answer: str, parsed: ParsedQuery, score: float, kind: Any,
    marks: bool,
) -> SearchResult:
    return SearchResult(
        question_id=qid, question=question, answer=answer,
        highlight=highlight(document(question, answer), parsed, fuzzy=kind == "fuzzy")
        if marks else "",
        score=score, match_kind=kind,
    )


# The fence of a primary write: the control record, held (FOR KEY SHARE) until the write
# commits, so a flip's `fence_control` (FOR UPDATE) waits for it; the write applies only while
# the record is at the epoch it carries (None: a store used on its own, no fence).
_FENCE = "f AS (SELECT epoch FROM cutover_control WHERE id = 1 FOR KEY SHARE)"
_FENCED_RESULT = ("SELECT (SELECT epoch FROM f) AS fence_epoch, r.*, "
                  "(SELECT max(seq) FROM o) AS outbox_seq FROM (VALUES (1)) AS one LEFT JOIN r "
                  "ON true")


def _fence_holds(epoch_param: str) -> str:
    return (f"({epoch_param}::bigint IS NULL "
            f"OR EXISTS (SELECT 1 FROM f WHERE epoch = {epoch_param}))")


def _unfenced(row: asyncpg.Record, epoch: int | None, entity: Entity, row_id: Any
              ) -> asyncpg.Record:
    """The written row of a `_FENCED_RESULT`; `Fenced` or `NotFoundError` when none."""
    if epoch is not None and row["fence_epoch"] != epoch:
        raise Fenced("postgres", epoch, row["fence_epoch"] or 0)
    if row["row_version"] is None:
        raise NotFoundError(entity.name, row_id)
    return row


def _delete_cte(entity: Entity, where: str) -> str:
    """Delete as the primary ($2 the clock): the version and the tombstone (CTEs r and t)."""
    return (
        f"r AS (DELETE FROM {entity.table} WHERE {where} "
        "RETURNING id, GREATEST(row_version + 1, $2) AS row_version), "
        "t AS (INSERT INTO cutover_tombstones (entity, row_id, version) "
        f"SELECT '{entity.name}', r.id, r.row_version FROM r ON CONFLICT (entity, row_id) "
        "DO UPDATE SET version = GREATEST(cutover_tombstones.version, EXCLUDED.version))"
    )


def _delete_primary_sql(entity: Entity, key: str = "id = $1") -> str:
    """Delete as the primary ($1 the id, or ids; $2 the clock; $3 the outbox targets): the
    version, the tombstone and the outbox entry in one statement."""
    return (
        f"WITH {_delete_cte(entity, key)}, {_outbox_cte(entity, 'delete', '$3')} "
        "SELECT r.id, r.row_version, (SELECT max(seq) FROM o) AS outbox_seq FROM r"
    )


async def _cascade(
    conn: asyncpg.Connection, entity: Entity, ids: list[uuid.UUID], clock: int,
    targets: list[str],
) -> list[Mutation]:
    """Carry out the ON DELETE rules for rows of `entity` about to be deleted, as writes of our
    own (see the SQLite store's `_cascade`); children are locked before their own children are
    looked at. Returns those writes, children's children first."""
    changed: list[Mutation] = []
    for child, column in REFERENCED_BY[entity.table]:
        if column.on_delete == "CASCADE":
            doomed = [r["id"] for r in await conn.fetch(
                f"SELECT id FROM {child.table} WHERE {column.name} = ANY($1::uuid[]) "
                "FOR UPDATE", ids)]
            if doomed:
                changed += await _cascade(conn, child, doomed, clock, targets)
                changed += [Mutation(child.name, "delete", r["id"], r["row_version"])
                            for r in await conn.fetch(
                                _delete_primary_sql(child, "id = ANY($1::uuid[])"),
                                doomed, clock, targets)]
        else:
            changed += [Mutation(child.name, "update", r["id"], r["row_version"],
                                 from_postgres(child, r))
                        for r in await conn.fetch(
                            f"WITH r AS (UPDATE {child.table} SET {column.name} = NULL, "
                            f"row_version = GREATEST({child.table}.row_version + 1, $2) "
                            f"WHERE {column.name} = ANY($1::uuid[]) RETURNING *), "
                            f"{_outbox_cte(child, 'update', '$3')} SELECT * FROM r",
                            ids, clock, targets)]
    return changed


def _written(entity: Entity, r: asyncpg.Record) -> Written:
    return Written(from_postgres(entity, r), r["outbox_seq"], r["row_version"])


def _entry(r: asyncpg.Record) -> OutboxEntry:
    payload = r["payload"]
    row = None if payload is None else json.loads(payload)["row"]
    mutation = Mutation.from_json({"entity": r["entity"], "op": r["op"], "row_id": str(r["row_id"]),
                                   "version": r["version"], "row": row})
    return OutboxEntry(seq=r["seq"], target=r["target"], mutation=mutation,
                       created_at=r["created_at"], attempts=r["attempts"],
                       last_error=r["last_error"], dead=r["dead"])


def _upsert_sql(entity: Entity, held: bool = False) -> str:
    cols = entity.column_names
    n = len(cols)
    updates = ", ".join(f"{c} = EXCLUDED.{c}" for c in cols if c != "id")
    return (
        f"{f'WITH {_HELD} ' if held else ''}"
        f"INSERT INTO {entity.table} ({', '.join(cols)}, row_version) "
        f"SELECT {', '.join(f'${i + 1}' for i in range(n))}, ${n + 1} WHERE NOT EXISTS ("
        f"SELECT 1 FROM cutover_tombstones WHERE entity = '{entity.name}' AND row_id = $1 "
        f"AND version >= ${n + 1}){f' AND {_HELD_TEST}' if held else ''} "
        f"ON CONFLICT (id) DO UPDATE SET {updates}, row_version = EXCLUDED.row_version "
        f"WHERE {entity.table}.row_version < EXCLUDED.row_version"
    )


# The inline mirror session's statements each hold the control record themselves (see
# `_as_mirror` for why): one round trip a batch, as before the hold, where a transaction around
# the batch took three more (1.74x the slower store's write at one writer against 1.12x,
# bench/dual_write.py). A statement cannot raise by itself: dividing by the count of records
# naming SQLite (none when PostgreSQL is primary, or has no record) fails with
# division_by_zero, and the batch goes the long way, `_as_mirror`.
_HELD = "held AS (SELECT read_primary FROM cutover_control WHERE id = 1 FOR SHARE)"
_HELD_TEST = "1 / (SELECT count(*)::int FROM held WHERE read_primary = 'sqlite') = 1"
NOT_AS_MIRROR = asyncpg.DivisionByZeroError

_UPSERT = {e.name: _upsert_sql(e) for e in ENTITIES}
_UPSERT_HELD = {e.name: _upsert_sql(e, held=True) for e in ENTITIES}


async def _apply_all(conn: asyncpg.Connection, mutations: Sequence[Mutation],
                     *, held: bool = False) -> list[ApplyResult]:
    """Apply a batch in a few pipelined round trips: one `executemany` per run of mutations of
    the same entity and op (runs keep the batch's order, so parents precede their children).
    Raises on the first mutation that cannot apply. `held`: each statement holds the control
    record itself (`_HELD`), for runs outside `_as_mirror`, each its own transaction."""
    args: list[tuple[Any, ...]]
    for (entity, op), run in groupby(mutations, key=lambda m: (m.entity, m.op)):
        if op == "delete":
            sql = (_DELETE_HELD if held else _DELETE)[entity]
            args = [(m.row_id, m.version) for m in run]
        else:
            cols = BY_NAME[entity].column_names
            sql = (_UPSERT_HELD if held else _UPSERT)[entity]
            args = [(*(m.row.get(c) for c in cols), m.version) for m in run if m.row is not None]
        if len(args) == 1:
            await conn.execute(sql, *args[0])
        else:
            await conn.executemany(sql, args)
    return [ApplyResult(ApplyOutcome.APPLIED)] * len(mutations)


MIRROR_RETRIES = 5  # serialization failures in a row before a batch is left to the outbox


async def _serializably(
    attempt: Callable[[], Awaitable[list[ApplyResult]]]
) -> list[ApplyResult]:
    """Mirror writes run SERIALIZABLE. Under READ COMMITTED an upsert's tombstone check reads
    a snapshot from before a concurrent delete of the same row commits, and the row comes back
    (two processes mirroring, or the replay loop beside the inline writes: seen in
    tests/test_histories.py); SSI makes one of the two fail instead, and it is tried again."""
    for n in range(MIRROR_RETRIES):
        try:
            return await attempt()
        except (asyncpg.SerializationError, asyncpg.DeadlockDetectedError,
                asyncpg.InternalServerError) as exc:
            if n == MIRROR_RETRIES - 1 or (isinstance(exc, asyncpg.InternalServerError)
                                           and not _lost_multixact_race(exc)):
                raise
            await asyncio.sleep(0.002 * (n + 1))
    raise AssertionError("unreachable")


# PostgreSQL's race (seen on 18.6, bench/soak.py): a row no-key updated by a transaction that
# then aborts, and key-share locked meanwhile by another (a foreign key check: typing_logs of a
# question, questions of a study book), holds a multixact {the updater, the locker}. An update
# arriving after the abort reached pg_xact but before the aborting backend left the ProcArray
# skips the updater as aborted (heapam.c, DoesMultiXactIdConflict: TransactionIdDidAbort), so
# does not wait, then keeps it as still running when it adds itself to the multixact
# (MultiXactIdExpand: TransactionIdIsInProgress): two updaters, and the statement fails with
# XX000 "new multixact has more than one updating member", having changed nothing. The window
# is a few instructions wide (wider while ProcArrayLock is contended); our SQL could only
# narrow it (any foreign key check is such a locker, any update that fails, on a missing
# parent, a deadlock, such an updater), and a second attempt finds the updater gone: the
# statement or transaction is run again. (Reproduced with the aborting backend held by gdb
# in ProcArrayEndTransaction: bench/multixact_race.py.)
MULTIXACT_RACE = "new multixact has more than one updating member"
MULTIXACT_RETRIES = 3
_T = TypeVar("_T")


def _lost_multixact_race(exc: BaseException) -> bool:
    return isinstance(exc, asyncpg.InternalServerError) and str(exc).startswith(MULTIXACT_RACE)


async def _past_multixact_race(attempt: Callable[[], Awaitable[_T]]) -> _T:
    """`attempt` (one statement or one whole transaction), run again when it lost the race."""
    for n in range(MULTIXACT_RETRIES):
        try:
            return await attempt()
        except asyncpg.InternalServerError as exc:
            if n == MULTIXACT_RETRIES - 1 or not _lost_multixact_race(exc):
                raise
            await asyncio.sleep(0.001 * (n + 1))
    raise AssertionError("unreachable")


# SSI orders mirror transactions among themselves, but not against the primary's writes, which
# run READ COMMITTED: a mirror snapshot older than a primary's delete brought the row back
# (tests/test_mirror.py). So the two never overlap, by the control record's row lock.
_AS_MIRROR = "SELECT read_primary = 'postgres' FROM cutover_control WHERE id = 1 FOR SHARE"
_ALONE = "SELECT read_primary = 'postgres' FROM cutover_control WHERE id = 1 FOR UPDATE"
# no record yet (PostgreSQL was down when the fleet started): the INSERT that makes it waits
_NO_RECORD = "LOCK TABLE cutover_control IN SHARE MODE"


async def _as_mirror(
    conn: asyncpg.Connection, work: Callable[[asyncpg.Connection], Awaitable[list[ApplyResult]]]
) -> list[ApplyResult]:
    """Run mirror writes in one transaction that no primary write on PostgreSQL overlaps.

    PostgreSQL a mirror: SERIALIZABLE, the control record held FOR SHARE (mirror transactions
    share it), so the flip naming PostgreSQL (`advance_control`) waits for this transaction, and
    primary writes, which need that record, begin only after it. PostgreSQL the primary (writes
    owed from before a forced flip, or an inline write the flip overtook): READ COMMITTED, the
    record held FOR UPDATE, so these writes run between primary writes, never beside them, and
    each statement sees every delete committed before it. Each way, the record is read again
    once held: a flip may have come between the two.
    """
    no_record = False
    while True:
        async with conn.transaction(isolation="serializable"):
            if no_record:
                await conn.execute(_NO_RECORD)  # before the snapshot: it sees whatever came
            primary = await conn.fetchval(_AS_MIRROR)
            if primary is False or (primary is None and no_record):
                return await work(conn)
        if primary is None:
            no_record = True
            continue
        async with conn.transaction(isolation="read_committed"):
            if await conn.fetchval(_ALONE):
                return await work(conn)


async def _apply_batch(conn: asyncpg.Connection, mutations: Sequence[Mutation]
                       ) -> list[ApplyResult]:
    """The whole batch in a few round trips; one by one, each in a savepoint, only if that
    fails."""
    try:
        return await _as_mirror(conn, lambda c: _apply_all(c, mutations))
    except BATCH_REJECTED:
        return await _as_mirror(conn, lambda c: _apply_each(c, mutations))


async def _apply_each(conn: asyncpg.Connection, mutations: Sequence[Mutation]
                      ) -> list[ApplyResult]:
    """One statement a mutation, each in its own savepoint: one that fails leaves the others
    applied."""
    return [await _apply_one(conn, m) for m in mutations]


async def _apply_one(conn: asyncpg.Connection, m: Mutation) -> ApplyResult:
    """Apply one mutation in one statement, within its own savepoint."""
    entity = BY_NAME[m.entity]
    if m.op == "delete":
        sql = _DELETE[entity.name]
        args: tuple[Any, ...] = (m.row_id, m.version)
    else:
        assert m.row is not None
        sql = _UPSERT[entity.name]
        args = (*(m.row.get(c) for c in entity.column_names), m.version)
    try:
        run = conn.fetchval if m.op == "delete" else conn.execute  # a delete reports its count
        async with conn.transaction():
            status = await run(sql, *args)
        applied = not str(status).endswith(" 0")
        return ApplyResult(ApplyOutcome.APPLIED if applied else ApplyOutcome.SUPERSEDED)
    except asyncpg.ForeignKeyViolationError as exc:
        return ApplyResult(ApplyOutcome.FAILED, str(exc), missing_parent=True)
    except (asyncpg.IntegrityConstraintViolationError, asyncpg.DataError,
            asyncpg.ProgramLimitExceededError) as exc:
        return ApplyResult(ApplyOutcome.FAILED, f"{type(exc).__name__}: {exc}", permanent=True)


def _delete_sql(entity: Entity, held: bool = False) -> str:
    """Delete if older than the version, and leave a tombstone: one atomic statement."""
    return (
        f"WITH {f'{_HELD}, ' if held else ''}"
        f"d AS (DELETE FROM {entity.table} WHERE id = $1 AND row_version < $2"
        f"{f' AND {_HELD_TEST}' if held else ''} RETURNING id), "
        "t AS (INSERT INTO cutover_tombstones (entity, row_id, version) "
        f"SELECT '{entity.name}', $1, $2{f' WHERE {_HELD_TEST}' if held else ''} "
        "ON CONFLICT (entity, row_id) DO UPDATE SET version = "
        "GREATEST(cutover_tombstones.version, EXCLUDED.version)) "
        "SELECT 'DELETE ' || count(*) FROM d"
    )


_DELETE = {e.name: _delete_sql(e) for e in ENTITIES}
_DELETE_HELD = {e.name: _delete_sql(e, held=True) for e in ENTITIES}


def _delete_parent_sql(entity: Entity) -> str:
    """`_delete_sql`, unless a row still references the row (then `waits`, and no tombstone)."""
    referenced = " OR ".join(f"EXISTS (SELECT 1 FROM {child.table} WHERE {column.name} = $1)"
                             for child, column in REFERENCED_BY[entity.table]) or "false"
    return (
        f"WITH h AS (SELECT row_version < $2 AND ({referenced}) AS waits "
        f"FROM {entity.table} WHERE id = $1), "
        f"d AS (DELETE FROM {entity.table} WHERE id = $1 AND row_version < $2 "
        "AND NOT (SELECT waits FROM h) RETURNING id), "
        "t AS (INSERT INTO cutover_tombstones (entity, row_id, version) "
        f"SELECT '{entity.name}', $1, $2 WHERE NOT COALESCE((SELECT waits FROM h), false) "
        "ON CONFLICT (entity, row_id) DO UPDATE SET "
        "version = GREATEST(cutover_tombstones.version, EXCLUDED.version)) "
        "SELECT (SELECT count(*) FROM d) AS n, COALESCE((SELECT waits FROM h), false) AS waits"
    )


_DELETE_PARENT = {e.name: _delete_parent_sql(e) for e in ENTITIES}
