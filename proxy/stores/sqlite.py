"""The SQLite store: stdlib sqlite3 on threads, WAL mode, FTS5 search.

Why not aiosqlite: it hops to its thread once per statement, so a write of a row plus its outbox
entry costs four hops. Here a whole transaction runs in one hop on the single writer thread (SQLite
has one writer anyway), and reads run on a small pool of reader threads, each with its own
connection, which WAL lets proceed beside the writer. The writes queued together for the writer
share one transaction (group commit, `_commit_group`), each still succeeding or failing alone.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
import threading
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Literal, TypeVar

import orjson

from proxy.codec import (
    encode_row,
    encode_values,
    from_sqlite,
    iso,
    now_utc,
    parse_iso,
    sqlite_params,
    to_sqlite,
)
from proxy.control import COLUMNS, Control
from proxy.errors import CutoverError, Fenced, NotFoundError, StoreUnavailable, ValidationError
from proxy.models import BY_NAME, BY_TABLE, REFERENCED_BY, Entity, SearchResult
from proxy.stores import migrations
from proxy.stores.base import (
    WAITS,
    ApplyOutcome,
    ApplyResult,
    Mutation,
    Op,
    OutboxEntry,
    OutboxStats,
    Written,
)
from proxy.stores.methods import StoreMethods
from proxy.stores.searchtext import (
    FTS_CANDIDATES,
    ParsedQuery,
    document,
    fts5_match,
    fts5_question_match,
    highlight,
    parse_query,
    rank_fts,
)
from proxy.stores.sqlite_schema import use_wal
from proxy.stores.threads import LaneClosed, Outcome, ThreadLane

T = TypeVar("T")
SUBSTRING_SCORE = 0.5


class SQLiteStore(StoreMethods):
    """One SQLite database file (see the module docstring for the threading model)."""

    backend: Literal["sqlite", "postgres"] = "sqlite"

    def __init__(self, path: Path | str, *, busy_timeout_ms: int = 2000, readers: int = 4) -> None:
        self.path = Path(path)
        self._busy_timeout_ms = busy_timeout_ms
        self._writer = ThreadLane(1, "sqlite-writer", group=self._commit_group)
        self._readers = ThreadLane(readers, "sqlite-reader")
        self._local = threading.local()
        self._connections: list[sqlite3.Connection] = []
        self._lock = threading.Lock()
        self._closed = False

    # -- connections and threads --
    def _connect(self) -> sqlite3.Connection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            conn = sqlite3.connect(
                self.path, isolation_level=None, check_same_thread=False,
                timeout=self._busy_timeout_ms / 1000,
            )
            conn.row_factory = sqlite3.Row
            use_wal(conn, self._busy_timeout_ms / 1000)
            # NORMAL in WAL mode survives a process crash (SIGKILL); only an OS crash or power
            # loss can drop the last commits. That is the trade the issue measured (0.10 ms).
            conn.execute("PRAGMA synchronous=NORMAL")
            conn.execute("PRAGMA foreign_keys=ON")
            conn.execute(f"PRAGMA busy_timeout={int(self._busy_timeout_ms)}")
            self._local.conn = conn
            with self._lock:
                self._connections.append(conn)
        return conn

    async def _run(self, fn: Callable[[sqlite3.Connection], T], *, write: bool,
                   grouped: bool = False) -> T:
        """Run `fn` on the writer thread or a reader's. A `grouped` write is a transaction's
        body (no BEGIN or COMMIT of its own): it commits with the others queued beside it."""
        if self._closed:
            raise StoreUnavailable("sqlite", "store is closed")
        lane = self._writer if write else self._readers
        try:
            if grouped:
                return await lane.run_grouped(lambda: fn(self._connect()))
            return await lane.run(lambda: fn(self._connect()))
        except LaneClosed as exc:  # closed meanwhile
            raise StoreUnavailable("sqlite", "store is closed") from exc
        except sqlite3.OperationalError as exc:
            if _is_unavailable(exc):
                raise StoreUnavailable("sqlite", str(exc)) from exc
            raise

    def _commit_group(self, bodies: list[Callable[[], Any]]) -> list[Outcome]:
        """Group commit, on the writer thread: the writes waiting together share one
        transaction, so each costs its own statements and a share of one BEGIN and COMMIT.

        A body that fails before writing anything (a constraint its first statement breaks, a
        row not found) fails alone: SQLite undoes only the failed statement. Anything else (a
        failure after a write, an I/O error that may have ended the transaction, a failed
        COMMIT) rolls the group back and runs each body again in its own transaction.
        """
        conn = self._connect()
        if len(bodies) > 1:
            try:
                conn.execute("BEGIN IMMEDIATE")
            except sqlite3.Error as exc:  # busy or unavailable: none of them can run now
                return [(False, exc)] * len(bodies)
            try:
                outcomes: list[Outcome] = []
                for body in bodies:
                    before = conn.total_changes
                    try:
                        outcomes.append((True, body()))
                    except (sqlite3.IntegrityError, CutoverError) as exc:
                        if conn.total_changes != before or not conn.in_transaction:
                            raise
                        outcomes.append((False, exc))
                conn.execute("COMMIT")
                return outcomes
            except BaseException as exc:
                if conn.in_transaction:  # never left open: the next group could not begin
                    conn.execute("ROLLBACK")
                if not isinstance(exc, Exception):
                    raise
        return [_alone(conn, body) for body in bodies]

    async def init_schema(self) -> None:
        await asyncio.to_thread(migrations.upgrade_sqlite, self.path)

    async def schema_revision(self) -> str | None:
        return await self._run(migrations.sqlite_revision, write=False)

    async def ping(self) -> None:
        await self._run(lambda c: c.execute("SELECT 1").fetchone(), write=False)

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(None, self._shutdown)

    def _shutdown(self) -> None:
        self._writer.shutdown()
        self._readers.shutdown()
        with self._lock:
            for conn in self._connections:
                conn.close()
            self._connections.clear()

    # -- writes as the primary --
    async def insert_row(
        self, entity: Entity, values: dict[str, Any], *, clock: int,
        outbox_targets: Sequence[str] = (), epoch: int | None = None,
    ) -> Written:
        cols = list(values)
        # given every column, the stored row is the values themselves: skip reading it back
        # (decoding timestamps and decimals costs more than the insert)
        complete = set(entity.column_names) <= set(cols)
        sql = (
            f"INSERT INTO {entity.table} ({', '.join(cols)}, row_version) "
            f"VALUES ({', '.join('?' * len(cols))}, ?)" + ("" if complete else " RETURNING *")
        )
        encoded = encode_values(entity, values)
        params = list(sqlite_params(entity, encoded).values())
        outbox = (_outbox_rows(outbox_targets, entity, "insert", values["id"], encoded)
                  if complete else [])

        def tx(conn: sqlite3.Connection) -> Written:
            _check_epoch(conn, epoch)
            # a re-created row outranks its tombstone, whatever the clock says
            version = max(clock, _tombstone_version(conn, entity, values["id"]) + 1)
            try:
                cur = conn.execute(sql, [*params, version])
                row = ({c: values[c] for c in entity.column_names} if complete
                       else from_sqlite(entity, cur.fetchone()))
            except sqlite3.IntegrityError as exc:
                raise _integrity_error(conn, entity, values, exc) from exc
            seq = _outbox_add(conn, outbox if complete else _outbox_rows(
                outbox_targets, entity, "insert", row["id"], encode_row(entity.name, row)),
                version)
            return Written(row, seq, version)

        return await self._run(tx, write=True, grouped=True)

    async def update_row(
        self, entity: Entity, row_id: uuid.UUID, changes: dict[str, Any], *, clock: int,
        outbox_targets: Sequence[str] = (), epoch: int | None = None,
    ) -> Written:
        sets = ", ".join(f"{c} = ?" for c in changes)
        sql = (f"UPDATE {entity.table} SET {sets}, row_version = max(row_version + 1, ?) "
               "WHERE id = ? RETURNING *")
        params = [*to_sqlite(entity, changes).values(), clock, str(row_id)]

        def tx(conn: sqlite3.Connection) -> Written:
            _check_epoch(conn, epoch)
            try:
                found = conn.execute(sql, params).fetchone()
            except sqlite3.IntegrityError as exc:
                raise _integrity_error(conn, entity, changes, exc) from exc
            if found is None:
                raise NotFoundError(entity.name, row_id)
            row, version = from_sqlite(entity, found), found["row_version"]
            seq = _outbox_add(conn, _outbox_rows(outbox_targets, entity, "update", row_id,
                                                 encode_row(entity.name, row)), version)
            return Written(row, seq, version)

        return await self._run(tx, write=True, grouped=True)

    async def delete_row(
        self, entity: Entity, row_id: uuid.UUID, *, clock: int,
        outbox_targets: Sequence[str] = (), epoch: int | None = None,
    ) -> Written:
        outbox = _outbox_rows(outbox_targets, entity, "delete", row_id, None)

        def tx(conn: sqlite3.Connection) -> Written:
            _check_epoch(conn, epoch)
            exists = conn.execute(f"SELECT 1 FROM {entity.table} WHERE id = ?", (str(row_id),))
            if exists.fetchone() is None:
                raise NotFoundError(entity.name, row_id)
            cascaded = _cascade(conn, entity, [str(row_id)], clock, outbox_targets)
            found = conn.execute(f"DELETE FROM {entity.table} WHERE id = ? RETURNING row_version",
                                 (str(row_id),)).fetchone()
            version = max((found[0] or 0) + 1, clock)
            _tombstone(conn, entity, row_id, version)
            return Written(None, _outbox_add(conn, outbox, version), version, tuple(cascaded))

        return await self._run(tx, write=True, grouped=True)

    # -- reads --
    async def get_row(self, entity: Entity, row_id: uuid.UUID) -> dict[str, Any] | None:
        sql = f"SELECT * FROM {entity.table} WHERE id = ?"

        def read(conn: sqlite3.Connection) -> dict[str, Any] | None:
            found = conn.execute(sql, (str(row_id),)).fetchone()
            return None if found is None else from_sqlite(entity, found)

        return await self._run(read, write=False)

    async def get_versioned(
        self, entity: Entity, row_ids: Sequence[uuid.UUID]
    ) -> dict[uuid.UUID, tuple[dict[str, Any], int]]:
        sql = f"SELECT * FROM {entity.table} WHERE id IN (SELECT value FROM json_each(?))"
        listed = json.dumps([str(i) for i in row_ids])

        def read(conn: sqlite3.Connection) -> dict[uuid.UUID, tuple[dict[str, Any], int]]:
            found = conn.execute(sql, (listed,)).fetchall()
            return {uuid.UUID(r["id"]): (from_sqlite(entity, r), r["row_version"]) for r in found}

        return await self._run(read, write=False)

    async def list_rows(
        self, entity: Entity, owner: Any | None, *, limit: int, offset: int
    ) -> list[dict[str, Any]]:
        where, params = "", list[Any]()
        if entity.owner is not None and owner is not None:
            where = f"WHERE {entity.owner} = ?"
            params.append(str(owner))
        sql = (
            f"SELECT * FROM {entity.table} {where} ORDER BY {entity.order_by}, id LIMIT ? OFFSET ?"
        )
        params += [limit, offset]

        def read(conn: sqlite3.Connection) -> list[dict[str, Any]]:
            return [from_sqlite(entity, r) for r in conn.execute(sql, params)]

        return await self._run(read, write=False)

    async def search(
        self, query: str, user_id: uuid.UUID, limit: int, *, highlights: bool = True
    ) -> list[SearchResult]:
        parsed = parse_query(query)
        if parsed.empty:
            return []
        return await self._run(
            lambda c: _search(c, parsed, str(user_id), limit, highlights), write=False
        )

    # -- as a mirror --
    async def apply(self, mutations: Sequence[Mutation]) -> list[ApplyResult]:
        # one transaction for the batch (shared with the writes queued beside it, as any
        # grouped write), a savepoint per mutation inside it
        return await self._run(lambda conn: [_apply_one(conn, m) for m in mutations],
                               write=True, grouped=True)

    async def delete_parents(self, deletes: Sequence[Mutation]) -> list[ApplyResult]:
        def tx(conn: sqlite3.Connection) -> list[ApplyResult]:
            # one writer: nothing can attach a child between this look and the delete
            return [WAITS if _still_referenced(conn, m) else _apply_one(conn, m)
                    for m in deletes]

        return await self._run(tx, write=True, grouped=True)

    async def apply_inline(self, mutations: Sequence[Mutation]) -> list[ApplyResult]:
        return await self.apply(mutations)  # every commit here is as durable as the primary's

    async def flush_wal(self) -> None:
        """Nothing to do: every commit here is as durable as it will be (see `_connect`)."""

    # -- the control record (see proxy.control) --
    async def read_control(self) -> Control | None:
        def read(conn: sqlite3.Connection) -> Control | None:
            try:
                found = conn.execute(f"SELECT {COLUMNS} FROM cutover_control WHERE id = 1")
            except sqlite3.OperationalError as exc:
                if "no such table" in str(exc):
                    return None  # a schema from before the record (`cutover schema init`)
                raise
            row = found.fetchone()
            return None if row is None else Control.from_row(*row)

        return await self._run(read, write=False)

    async def advance_control(self, control: Control) -> Control:
        """Store `control` if its epoch is higher than the stored one's; return the stored."""
        def tx(conn: sqlite3.Connection) -> Control:
            conn.execute(
                f"INSERT INTO cutover_control (id, {COLUMNS}) VALUES (1, ?, ?, ?, ?, ?) "
                "ON CONFLICT (id) DO UPDATE SET read_primary = excluded.read_primary, "
                "epoch = excluded.epoch, dual_write = excluded.dual_write, "
                "env_applied = excluded.env_applied, file_word = excluded.file_word "
                "WHERE excluded.epoch > cutover_control.epoch", control.to_params())
            found = conn.execute(f"SELECT {COLUMNS} FROM cutover_control WHERE id = 1")
            return Control.from_row(*found.fetchone())

        return await self._run(tx, write=True, grouped=True)

    async def fence_control(self, control: Control, *, expect_epoch: int) -> bool:
        """Store `control` only if the stored epoch is still `expect_epoch` (a flip's fence)."""
        def tx(conn: sqlite3.Connection) -> bool:
            cur = conn.execute(
                "UPDATE cutover_control SET read_primary = ?, epoch = ?, dual_write = ?, "
                "env_applied = ?, file_word = ? WHERE id = 1 AND epoch = ?",
                (*control.to_params(), expect_epoch))
            return cur.rowcount == 1

        return await self._run(tx, write=True, grouped=True)

    # -- outbox --
    async def outbox_pending(self, target: str, limit: int) -> list[OutboxEntry]:
        sql = (
            "SELECT * FROM cutover_outbox WHERE target = ? AND dead = 0 ORDER BY seq LIMIT ?"
        )
        return await self._run(
            lambda c: [_entry(r) for r in c.execute(sql, (target, limit))], write=False
        )

    async def outbox_dead(self, target: str, limit: int) -> list[OutboxEntry]:
        sql = "SELECT * FROM cutover_outbox WHERE target = ? AND dead = 1 ORDER BY seq LIMIT ?"
        return await self._run(
            lambda c: [_entry(r) for r in c.execute(sql, (target, limit))], write=False
        )

    async def outbox_ack(self, seqs: Sequence[int]) -> None:
        if not seqs:
            return
        ids = list(seqs)

        listed = json.dumps(ids)  # one statement for the batch, built off the writer thread

        def tx(conn: sqlite3.Connection) -> None:
            conn.execute(
                "DELETE FROM cutover_outbox WHERE seq IN (SELECT value FROM json_each(?))",
                (listed,),
            )

        await self._run(tx, write=True)

    async def outbox_retry(self, seq: int, error: str, *, dead: bool) -> None:
        sql = (
            "UPDATE cutover_outbox SET attempts = attempts + 1, last_error = ?, dead = ? "
            "WHERE seq = ?"
        )
        await self._run(lambda c: c.execute(sql, (error[:500], int(dead), seq)), write=True)

    async def outbox_requeue_dead(self, target: str) -> int:
        sql = "UPDATE cutover_outbox SET dead = 0, attempts = 0 WHERE target = ? AND dead = 1"
        count: int = await self._run(lambda c: c.execute(sql, (target,)).rowcount, write=True)
        return count

    async def outbox_stats(self, target: str) -> OutboxStats:
        def read(conn: sqlite3.Connection) -> OutboxStats:
            pending, oldest = conn.execute(
                "SELECT count(*), min(created_at) FROM cutover_outbox "
                "WHERE target = ? AND dead = 0", (target,)
            ).fetchone()
            dead = conn.execute(
                "SELECT count(*) FROM cutover_outbox WHERE target = ? AND dead = 1", (target,)
            ).fetchone()[0]
            rows = frozenset(
                uuid.UUID(r[0]) for r in conn.execute(
                    "SELECT DISTINCT row_id FROM cutover_outbox WHERE target = ? LIMIT 10000",
                    (target,),
                )
            )
            return OutboxStats(pending, parse_iso(oldest) if oldest else None, dead, rows)

        return await self._run(read, write=False)


# -- helpers run on the store's threads --
def _alone(conn: sqlite3.Connection, body: Callable[[], Any]) -> Outcome:
    """One transaction body in a transaction of its own."""
    try:
        conn.execute("BEGIN IMMEDIATE")
        try:
            result = body()
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
    except Exception as exc:
        return False, exc
    return True, result


def _is_unavailable(exc: sqlite3.OperationalError) -> bool:
    text = str(exc).lower()
    return any(s in text for s in ("locked", "busy", "unable to open", "disk i/o", "readonly"))


def _outbox_rows(
    targets: Sequence[str], entity: Entity, op: Op, row_id: Any,
    encoded: dict[str, Any] | None,
) -> list[tuple[Any, ...]]:
    """The outbox rows of one write (one per target; the version joins them in `_outbox_add`);
    `encoded` is its `encode_row` form.

    Built before the writer thread runs when the row is known, since that thread is the one
    place every SQLite write waits for."""
    if not targets:
        return []
    payload = orjson.dumps({"row": encoded}).decode()
    created_at = iso(now_utc())
    return [(t, entity.name, op, str(row_id), payload, created_at) for t in targets]


def _outbox_add(conn: sqlite3.Connection, rows: list[tuple[Any, ...]], version: int) -> int | None:
    seq = None
    for params in rows:
        seq = conn.execute(
            "INSERT INTO cutover_outbox (target, entity, op, row_id, payload, created_at, version)"
            " VALUES (?, ?, ?, ?, ?, ?, ?)", (*params, version),
        ).lastrowid
    return seq


def _cascade(
    conn: sqlite3.Connection, entity: Entity, ids: list[str], clock: int,
    targets: Sequence[str],
) -> list[Mutation]:
    """Carry out the ON DELETE rules for rows of `entity` about to be deleted, as writes of our
    own: each child deleted or set to NULL gets a version, a tombstone and an outbox entry, as
    any write does (left to the foreign keys, a mirror could never learn of them, and a late
    write of such a child could come back). Returns those writes, children's children first."""
    changed: list[Mutation] = []
    listed = json.dumps(ids)
    for child, column in REFERENCED_BY[entity.table]:
        where = f"{column.name} IN (SELECT value FROM json_each(?))"
        if column.on_delete == "CASCADE":
            doomed = [r[0] for r in conn.execute(f"SELECT id FROM {child.table} WHERE {where}",
                                                 (listed,))]
            if not doomed:
                continue
            changed += _cascade(conn, child, doomed, clock, targets)
            for child_id, old in conn.execute(
                f"DELETE FROM {child.table} WHERE id IN (SELECT value FROM json_each(?)) "
                "RETURNING id, row_version", (json.dumps(doomed),)
            ).fetchall():
                version = max((old or 0) + 1, clock)
                _tombstone(conn, child, child_id, version)
                _outbox_add(conn, _outbox_rows(targets, child, "delete", child_id, None), version)
                changed.append(Mutation(child.name, "delete", uuid.UUID(child_id), version))
        else:
            for r in conn.execute(
                f"UPDATE {child.table} SET {column.name} = NULL, "
                f"row_version = max(row_version + 1, ?) WHERE {where} RETURNING *",
                (clock, listed),
            ).fetchall():
                row = from_sqlite(child, r)
                _outbox_add(conn, _outbox_rows(targets, child, "update", row["id"],
                                               encode_row(child.name, row)), r["row_version"])
                changed.append(Mutation(child.name, "update", row["id"], r["row_version"], row))
    return changed


def _check_epoch(conn: sqlite3.Connection, epoch: int | None) -> None:
    """The fence: a write acting on `epoch` commits only while the control record is at it
    (the writer thread runs one transaction at a time, so a flip cannot slip in between)."""
    if epoch is not None:
        found = conn.execute("SELECT epoch FROM cutover_control WHERE id = 1").fetchone()
        current = found[0] if found else 0
        if current != epoch:
            raise Fenced("sqlite", epoch, current)


def _tombstone_version(conn: sqlite3.Connection, entity: Entity, row_id: Any) -> int:
    found = conn.execute("SELECT version FROM cutover_tombstones WHERE entity = ? AND row_id = ?",
                         (entity.name, str(row_id))).fetchone()
    return int(found[0]) if found else 0


def _entry(r: sqlite3.Row) -> OutboxEntry:
    row = json.loads(r["payload"])["row"]
    mutation = Mutation.from_json(
        {"entity": r["entity"], "op": r["op"], "row_id": r["row_id"], "version": r["version"],
         "row": row}
    )
    return OutboxEntry(
        seq=r["seq"], target=r["target"], mutation=mutation,
        created_at=parse_iso(r["created_at"]), attempts=r["attempts"],
        last_error=r["last_error"], dead=bool(r["dead"]),
    )


def _tombstone(conn: sqlite3.Connection, entity: Entity, row_id: Any, version: int) -> None:
    conn.execute(
        "INSERT INTO cutover_tombstones (entity, row_id, version) VALUES (?, ?, ?) "
        "ON CONFLICT (entity, row_id) DO UPDATE SET version = max(version, excluded.version)",
        (entity.name, str(row_id), version),
    )


def _integrity_error(
    conn: sqlite3.Connection, entity: Entity, values: dict[str, Any], exc: sqlite3.IntegrityError
) -> Exception:
    text = str(exc)
    if "FOREIGN KEY" in text:
        for col in entity.columns:
            value = values.get(col.name)
            if col.references and value is not None:
                parent = conn.execute(
                    f"SELECT 1 FROM {col.references} WHERE id = ?", (str(value),)
                ).fetchone()
                if parent is None:
                    return NotFoundError(BY_TABLE[col.references].name, value, col.name)
    if "UNIQUE" in text:
        column = text.rsplit(".", 1)[-1]
        if column == "id":
            return ValidationError("id", "a row with this id already exists")
        return ValidationError(column, "already in use")
    return ValidationError(entity.name, f"rejected by the database: {text}")


def _still_referenced(conn: sqlite3.Connection, m: Mutation) -> bool:
    """Whether a delete of an older row than `m`'s must wait for rows referencing it."""
    entity = BY_NAME[m.entity]
    held = conn.execute(f"SELECT row_version FROM {entity.table} WHERE id = ?",
                        (str(m.row_id),)).fetchone()
    return held is not None and held[0] < m.version and any(
        conn.execute(f"SELECT 1 FROM {child.table} WHERE {column.name} = ? LIMIT 1",
                     (str(m.row_id),)).fetchone()
        for child, column in REFERENCED_BY[entity.table])


def _apply_one(conn: sqlite3.Connection, m: Mutation) -> ApplyResult:
    entity = BY_NAME[m.entity]
    conn.execute("SAVEPOINT apply_one")
    try:
        if m.op == "delete":
            cur = conn.execute(
                f"DELETE FROM {entity.table} WHERE id = ? AND row_version < ?",
                (str(m.row_id), m.version),
            )
            _tombstone(conn, entity, m.row_id, m.version)
            outcome = ApplyOutcome.APPLIED if cur.rowcount else ApplyOutcome.SUPERSEDED
        else:
            assert m.row is not None
            values = to_sqlite(entity, m.row)
            cols = list(values)
            updates = ", ".join(f"{c} = excluded.{c}" for c in cols if c != "id")
            cur = conn.execute(
                f"INSERT INTO {entity.table} ({', '.join(cols)}, row_version) "
                f"SELECT {', '.join('?' * len(cols))}, ? WHERE NOT EXISTS ("
                "SELECT 1 FROM cutover_tombstones WHERE entity = ? AND row_id = ? AND version >= ?)"
                f" ON CONFLICT (id) DO UPDATE SET {updates}, row_version = excluded.row_version"
                f" WHERE excluded.row_version > {entity.table}.row_version",
                [*values.values(), m.version, entity.name, str(m.row_id), m.version],
            )
            outcome = ApplyOutcome.APPLIED if cur.rowcount else ApplyOutcome.SUPERSEDED
        conn.execute("RELEASE apply_one")
        return ApplyResult(outcome)
    except sqlite3.IntegrityError as exc:
        conn.execute("ROLLBACK TO apply_one")
        conn.execute("RELEASE apply_one")
        if "FOREIGN KEY" in str(exc):
            return ApplyResult(ApplyOutcome.FAILED, str(exc), missing_parent=True)
        return ApplyResult(ApplyOutcome.FAILED, str(exc), permanent=True)
    except sqlite3.OperationalError:
        conn.execute("ROLLBACK TO apply_one")
        conn.execute("RELEASE apply_one")
        raise


# The full-text candidates, in the order the PostgreSQL store computes too: rows whose question
# column matches every term first, then the shorter question (or answer, for answer matches; in
# UTF-8 bytes, as PostgreSQL's octet_length counts them), then the id. The question-column match
# is one uncorrelated subquery, evaluated once: a correlated MATCH per hit re-reads the term's
# whole doclist for every hit (O(hits^2): 241 s for `the` on 100k questions, 164 ms this way).
FTS_CANDIDATES_SQL = (
    "SELECT id, question, answer FROM ("
    "SELECT q.id, q.question, q.answer, questions_search.rowid IN (SELECT s.rowid "
    "FROM questions_search s WHERE s.questions_search MATCH ?3) AS in_question "
    "FROM questions_search "
    "JOIN question_search_rowids m ON m.rowid = questions_search.rowid "
    "JOIN questions q ON q.id = m.question_id "
    "JOIN study_books b ON b.id = q.study_book_id "
    "WHERE questions_search MATCH ?1 AND b.user_id = ?2) "
    "ORDER BY in_question DESC, CASE WHEN in_question THEN length(CAST(question AS BLOB)) "
    "ELSE length(CAST(answer AS BLOB)) END, id LIMIT ?4"
)


def _search(
    conn: sqlite3.Connection, parsed: ParsedQuery, user_id: str, limit: int, marks: bool = True
) -> list[SearchResult]:
    hits: list[SearchResult] = []
    seen: set[uuid.UUID] = set()
    if parsed.terms:
        # candidates in the order PostgreSQL computes too (see searchtext's shared ranking),
        # then ranked by the same Python function: bm25 and ts_rank disagree too much to compare
        rows = conn.execute(FTS_CANDIDATES_SQL, (
            fts5_match(parsed), user_id, fts5_question_match(parsed), FTS_CANDIDATES,
        )).fetchall()
        ranked = rank_fts(parsed, ((uuid.UUID(r["id"]), r["question"], r["answer"])
                                   for r in rows), limit)
        for score, qid, question, answer in ranked:
            seen.add(qid)
            hits.append(_hit(qid, question, answer, parsed, score, "fts", marks))
    if parsed.substrings and len(hits) < limit:
        conds = " AND ".join("instr(lower(q.question || ' ' || q.answer), ?) > 0"
                             for _ in parsed.substrings)
        rows = conn.execute(
            "SELECT q.id, q.question, q.answer FROM questions q "
            "JOIN study_books b ON b.id = q.study_book_id "
            f"WHERE b.user_id = ? AND {conds} ORDER BY q.id LIMIT ?",
            (user_id, *parsed.substrings, limit + len(seen)),
        ).fetchall()
        for r in rows:
            if uuid.UUID(r["id"]) not in seen and len(hits) < limit:
                hits.append(_result(r, parsed, SUBSTRING_SCORE, "substring", marks))
    return hits


def _result(
    r: sqlite3.Row, parsed: ParsedQuery, score: float, kind: Any, marks: bool
) -> SearchResult:
    return _hit(uuid.UUID(r["id"]), r["question"], r["answer"], parsed, score, kind, marks)


def _hit(
    qid: uuid.UUID, question: str, answer: str, parsed: ParsedQuery, score: float, kind: Any,
    marks: bool,
) -> SearchResult:
    return SearchResult(
        question_id=qid, question=question, answer=answer,
        highlight=highlight(document(question, answer), parsed) if marks else "",
        score=score, match_kind=kind,
    )

