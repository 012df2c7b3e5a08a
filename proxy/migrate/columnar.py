"""The backfill's columnar lane: a batch whose every row is in the plain form (what
`checks._quick_row` passes unchanged) is read, checked and encoded for COPY column by column,
in Arrow, never as Python values.

Row by row, the backfill's own process spent about 10 us of CPU a row reading, checking and
encoding, most of what it costs over a plain COPY on a two-core machine. Here SQLite's rows come
as Arrow columns (ADBC's SQLite driver), the plain form is tested with Arrow's compute functions,
and pgpq writes PostgreSQL's binary COPY (`bench/columnar.py` measures both lanes).

The lane only takes what it can prove plain, and hands everything else back whole:
- SQLite computes each row's storage classes in the same read; ADBC's type inference would
  otherwise render a BLOB in a TEXT column as text without a word;
- a batch with any row that is not plain (a non-canonical id, NUL, a REAL with digits to round,
  an orphan, a timestamp not in the form `YYYY-MM-DDTHH:MM:SS[.ffffff]Z`...) returns None, and
  the part reads it again as before (`source.read_batch`), checks and reports row by row;
- so does a batch whose start is not the common one (the last row read still in its place).
Tests load dirty files both ways and compare every row and every report
(`tests/test_backfill_columnar.py`).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import adbc_driver_sqlite
import adbc_driver_sqlite.dbapi as adbc
import pgpq
import pyarrow as pa
import pyarrow.compute as pc

from proxy.migrate.source import _mark_holds, _rows_after, row_mark, source_columns
from proxy.models import Column, Entity, Kind

# the timestamps Arrow's cast and `legacy.parse_timestamp` read alike: UTC, years 0001-9999,
# no leap second, six digits of fraction or none (an impossible day fails the cast: not plain)
_TIMESTAMP = (r"^(?:[0-9]{3}[1-9]|[0-9]{2}[1-9][0-9]|[0-9][1-9][0-9]{2}|[1-9][0-9]{3})"
              r"-(?:0[1-9]|1[0-2])-(?:0[1-9]|[12][0-9]|3[01])"
              r"T(?:[01][0-9]|2[0-3]):[0-5][0-9]:[0-5][0-9](?:\.[0-9]{6})?Z$")
_STORAGE = {Kind.UUID: "text", Kind.TEXT: "text", Kind.TIMESTAMP: "text", Kind.INT: "integer",
            Kind.DECIMAL: "real"}
_ZERO_UUID = "00000000-0000-0000-0000-000000000000"
MAX_SKIP = 64  # batches a part reads the usual way after one the lane could not take, at most


class NotPlain(Exception):
    """This batch is not the lane's to take."""


@dataclass(frozen=True, slots=True)
class ReadRows(Sequence[tuple[Any, int]]):
    """A columnar batch's rows as `source.read_batch` needs the last batch: (id, rowid)."""

    ids: pa.Array
    rowids: pa.Array

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, i: Any) -> Any:
        return (self.ids[i].as_py(), self.rowids[i].as_py())

    def __iter__(self) -> Iterator[tuple[Any, int]]:
        return zip(self.ids.to_pylist(), self.rowids.to_pylist(), strict=True)


@dataclass(frozen=True, slots=True)
class ColumnarBatch:
    """A batch of plain rows as binary COPY data, and the rows read (all of them new)."""

    copy_data: bytes
    rows: ReadRows


def open_columnar(path: Path, entity: Entity, rejected: dict[str, set[str]],
                  batch_size: int) -> ColumnarSource | None:
    """The lane for one part, or None (every batch the usual way) if ADBC cannot open the file:
    the usual way reports what is wrong with it."""
    try:
        return ColumnarSource(path, entity, rejected, batch_size)
    except adbc.Error:
        return None


class ColumnarSource:
    """One part's ADBC connection to the legacy file, used from its reader thread only."""

    def __init__(self, path: Path, entity: Entity, rejected: dict[str, set[str]],
                 batch_size: int) -> None:
        self.entity = entity
        self.rejected = rejected
        self.conn = adbc.connect(f"{path.resolve().as_uri()}?mode=ro", autocommit=True)
        self.cursor = self.conn.cursor()
        self.cursor.execute("PRAGMA busy_timeout = 5000")  # as `source.open_source`'s sqlite3
        # one Arrow batch per read: types are inferred from all its rows, not the first 1024
        self.cursor.adbc_statement.set_options(
            **{adbc_driver_sqlite.StatementOptions.BATCH_ROWS.value: str(batch_size + 1)})
        storage = " AND ".join(_storage_test(c) for c in entity.columns)
        self.select = f"({storage}), {source_columns(entity)}"
        self.skip = 0  # batches left to read the usual way
        self.misses = 0  # batches in a row the lane could not take

    def close(self) -> None:
        self.cursor.close()
        self.conn.close()

    def read(self, limit: int, until: int | None, start: tuple[int | None, str | None],
             last: Sequence[Sequence[Any]]) -> ColumnarBatch | None:
        """The next batch (after the last row of `last`, else after `start`) if every row is
        plain, else None (the part reads it the usual way). Skips the attempt for a while after
        a miss, so a file whose rows are seldom plain pays for few wasted reads."""
        if self.skip:
            self.skip -= 1
            return None
        try:
            got = self._read(limit, until, start, last)
        except (NotPlain, adbc.Error):  # an error too: the usual way says it, or gets past it
            self.misses += 1
            self.skip = min(MAX_SKIP, 2 ** (self.misses - 1))
            return None
        self.misses = 0
        return got

    def _read(self, limit: int, until: int | None, start: tuple[int | None, str | None],
              last: Sequence[Sequence[Any]]) -> ColumnarBatch:
        after, mark = start
        if last:
            rid, rowid = last[-1][0], last[-1][-1]
            if rid is None:
                raise NotPlain
            after, mark = int(rowid), row_mark(rowid, rid)
        cur = self.cursor
        cur.execute("BEGIN")
        try:
            if not _mark_holds(self.conn, self.entity.table, mark):
                raise NotPlain  # moved: `source._go_on_after` works out where to go on
            cur.execute(*_rows_after(self.select, after, limit, until))
            table = cur.fetch_arrow_table()
        finally:
            cur.execute("COMMIT")
        if table.num_rows == 0:
            raise NotPlain  # the part's end: said the usual way
        return self._encode(table.combine_chunks().to_batches()[0], last)

    def _encode(self, table: pa.RecordBatch, last: Sequence[Sequence[Any]]) -> ColumnarBatch:
        e, n = self.entity, table.num_rows
        width = len(e.columns)
        if not _all(pc.equal(table.column(0), 1)):
            raise NotPlain
        columns = [table.column(1 + i) for i in range(width)]
        out = [_plain(c, a, n) for c, a in zip(e.columns, columns, strict=True)]
        flag = 1 + width  # the parent-exists flags follow the columns, one per reference
        for c, a in zip(e.columns, columns, strict=True):
            if c.references:
                self._check_reference(c, a, table.column(flag))
                flag += 1
        ids, rowids = columns[0], table.column(table.num_columns - 1)
        if last:
            seen = last.ids if isinstance(last, ReadRows) else pa.array(
                [r[0] for r in last if type(r[0]) is str], pa.string())
            if pc.any(pc.is_in(ids, value_set=seen)).as_py():
                raise NotPlain  # a row read before, moved up: `source._not_read` leaves it out
        batch = pa.RecordBatch.from_arrays(out, names=list(e.column_names))
        encoder = pgpq.ArrowToPostgresBinaryEncoder(batch.schema)
        data = encoder.write_header() + encoder.write_batch(batch) + encoder.finish()
        return ColumnarBatch(data, ReadRows(ids, rowids))

    def _check_reference(self, c: Column, values: pa.Array, exists: pa.Array) -> None:
        orphan = pc.and_(pc.is_valid(values), pc.equal(exists, 0))
        rejected = self.rejected.get(c.references or "", set())
        if rejected:
            orphan = pc.or_(orphan, pc.is_in(values, value_set=pa.array(sorted(rejected))))
        if _any(orphan):
            raise NotPlain


def _storage_test(c: Column) -> str:
    """SQLite's test that column `c` of row t holds its plain storage class."""
    classes = f"'{_STORAGE[c.kind]}'" + (", 'null'" if c.nullable else "")
    return f"typeof(t.{c.name}) IN ({classes})"


def _plain(c: Column, values: pa.Array, n: int) -> pa.Array:
    """Column `c` as PostgreSQL takes it, or `NotPlain` if any value is not in its plain
    form. The storage classes are SQLite's own (tested in the read)."""
    if values.null_count == n:
        return pa.nulls(n, _ARROW[c.kind](c))
    if c.kind in (Kind.UUID, Kind.TEXT, Kind.TIMESTAMP) and values.type != pa.string():
        raise NotPlain
    if c.kind is Kind.UUID:
        return _uuid_bytes(values)
    if c.kind is Kind.TEXT:
        try:
            values.validate(full=True)  # UTF-8
        except pa.ArrowInvalid:
            raise NotPlain from None
        if b"\x00" in _text_bytes(values) or (
                c.max_length is not None
                and _any(pc.greater(pc.utf8_length(values), c.max_length))):
            raise NotPlain
        return values
    if c.kind is Kind.INT:
        lo = c.minimum if c.minimum is not None else -(2**31)
        hi = c.maximum if c.maximum is not None else 2**31 - 1
        if values.type != pa.int64() or _any(pc.or_(pc.less(values, lo), pc.greater(values, hi))):
            raise NotPlain
        return values.cast(pa.int32())
    if c.kind is Kind.TIMESTAMP:
        if not _all(pc.match_substring_regex(values, _TIMESTAMP)):
            raise NotPlain
        try:
            return values.cast(pa.timestamp("us", tz="UTC"))
        except pa.ArrowInvalid:  # a day the month has not
            raise NotPlain from None
    return _decimal(c, values)


def _decimal(c: Column, values: pa.Array) -> pa.Array:
    """A REAL column as NUMERIC(p, s): plain when nothing rounds (round(v, s) is v itself, as
    `legacy.quick_decimal` asks of the value's shortest repr) and it is in range."""
    scale, precision = c.scale or 0, c.precision or 38
    limit = 10 ** (precision - scale)
    lo = c.minimum if c.minimum is not None else -limit
    hi = c.maximum if c.maximum is not None else limit
    if values.type != pa.float64():
        raise NotPlain
    bad = pc.or_(pc.invert(pc.is_finite(values)),
                 pc.or_(pc.not_equal(pc.round(values, scale), values),
                        pc.or_(pc.less(values, lo), pc.greater(values, hi))))
    bad = pc.or_(bad, pc.greater_equal(pc.abs(values), limit))
    if _any(bad):
        raise NotPlain
    return values.cast(pa.decimal128(precision, scale))


def _uuid_bytes(values: pa.Array) -> pa.Array:
    """Canonical UUID strings (lower-case hex, hyphens at 8, 13, 18, 23) as 16 bytes each,
    binary COPY's form of uuid; `NotPlain` if any is not one. Tested on the column's bytes at
    once: a regular expression per value cost 110 ns a row."""
    n = len(values)
    filled = pc.fill_null(values, _ZERO_UUID) if values.null_count else values
    text = _text_bytes(filled)
    if len(text) != 36 * n or any(text[i::36] != b"-" * n for i in (8, 13, 18, 23)):
        raise NotPlain
    digits = text.replace(b"-", b"")
    if len(digits) != 32 * n or digits.translate(None, b"0123456789abcdef"):
        raise NotPlain
    raw = bytes.fromhex(digits.decode("ascii"))
    out = pa.FixedSizeBinaryArray.from_buffers(pa.binary(16), n, [None, pa.py_buffer(raw)])
    if values.null_count:
        out = pc.if_else(pc.is_valid(values), out, pa.scalar(None, pa.binary(16)))
    return out


def _text_bytes(values: pa.Array) -> bytes:
    """The bytes of a string array's values, end to end (a NULL adds none)."""
    offsets = values.buffers()[1]
    start, end = (int.from_bytes(offsets[4 * i: 4 * i + 4].to_pybytes(), "little")
                  for i in (values.offset, values.offset + len(values)))
    data = values.buffers()[2]
    return b"" if data is None else data[start:end].to_pybytes()


_ARROW = {
    Kind.UUID: lambda c: pa.binary(16), Kind.TEXT: lambda c: pa.string(),
    Kind.INT: lambda c: pa.int32(), Kind.TIMESTAMP: lambda c: pa.timestamp("us", tz="UTC"),
    Kind.DECIMAL: lambda c: pa.decimal128(c.precision or 38, c.scale or 0),
}


def _all(mask: pa.Array) -> bool:
    """Every value passes; a NULL (which the read let through only where it may be) passes."""
    return bool(pc.all(mask).as_py())


def _any(mask: pa.Array) -> bool:
    return bool(pc.any(mask).as_py())
