"""A small, capped SQLite file of recent shadow comparisons, readable from other processes.

The service writes it; `cutover status`, `cutover shadow list` and `cutover shadow replay` read it
from their own processes (WAL mode: readers never block the writer). Two tables:

- `comparisons`: one row per finished comparison (figures, outcome, reason, fingerprint), capped
  to the newest `max_comparisons` rows: what the go/no-go verdict reads.
- `mismatches`: one row per mismatch, error or timeout, with what replay needs (query text, user
  id, limit, both id lists), capped to the newest `max_mismatches` rows.

The query text and user id are kept here, in a local file created with mode 0600, because replay
needs them; they never go to a metric label or a log line. A `meta` table holds the per-install
salt that keys query fingerprints, so every process of one install agrees on them.

The methods are blocking: the shadow runner calls `add` through `asyncio.to_thread`.
"""

from __future__ import annotations

import json
import os
import secrets
import sqlite3
import threading
import time
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType, TracebackType
from typing import Any

from shadow.compare import Comparison, Outcome, Reason

DEFAULT_MAX_COMPARISONS = 10_000
DEFAULT_MAX_MISMATCHES = 1_000

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS comparisons (
    id INTEGER PRIMARY KEY,
    ts REAL NOT NULL,
    outcome TEXT NOT NULL,
    reason TEXT,
    jaccard REAL,
    rbo REAL,
    top1 INTEGER,
    fingerprint TEXT NOT NULL,
    primary_backend TEXT NOT NULL,
    shadow_ms REAL,
    agreement REAL
);
CREATE INDEX IF NOT EXISTS comparisons_ts ON comparisons (ts);
CREATE TABLE IF NOT EXISTS mismatches (
    id INTEGER PRIMARY KEY,
    ts REAL NOT NULL,
    outcome TEXT NOT NULL,
    reason TEXT NOT NULL,
    fingerprint TEXT NOT NULL,
    query TEXT,
    user_id TEXT NOT NULL,
    "limit" INTEGER NOT NULL,
    primary_backend TEXT NOT NULL,
    shadow_backend TEXT NOT NULL,
    primary_ids TEXT NOT NULL,
    shadow_ids TEXT NOT NULL,
    jaccard REAL,
    rbo REAL,
    detail TEXT NOT NULL DEFAULT ''
);
CREATE INDEX IF NOT EXISTS mismatches_ts ON mismatches (ts);
"""


@dataclass(frozen=True, slots=True)
class ComparisonRecord:
    """One finished comparison with the context the store keeps."""

    ts: float
    comparison: Comparison
    fingerprint: str
    query: str | None  # None when the runner was told not to keep query text
    user_id: str
    limit: int
    primary_backend: str
    shadow_backend: str
    shadow_ms: float | None = None


@dataclass(frozen=True, slots=True)
class MismatchRecord:
    """A stored mismatch, error or timeout, as `cutover shadow list` and replay read it."""

    id: int
    ts: float
    outcome: Outcome
    reason: Reason
    fingerprint: str
    query: str | None
    user_id: str
    limit: int
    primary_backend: str
    shadow_backend: str
    primary_ids: tuple[uuid.UUID, ...]
    shadow_ids: tuple[uuid.UUID, ...]
    jaccard: float | None
    rbo: float | None
    detail: str


@dataclass(frozen=True, slots=True)
class WindowSummary:
    """Aggregates of the stored comparisons over a recent window (what the verdict reads)."""

    since_ts: float
    total: int = 0
    matches: int = 0
    mismatches: int = 0
    errors: int = 0
    timeouts: int = 0
    mean_jaccard: float | None = None
    #: the mean of the comparisons' `agreement` (rank-biased overlap; of the full-text matches
    #: alone for a fuzzy_only one, see shadow.compare)
    mean_rbo: float | None = None
    top1_rate: float | None = None
    by_reason: Mapping[str, int] = field(default_factory=lambda: MappingProxyType({}))

    @property
    def completed(self) -> int:
        """Comparisons that produced a shadow list (match or mismatch)."""
        return self.matches + self.mismatches

    @property
    def unexplained(self) -> int:
        return self.by_reason.get(Reason.UNEXPLAINED.value, 0)


def _ids(text: str) -> tuple[uuid.UUID, ...]:
    return tuple(uuid.UUID(x) for x in json.loads(text))


class ShadowStore:
    """The comparisons file; one connection guarded by a lock (callers may be worker threads)."""

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        max_comparisons: int = DEFAULT_MAX_COMPARISONS,
        max_mismatches: int = DEFAULT_MAX_MISMATCHES,
    ) -> None:
        if max_comparisons < 1 or max_mismatches < 1:
            raise ValueError("caps must be at least 1")
        self.path = Path(path)
        self.max_comparisons = max_comparisons
        self.max_mismatches = max_mismatches
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if not self.path.exists():
            # the file holds query text: create it private before SQLite opens it
            os.close(os.open(self.path, os.O_CREAT | os.O_WRONLY, 0o600))
        self._lock = threading.Lock()
        self._conn = sqlite3.connect(
            self.path, timeout=5.0, check_same_thread=False, isolation_level=None
        )
        self._use_wal()
        # a lost tail of comparisons after a power cut is acceptable; fsync per batch is not
        self._conn.execute("PRAGMA synchronous=NORMAL")
        self._conn.executescript(_SCHEMA)
        self._add_agreement_column()
        self._conn.execute(
            "INSERT OR IGNORE INTO meta (key, value) VALUES ('salt', ?)", (secrets.token_hex(16),)
        )
        row = self._conn.execute("SELECT value FROM meta WHERE key = 'salt'").fetchone()
        self.salt: bytes = bytes.fromhex(row[0])
        self._closed = False

    def _use_wal(self) -> None:
        """Processes opening a new file together all switch it to WAL, and SQLite answers
        "locked" at once, without its busy wait, to all but one: retry (as the stores do)."""
        deadline = time.monotonic() + 5.0
        while True:
            mode = self._conn.execute("PRAGMA journal_mode").fetchone()[0]
            if mode in ("wal", "memory"):  # an in-memory database has no WAL (nor needs one)
                return
            try:
                if self._conn.execute("PRAGMA journal_mode=WAL").fetchone()[0] == "wal":
                    return
            except sqlite3.OperationalError:
                if time.monotonic() > deadline:
                    raise
            else:  # refused without an error: retrying alone never ends
                if time.monotonic() > deadline:
                    raise sqlite3.OperationalError(f"{self.path}: journal mode {mode}, not WAL")
            time.sleep(0.01)

    def _add_agreement_column(self) -> None:
        """A file written before `agreement` existed gets the column; its old rows read their
        `rbo` instead (`summary`). Another process may add it at the same moment."""
        def has_it() -> bool:
            columns = self._conn.execute("PRAGMA table_info(comparisons)")
            return any(r[1] == "agreement" for r in columns)

        if not has_it():
            try:
                self._conn.execute("ALTER TABLE comparisons ADD COLUMN agreement REAL")
            except sqlite3.OperationalError:  # "duplicate column name": the other one won
                if not has_it():
                    raise

    # -- writing -----------------------------------------------------------------------------

    def add(self, records: Iterable[ComparisonRecord]) -> int:
        """Store a batch in one transaction and trim both tables to their caps; returns count."""
        batch = list(records)
        if not batch:
            return 0
        comparisons = [
            (
                r.ts, r.comparison.outcome.value,
                None if r.comparison.reason is None else r.comparison.reason.value,
                r.comparison.jaccard, r.comparison.rbo,
                None if r.comparison.top1 is None else int(r.comparison.top1),
                r.fingerprint, r.primary_backend, r.shadow_ms, r.comparison.agreement,
            )
            for r in batch
        ]
        mismatches = [
            (
                r.ts, r.comparison.outcome.value, r.comparison.reason.value, r.fingerprint,
                r.query, r.user_id, r.limit, r.primary_backend, r.shadow_backend,
                json.dumps([str(x) for x in r.comparison.primary_ids]),
                json.dumps([str(x) for x in r.comparison.shadow_ids]),
                r.comparison.jaccard, r.comparison.rbo, r.comparison.detail,
            )
            for r in batch
            if r.comparison.reason is not None
        ]
        with self._lock:
            conn = self._conn
            conn.execute("BEGIN IMMEDIATE")
            try:
                conn.executemany(
                    "INSERT INTO comparisons (ts, outcome, reason, jaccard, rbo, top1,"
                    " fingerprint, primary_backend, shadow_ms, agreement)"
                    " VALUES (?,?,?,?,?,?,?,?,?,?)",
                    comparisons,
                )
                if mismatches:
                    conn.executemany(
                        "INSERT INTO mismatches (ts, outcome, reason, fingerprint, query,"
                        ' user_id, "limit", primary_backend, shadow_backend, primary_ids,'
                        " shadow_ids, jaccard, rbo, detail)"
                        " VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
                        mismatches,
                    )
                # ids only grow, so "older than the newest N" is one indexed range delete
                conn.execute(
                    "DELETE FROM comparisons WHERE id <= (SELECT MAX(id) FROM comparisons) - ?",
                    (self.max_comparisons,),
                )
                conn.execute(
                    "DELETE FROM mismatches WHERE id <= (SELECT MAX(id) FROM mismatches) - ?",
                    (self.max_mismatches,),
                )
                conn.execute("COMMIT")
            except BaseException:
                conn.execute("ROLLBACK")
                raise
        return len(batch)

    # -- reading -----------------------------------------------------------------------------

    def counts(self) -> tuple[int, int]:
        """(stored comparisons, stored mismatches)."""
        with self._lock:
            c = self._conn.execute("SELECT COUNT(*) FROM comparisons").fetchone()[0]
            m = self._conn.execute("SELECT COUNT(*) FROM mismatches").fetchone()[0]
        return int(c), int(m)

    def recent_mismatches(
        self, limit: int = 50, *, reason: Reason | str | None = None
    ) -> list[MismatchRecord]:
        """The newest stored mismatches first, optionally of one reason."""
        sql = "SELECT * FROM mismatches"
        args: list[object] = []
        if reason is not None:
            sql += " WHERE reason = ?"
            args.append(Reason(reason).value)
        sql += " ORDER BY id DESC LIMIT ?"
        args.append(limit)
        with self._lock:
            rows = self._conn.execute(sql, args).fetchall()
        return [self._mismatch(row) for row in rows]

    def get_mismatch(self, mismatch_id: int) -> MismatchRecord | None:
        """One stored mismatch by its id (as `recent_mismatches` shows it), or None."""
        with self._lock:
            row = self._conn.execute(
                "SELECT * FROM mismatches WHERE id = ?", (mismatch_id,)
            ).fetchone()
        return None if row is None else self._mismatch(row)

    def summary(self, *, window_s: float = 900.0, now: float | None = None) -> WindowSummary:
        """Aggregates over comparisons newer than `now - window_s` (bounded by the cap)."""
        since = (time.time() if now is None else now) - window_s
        with self._lock:
            row = self._conn.execute(
                "SELECT COUNT(*),"
                " COALESCE(SUM(outcome = 'match'), 0), COALESCE(SUM(outcome = 'mismatch'), 0),"
                " COALESCE(SUM(outcome = 'error'), 0), COALESCE(SUM(outcome = 'timeout'), 0),"
                " AVG(jaccard), AVG(COALESCE(agreement, rbo)), AVG(top1)"
                " FROM comparisons WHERE ts >= ?",
                (since,),
            ).fetchone()
            reasons = self._conn.execute(
                "SELECT reason, COUNT(*) FROM comparisons WHERE ts >= ? AND reason IS NOT NULL"
                " GROUP BY reason",
                (since,),
            ).fetchall()
        return WindowSummary(
            since_ts=since,
            total=int(row[0]),
            matches=int(row[1]),
            mismatches=int(row[2]),
            errors=int(row[3]),
            timeouts=int(row[4]),
            mean_jaccard=row[5],
            mean_rbo=row[6],
            top1_rate=row[7],
            by_reason=MappingProxyType({str(r): int(n) for r, n in reasons}),
        )

    @staticmethod
    def _mismatch(row: Sequence[Any]) -> MismatchRecord:
        (id_, ts, outcome, reason, fingerprint, query, user_id, limit, primary_backend,
         shadow_backend, primary_ids, shadow_ids, jaccard, rbo_, detail) = row
        return MismatchRecord(
            id=int(id_), ts=float(ts), outcome=Outcome(outcome), reason=Reason(reason),
            fingerprint=str(fingerprint), query=query, user_id=str(user_id), limit=int(limit),
            primary_backend=str(primary_backend), shadow_backend=str(shadow_backend),
            primary_ids=_ids(primary_ids), shadow_ids=_ids(shadow_ids),
            jaccard=jaccard, rbo=rbo_, detail=str(detail),
        )

    # -- lifecycle ---------------------------------------------------------------------------

    def close(self) -> None:
        """Close the connection; safe to call twice."""
        with self._lock:
            if not self._closed:
                self._closed = True
                self._conn.close()

    def __enter__(self) -> ShadowStore:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
