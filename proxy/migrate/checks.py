"""Checking the backfill's source rows: every value against its target column
(`proxy.legacy.column_check`), a row with any problem rejected whole and each problem reported,
a value that lands changed reported too; and the problems as rows of the rejects table."""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from proxy.legacy import (
    _CANONICAL,
    NOT_CLEAN,
    Change,
    Rejected,
    _has_surrogate,
    column_check,
    legacy_uuid,
    quick_decimal,
    quick_timestamp,
)
from proxy.models import Entity, Kind


@dataclass(frozen=True, slots=True)
class Problem:
    """One line of the rejects report."""

    table: str
    row_id: Any
    mapped_id: str | None
    column: str | None
    value: Any
    reason: str
    kind: str  # rejected | changed | skipped
    new_value: Any = None


@dataclass
class Batch:
    """One batch after the checks: the rows that go in and everything to report."""

    rows: list[tuple[Any, ...]] = field(default_factory=list)
    copy_data: bytes = b""  # more rows, as binary COPY data (`columnar`), all plain
    copy_count: int = 0
    problems: list[Problem] = field(default_factory=list)
    mappings: list[tuple[str, str, str]] = field(default_factory=list)
    rejected: int = 0
    changed_ids: set[str] = field(default_factory=set)

    @property
    def size(self) -> int:
        return len(self.rows) + self.copy_count


class RowChecker:
    """Checks one table's source rows; remembers rejected ids so children follow them."""

    def __init__(self, entity: Entity, rejected: dict[str, set[str]]) -> None:
        self.entity = entity
        self.rejected = rejected
        cols = entity.columns
        self.checks = [(i, c.name, column_check(c)) for i, c in enumerate(cols) if i > 0]
        self.refs = [
            (i, c.name, c.references, c.nullable, len(cols) + k)
            for k, (i, c) in enumerate((i, c) for i, c in enumerate(cols) if c.references)
        ]
        self.quick = _quick_row(entity, rejected)

    def check(self, raw_rows: Sequence[Sequence[Any]]) -> Batch:
        out = Batch()
        table = self.entity.table
        mine = self.rejected.setdefault(table, set())
        quick, rows = self.quick, out.rows
        for raw in raw_rows:
            row = quick(raw)
            if row is not None:
                rows.append(row)
                continue
            rid = raw[0]
            problems: list[tuple[str | None, Any, str]] = []
            changes: list[Change] = []
            mapped: str | None = None
            if type(rid) is str:
                mapped = rid if _CANONICAL.fullmatch(rid) else str(legacy_uuid(rid))
            elif rid is None:
                problems.append(("id", None, "NOT NULL column is NULL"))
            else:
                problems.append(("id", rid, f"not an id (a {type(rid).__name__})"))
            values: list[Any] = [mapped]
            for i, name, check in self.checks:
                try:
                    values.append(check(raw[i], changes))
                except Rejected as exc:
                    problems.append((name, raw[i], exc.reason))
                    values.append(None)
            for i, name, parent, nullable, flag in self.refs:
                ref = raw[i]
                if ref is None or values[i] is None:
                    continue
                if not raw[flag]:
                    why = f"orphan: {parent} {ref} missing"
                elif ref in self.rejected.get(parent or "", ()):
                    why = f"orphan: {parent} {ref} rejected"
                else:
                    continue
                if nullable:
                    values[i] = None
                    changes.append(Change(name, ref, None, f"{why}; reference set to NULL"))
                else:
                    problems.append((name, ref, why))
            if problems:
                out.rejected += 1
                if type(rid) is str:
                    mine.add(rid)
                out.problems.extend(
                    Problem(table, rid, mapped, col, value, reason, "rejected")
                    for col, value, reason in problems
                )
                continue
            if mapped != rid:
                out.mappings.append((table, rid, mapped))  # type: ignore[arg-type]
            if changes:
                assert mapped is not None
                out.changed_ids.add(mapped)
                out.problems.extend(
                    Problem(table, rid, mapped, c.column, c.value, c.reason, "changed",
                            c.new_value)
                    for c in changes
                )
            out.rows.append(tuple(values))
        return out


def _quick_row(entity: Entity, rejected: dict[str, set[str]]
               ) -> Callable[[Sequence[Any]], tuple[Any, ...] | None]:
    """A function taking a clean source row (every value in its common form, nothing to report)
    to the row for PostgreSQL in one go, or returning None so `RowChecker.check` looks at it
    value by value. Generated, because it runs on every row: a third of the per-value calls."""
    env: dict[str, Any] = {"canon": _CANONICAL.fullmatch, "NC": NOT_CLEAN}
    lines, out = ["def quick(raw):"], []
    flags = len(entity.columns)
    for i, c in enumerate(entity.columns):
        v = f"v{i}"
        lines.append(f"    {v} = raw[{i}]")
        if c.kind is Kind.UUID:
            test = f"type({v}) is str and canon({v})"
        elif c.kind is Kind.TEXT:
            test = f"type({v}) is str and {v}.isascii() and '\\x00' not in {v}"
            if c.max_length is not None:
                test += f" and len({v}) <= {c.max_length}"
        elif c.kind is Kind.INT:
            lo = c.minimum if c.minimum is not None else -(2**31)
            hi = c.maximum if c.maximum is not None else 2**31 - 1
            test = f"type({v}) is int and {lo} <= {v} <= {hi}"
        else:
            env[f"conv{i}"] = quick_timestamp if c.kind is Kind.TIMESTAMP else quick_decimal(c)
            test = ""
            if c.nullable:
                lines.append(f"    if {v} is not None:")
                lines.append(f"        {v} = conv{i}({v})")
            else:
                lines.append(f"    {v} = conv{i}({v})")
            lines.append(f"    if {v} is NC: return None")
        if test:
            test = f"{v} is None or ({test})" if c.nullable else test
            lines.append(f"    if not ({test}): return None")
        if c.references:
            env[f"rejected{i}"] = rejected.setdefault(c.references, set())
            cond = f"(not raw[{flags}] or {v} in rejected{i})"
            lines.append(f"    if {v} is not None and {cond}: return None")
            flags += 1
        out.append(v)
    lines.append(f"    return ({', '.join(out)},)")
    exec("\n".join(lines), env)
    quick: Callable[[Sequence[Any]], tuple[Any, ...] | None] = env["quick"]
    return quick


def _jsonable(value: Any) -> Any:
    """A legacy value as JSON; text PostgreSQL cannot hold (NUL, bad UTF-8) as x'hex'."""
    if isinstance(value, str):
        return _safe_text(value)
    if value is None or isinstance(value, bool | int):
        return value
    if isinstance(value, float):
        return value if value == value and abs(value) != float("inf") else repr(value)
    if isinstance(value, bytes):
        return "x'" + value.hex() + "'"
    return str(value)


def _safe_text(text: str) -> str:
    if "\x00" in text or (not text.isascii() and _has_surrogate(text)):
        return "x'" + text.encode("utf-8", "surrogateescape").hex() + "'"
    return text


PROBLEM_COLUMNS = ["table_name", "row_id", "mapped_id", "column_name", "value", "new_value",
                   "reason", "kind"]


def problem_records(problems: Sequence[Problem]) -> list[tuple[Any, ...]]:
    return [
        (p.table, None if p.row_id is None else str(_jsonable(p.row_id)), p.mapped_id,
         p.column, json.dumps(_jsonable(p.value)),
         None if p.new_value is None else json.dumps(_jsonable(p.new_value)), p.reason, p.kind)
        for p in problems
    ]
