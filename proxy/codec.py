"""Conversions of column values: Python <-> JSON (outbox payloads) and Python <-> SQLite.

PostgreSQL's driver speaks Python types natively; SQLite keeps the legacy representation:
UUIDs and timestamps as TEXT (ISO 8601, UTC, microseconds), decimals as REAL.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from proxy.models import BY_NAME, Entity, Kind

_SCALES: dict[int, Decimal] = {}


def quantum(scale: int) -> Decimal:
    q = _SCALES.get(scale)
    if q is None:
        q = _SCALES[scale] = Decimal(1).scaleb(-scale)
    return q


def now_utc() -> datetime:
    """The current time, UTC, at PostgreSQL's precision (microseconds)."""
    return datetime.now(UTC)


def iso(ts: datetime) -> str:
    """The canonical text form stored in SQLite: UTC, microseconds, explicit offset."""
    return (ts if ts.tzinfo is UTC else ts.astimezone(UTC)).isoformat(timespec="microseconds")


def parse_iso(text: str) -> datetime:
    """Read a timestamp written by `iso` (or any ISO 8601 text; no offset means UTC)."""
    from proxy.legacy import parse_timestamp

    return parse_timestamp(text)


def _encode(kind: Kind, value: Any) -> Any:
    if value is None:
        return None
    if kind is Kind.UUID:
        return str(value)
    if kind is Kind.TIMESTAMP:
        return iso(value)
    if kind is Kind.DECIMAL:
        return str(value)
    return value


def _decode(kind: Kind, value: Any, scale: int | None) -> Any:
    if value is None:
        return None
    if kind is Kind.UUID:
        return value if isinstance(value, uuid.UUID) else uuid.UUID(str(value))
    if kind is Kind.TIMESTAMP:
        return value if isinstance(value, datetime) else parse_iso(str(value))
    if kind is Kind.DECIMAL:
        return Decimal(str(value)).quantize(quantum(scale or 0))
    if kind is Kind.INT:
        return int(value)
    return value


def encode_row(entity_name: str, row: dict[str, Any]) -> dict[str, Any]:
    """A row's values as JSON-safe text and numbers (the outbox payload)."""
    entity = BY_NAME[entity_name]
    return {c.name: _encode(c.kind, row.get(c.name)) for c in entity.columns if c.name in row}


def decode_row(entity_name: str, data: dict[str, Any]) -> dict[str, Any]:
    entity = BY_NAME[entity_name]
    return {c.name: _decode(c.kind, data.get(c.name), c.scale) for c in entity.columns
            if c.name in data}


def to_sqlite(entity: Entity, values: dict[str, Any]) -> dict[str, Any]:
    """Python values -> SQLite's (text for uuids and timestamps, REAL for decimals)."""
    return sqlite_params(entity, encode_values(entity, values))


def encode_values(entity: Entity, values: dict[str, Any]) -> dict[str, Any]:
    """Python values -> JSON-safe text and numbers, in the order given (see `encode_row`)."""
    return {name: _encode(entity.column(name).kind, value) for name, value in values.items()}


def sqlite_params(entity: Entity, encoded: dict[str, Any]) -> dict[str, Any]:
    """`encode_values` output -> SQLite's values (its legacy schema keeps decimals as REAL)."""
    return {name: float(value) if value is not None and name in entity.decimal_columns
            else value for name, value in encoded.items()}


def from_sqlite(entity: Entity, row: Any) -> dict[str, Any]:
    """A sqlite3.Row (or mapping) of the entity's columns -> Python values."""
    return {c.name: _decode(c.kind, row[c.name], c.scale) for c in entity.columns}


def from_postgres(entity: Entity, record: Any) -> dict[str, Any]:
    """An asyncpg Record -> Python values (decimals at the column's scale)."""
    out: dict[str, Any] = {}
    for c in entity.columns:
        value = record[c.name]
        if c.kind is Kind.DECIMAL and value is not None:
            value = value.quantize(quantum(c.scale or 0))
        out[c.name] = value
    return out
