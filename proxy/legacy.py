"""Reading the legacy database's values: ids that are not UUIDs, timestamps in many forms, and
the checks a legacy value must pass before it may land in PostgreSQL.

A legacy id that is not a UUID becomes `uuid5(LEGACY_NAMESPACE, legacy_id)` on both stores, so
every reference to it maps the same way; the original text is kept in `legacy_ids`.
Timestamps: ISO 8601 (with `Z`, an offset, a space separator, fractional seconds; no offset
means UTC) or all digits: epoch seconds, or epoch milliseconds above 100,000,000,000.
Anything else (an empty string, an impossible date) is rejected, never replaced.
"""

from __future__ import annotations

import math
import re
import sqlite3
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal, InvalidOperation
from typing import Any

from proxy.models import Column, Kind

LEGACY_NAMESPACE = uuid.UUID("6f1d7a52-3c1e-5b8e-9a57-2f0c1b4d8e90")
EPOCH_MS_THRESHOLD = 100_000_000_000
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_CANONICAL = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
_LONG_FRACTION = re.compile(r"[.,]\d{6}(\d+)")
# The columns that hold ids, per table: the id itself and the references to other tables.
# learning_events.user_id is free text in the seed (VARCHAR), so it is not among them.
ID_COLUMNS: dict[str, tuple[str, ...]] = {
    "users": ("id",),
    "study_books": ("id", "user_id"),
    "questions": ("id", "study_book_id"),
    "typing_logs": ("id", "user_id", "question_id"),
    "learning_events": ("id",),
}


def legacy_uuid(value: str) -> uuid.UUID:
    """The UUID a legacy id maps to: itself when it is one, else its uuid5."""
    try:
        return uuid.UUID(value)
    except (ValueError, AttributeError, TypeError):
        return uuid.uuid5(LEGACY_NAMESPACE, value)


def is_uuid_text(value: str) -> bool:
    """True when `value` is a UUID in canonical form (lower-case, hyphenated)."""
    return isinstance(value, str) and _CANONICAL.fullmatch(value) is not None


def parse_timestamp(value: str | int | float) -> datetime:
    """Parse a legacy timestamp to an aware UTC datetime; `ValueError` if it is not one."""
    if type(value) is str and not value.isdigit():
        try:  # the common case first: ISO 8601 as it is (with Z, an offset, or none)
            parsed = datetime.fromisoformat(value)
        except ValueError:
            pass
        else:
            if parsed.tzinfo is UTC:
                return parsed
            return _to_utc(parsed)
    if isinstance(value, bool):
        raise ValueError("not a timestamp")
    if isinstance(value, int):
        return _from_epoch(value)
    if isinstance(value, float):
        if not value.is_integer():
            raise ValueError("fractional epoch value")
        return _from_epoch(int(value))
    text = value.strip()
    if not text:
        raise ValueError("empty timestamp")
    if text.isdigit() and text.isascii():
        return _from_epoch(int(text))
    if text.endswith(("Z", "z")):
        text = text[:-1] + "+00:00"
    return _to_utc(datetime.fromisoformat(text))


def _to_utc(parsed: datetime) -> datetime:
    if parsed.tzinfo is None:
        return parsed.replace(tzinfo=UTC)  # no offset: UTC, as the legacy application wrote
    try:
        return parsed.astimezone(UTC)
    except OverflowError:
        raise ValueError("out of range") from None


def _from_epoch(number: int) -> datetime:
    # integer arithmetic: a float would lose microseconds on millisecond values
    try:
        if number > EPOCH_MS_THRESHOLD:
            return _EPOCH + timedelta(milliseconds=number)
        return _EPOCH + timedelta(seconds=number)
    except OverflowError:
        raise ValueError("epoch value out of range") from None


def truncated_fraction(text: str) -> bool:
    """True when ISO text carries non-zero digits below microseconds (dropped on parse)."""
    found = _LONG_FRACTION.search(text)
    return found is not None and found.group(1).strip("0") != ""


# -- checking one legacy value against its target column ------------------------------------


class Rejected(ValueError):
    """Raised by a column check when a legacy value cannot land as it is."""

    def __init__(self, reason: str) -> None:
        self.reason = reason
        super().__init__(reason)


@dataclass(frozen=True, slots=True)
class Change:
    """A value that lands changed (rounded, truncated, reference set to NULL): always reported."""

    column: str
    value: Any
    new_value: Any
    reason: str


Check = Callable[[Any, list[Change]], Any]


def column_check(col: Column) -> Check:
    """A function `(raw, changes) -> value for PostgreSQL` that raises `Rejected`.

    UUIDs come back as canonical text (asyncpg encodes text to uuid in C).
    """
    kind = col.kind
    if kind is Kind.TEXT:
        check: Check = _text_check(col)
    elif kind is Kind.INT:
        check = _int_check(col)
    elif kind is Kind.DECIMAL:
        check = _decimal_check(col)
    elif kind is Kind.TIMESTAMP:
        check = _timestamp_check(col)
    else:
        check = _uuid_check(col)
    return _nullable(col, check)


def _nullable(col: Column, check: Check) -> Check:
    if col.nullable:
        def nullable(raw: Any, changes: list[Change]) -> Any:
            return None if raw is None else check(raw, changes)
        return nullable

    def required(raw: Any, changes: list[Change]) -> Any:
        if raw is None:
            raise Rejected("NOT NULL column is NULL")
        return check(raw, changes)
    return required


def _text_check(col: Column) -> Check:
    limit = col.max_length

    def text(raw: Any, changes: list[Change]) -> Any:
        if type(raw) is not str:
            if isinstance(raw, bytes):
                raise Rejected("not text (a BLOB)")
            raise Rejected(f"not text (a {type(raw).__name__})")
        if limit is not None and len(raw) > limit:
            raise Rejected(f"longer than {limit} characters ({len(raw)})")
        if "\x00" in raw:
            raise Rejected("contains a NUL character")
        if not raw.isascii() and _has_surrogate(raw):
            raise Rejected("not valid UTF-8")
        return raw
    return text


def _has_surrogate(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


def _int_check(col: Column) -> Check:
    lo = col.minimum if col.minimum is not None else -(2**31)
    hi = col.maximum if col.maximum is not None else 2**31 - 1

    def integer(raw: Any, changes: list[Change]) -> Any:
        if type(raw) is not int:
            if isinstance(raw, float) and raw.is_integer():
                raw = int(raw)
            else:
                raise Rejected("not an integer")
        if not lo <= raw <= hi:
            raise Rejected(f"out of range {lo}..{hi}")
        return raw
    return integer


def _decimal_check(col: Column) -> Check:
    scale = col.scale or 0
    q = Decimal(1).scaleb(-scale)
    limit = Decimal(10) ** ((col.precision or 38) - scale)
    lo = None if col.minimum is None else Decimal(col.minimum)
    hi = None if col.maximum is None else Decimal(col.maximum)

    def decimal(raw: Any, changes: list[Change]) -> Any:
        if type(raw) is float:
            if not math.isfinite(raw):
                raise Rejected("not a finite number")
            number = Decimal(repr(raw))  # the shortest text that reads back as this REAL
        elif type(raw) is int:
            number = Decimal(raw)
        else:
            raise Rejected("not a number")
        try:
            value = number.quantize(q, rounding="ROUND_HALF_EVEN")
        except InvalidOperation:
            raise Rejected(f"exceeds NUMERIC({col.precision},{scale})") from None
        if (lo is not None and value < lo) or (hi is not None and value > hi):
            raise Rejected(f"out of range {lo}..{hi}")
        if abs(value) >= limit:
            raise Rejected(f"exceeds NUMERIC({col.precision},{scale})")
        if value != number:
            changes.append(Change(col.name, raw, str(value), f"rounded to {scale} decimals"))
        return value
    return decimal


def _timestamp_check(col: Column) -> Check:
    def timestamp(raw: Any, changes: list[Change]) -> Any:
        if isinstance(raw, bytes):
            raise Rejected("not a timestamp (a BLOB)")
        try:
            value = parse_timestamp(raw)
        except (ValueError, TypeError, OverflowError) as exc:
            raise Rejected(f"not a timestamp: {exc}") from None
        if isinstance(raw, str) and len(raw) > 27 and truncated_fraction(raw):
            changes.append(Change(col.name, raw, value.isoformat(),
                                  "truncated to microseconds"))
        return value
    return timestamp


def _uuid_check(col: Column) -> Check:
    def ident(raw: Any, changes: list[Change]) -> Any:
        if type(raw) is str:
            if _CANONICAL.fullmatch(raw):
                return raw
            return str(legacy_uuid(raw))
        if isinstance(raw, int):
            return str(legacy_uuid(str(raw)))
        raise Rejected(f"not an id (a {type(raw).__name__})")
    return ident


# -- the common case, quickly -----------------------------------------------------------------

NOT_CLEAN = object()  # returned by a quick check: the full `column_check` must decide


def quick_timestamp(raw: Any) -> Any:
    """An ISO or epoch text that parses with nothing to report, else NOT_CLEAN."""
    if type(raw) is not str or (len(raw) > 27 and truncated_fraction(raw)):
        return NOT_CLEAN
    try:
        return parse_timestamp(raw)
    except (ValueError, OverflowError):
        return NOT_CLEAN


def quick_decimal(col: Column) -> Callable[[Any], Any]:
    """A REAL that fits the column exactly (nothing to round, in range), else NOT_CLEAN."""
    q = Decimal(1).scaleb(-(col.scale or 0))
    limit = Decimal(10) ** ((col.precision or 38) - (col.scale or 0))
    lo = Decimal(col.minimum) if col.minimum is not None else -limit
    hi = Decimal(col.maximum) if col.maximum is not None else limit

    # a column's values repeat (a score, an accuracy in hundredths): each is converted once
    seen: dict[float, Any] = {}

    def quick(raw: Any) -> Any:
        if type(raw) is not float:
            return NOT_CLEAN
        value = seen.get(raw)
        if value is not None:
            return value
        if not math.isfinite(raw):
            return NOT_CLEAN
        number = Decimal(repr(raw))
        try:
            value = number.quantize(q)
        except InvalidOperation:  # more digits than the context holds: the checks say so
            value = NOT_CLEAN
        else:
            if value != number or not lo <= value <= hi or abs(value) >= limit:
                value = NOT_CLEAN
        if raw and len(seen) < 65_536:  # not 0.0: -0.0 is equal to it and would share its entry
            seen[raw] = value
        return value
    return quick


# -- upgrading a legacy SQLite database's ids in place ----------------------------------------


def upgrade_legacy_ids(conn: sqlite3.Connection) -> int:
    """Rewrite every id that is not a canonical UUID, and every reference to it, to
    `str(legacy_uuid(old))`, recording (table, old, new) in `legacy_ids`; return how many ids
    of rows were rewritten.

    Runs in the caller's transaction when there is one (revision 0001_baseline's, on a connection
    with foreign keys off), else in its own with foreign keys off: a legacy database may hold
    orphans, which an enforced check at COMMIT would refuse. `question_search_rowids` follows the
    questions it indexes, and the old application's `questions_fts` too.
    """
    own = not conn.in_transaction
    fk = conn.execute("PRAGMA foreign_keys").fetchone()[0]
    if own:
        conn.execute("PRAGMA foreign_keys=OFF")
        conn.execute("BEGIN IMMEDIATE")
    try:
        rewritten = _upgrade(conn)
        if own:
            conn.execute("COMMIT")
    except BaseException:
        if own:
            conn.execute("ROLLBACK")
        raise
    finally:
        if own:
            conn.execute(f"PRAGMA foreign_keys={'ON' if fk else 'OFF'}")
    return rewritten


# canonical-form test in SQL, so only the few non-canonical values come back to Python
_NOT_CANONICAL = (
    "typeof({c}) = 'text' AND NOT (length({c}) = 36 AND {c} NOT GLOB '*[^0-9a-f-]*' "
    "AND substr({c}, 9, 1) = '-' AND substr({c}, 14, 1) = '-' AND substr({c}, 19, 1) = '-' "
    "AND substr({c}, 24, 1) = '-' AND {c} NOT GLOB '*-*-*-*-*-*')"
)


def _upgrade(conn: sqlite3.Connection) -> int:
    tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master")}
    conn.execute("CREATE TEMP TABLE IF NOT EXISTS _cutover_idmap "
                 "(old TEXT PRIMARY KEY, new TEXT NOT NULL)")
    rewritten = 0
    try:
        for table, columns in ID_COLUMNS.items():
            if table not in tables:
                continue
            for column in columns:
                old_values = [r[0] for r in conn.execute(
                    f"SELECT DISTINCT {column} FROM {table} "
                    f"WHERE {_NOT_CANONICAL.format(c=column)}"
                ) if not is_uuid_text(r[0])]
                if not old_values:
                    continue
                conn.execute("DELETE FROM _cutover_idmap")
                conn.executemany("INSERT INTO _cutover_idmap VALUES (?, ?)",
                                 [(old, str(legacy_uuid(old))) for old in old_values])
                if column == "id":
                    _check_collisions(conn, table)
                    conn.execute(
                        "INSERT OR IGNORE INTO legacy_ids (table_name, legacy_id, id) "
                        "SELECT ?, old, new FROM _cutover_idmap", (table,))
                    rewritten += len(old_values)
                    if table == "questions":
                        _follow_questions(conn, tables)
                conn.execute(
                    f"UPDATE {table} SET {column} = (SELECT new FROM _cutover_idmap "
                    f"WHERE old = {table}.{column}) "
                    f"WHERE {column} IN (SELECT old FROM _cutover_idmap)"
                )
    finally:
        conn.execute("DROP TABLE temp._cutover_idmap")
    return rewritten


def _check_collisions(conn: sqlite3.Connection, table: str) -> None:
    """Two legacy ids mapping to one UUID (e.g. a UUID in upper and lower case) cannot both
    keep their rows: stop, naming them, rather than merge them silently."""
    clash = conn.execute(
        f"SELECT m.old, m.new FROM _cutover_idmap m JOIN {table} t ON t.id = m.new "
        "UNION ALL SELECT min(old), new FROM _cutover_idmap GROUP BY new HAVING count(*) > 1 "
        "LIMIT 1"
    ).fetchone()
    if clash is not None:
        raise ValueError(
            f"{table}: legacy id {clash[0]!r} maps to {clash[1]}, which another row already "
            "uses; fix one of them by hand before the upgrade"
        )


def _follow_questions(conn: sqlite3.Connection, tables: set[str]) -> None:
    # The AFTER UPDATE OF id trigger keeps question_search_rowids in step when it exists; this
    # covers a database whose triggers are not there yet (and is a no-op otherwise).
    if "question_search_rowids" in tables:
        conn.execute(
            "UPDATE question_search_rowids SET question_id = (SELECT new FROM _cutover_idmap "
            "WHERE old = question_id) WHERE question_id IN (SELECT old FROM _cutover_idmap)"
        )
    if "questions_fts" in tables:
        conn.execute(
            "UPDATE questions_fts SET question_id = (SELECT new FROM _cutover_idmap "
            "WHERE old = question_id) WHERE question_id IN (SELECT old FROM _cutover_idmap)"
        )
