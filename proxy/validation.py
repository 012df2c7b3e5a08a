"""The contract's input rules, checked before any store is touched."""

from __future__ import annotations

import math
import uuid
from datetime import datetime
from decimal import Decimal, InvalidOperation
from typing import Any

from proxy.codec import quantum
from proxy.errors import ValidationError
from proxy.models import Column, Entity, Kind

MAX_PAGE = 1000


def parse_id(value: Any, field: str = "id") -> uuid.UUID:
    """A UUID from a UUID or its text; `ValidationError` naming `field` otherwise."""
    if isinstance(value, uuid.UUID):
        return value
    if isinstance(value, str):
        try:
            return uuid.UUID(value)
        except ValueError:
            pass
    raise ValidationError(field, "must be a UUID")


def _text(col: Column, value: Any) -> str:
    if not isinstance(value, str):
        raise ValidationError(col.name, "must be a string")
    if "\x00" in value:
        raise ValidationError(col.name, "must not contain NUL characters")
    if col.max_length is not None and len(value) > col.max_length:
        raise ValidationError(col.name, f"must be at most {col.max_length} characters")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        # a lone surrogate: neither store can hold it (it has no UTF-8 form)
        raise ValidationError(col.name, "must be valid Unicode text (no lone surrogates)") from None
    if not col.nullable and not value.strip():
        raise ValidationError(col.name, "must not be blank")
    if col.max_length is not None and len(value) > col.max_length:
        raise ValidationError(col.name, f"must be at most {col.max_length} characters")
    if col.name == "email" and (value.count("@") != 1 or value.startswith("@")
                                or value.endswith("@") or any(c.isspace() for c in value)):
        raise ValidationError(col.name, "must be an email address with one '@'")
    return value


def _int(col: Column, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        else:
            raise ValidationError(col.name, "must be an integer")
    lo = col.minimum if col.minimum is not None else -(2**31)
    hi = col.maximum if col.maximum is not None else 2**31 - 1
    if not lo <= value <= hi:
        raise ValidationError(col.name, f"must be from {lo} to {hi}")
    return int(value)


def _decimal(col: Column, value: Any) -> Decimal:
    if isinstance(value, bool):
        raise ValidationError(col.name, "must be a number")
    try:
        if isinstance(value, float):
            if not math.isfinite(value):
                raise ValidationError(col.name, "must be a finite number")
            number = Decimal(repr(value))
        elif isinstance(value, int | str | Decimal):
            number = Decimal(value)
        else:
            raise ValidationError(col.name, "must be a number")
    except InvalidOperation:
        raise ValidationError(col.name, "must be a number") from None
    if not number.is_finite():
        raise ValidationError(col.name, "must be a finite number")
    scale = col.scale or 0
    limit = Decimal(10) ** ((col.precision or 38) - scale)
    # before quantize, which raises InvalidOperation when the result has more digits than the
    # context's precision (accuracy="1e30")
    if col.maximum is None and number.copy_abs() >= limit:
        raise ValidationError(col.name, f"must be less than {limit} in magnitude")
    if (col.minimum is not None and number < col.minimum) or (
            col.maximum is not None and number > col.maximum):
        raise ValidationError(col.name, f"must be from {col.minimum} to {col.maximum}")
    try:
        exact = number == number.quantize(quantum(scale), rounding="ROUND_HALF_EVEN")
    except InvalidOperation:
        exact = False
    if not exact:
        raise ValidationError(col.name, f"must have at most {scale} decimal places")
    number = number.quantize(quantum(scale))
    if col.minimum is not None and number < col.minimum:
        raise ValidationError(col.name, f"must be from {col.minimum} to {col.maximum}")
    if col.maximum is not None and number > col.maximum:
        raise ValidationError(col.name, f"must be from {col.minimum} to {col.maximum}")
    limit = Decimal(10) ** ((col.precision or 38) - scale)
    if abs(number) >= limit:
        raise ValidationError(col.name, f"must be less than {limit} in magnitude")
    return number


def check_value(col: Column, value: Any) -> Any:
    if value is None:
        if col.nullable:
            return None
        raise ValidationError(col.name, "is required")
    if col.kind is Kind.UUID:
        return parse_id(value, col.name)
    if col.kind is Kind.TEXT:
        return _text(col, value)
    if col.kind is Kind.INT:
        return _int(col, value)
    if col.kind is Kind.DECIMAL:
        return _decimal(col, value)
    if col.kind is Kind.TIMESTAMP:
        if not isinstance(value, datetime) or value.tzinfo is None:
            raise ValidationError(col.name, "must be a timezone-aware datetime")
        return value
    raise AssertionError(col.kind)


def check_create(entity: Entity, given: dict[str, Any]) -> dict[str, Any]:
    """Validated values for every writable column (optional ones default to None)."""
    unknown = set(given) - set(entity.column_names)
    if unknown:
        raise ValidationError(sorted(unknown)[0], "is not a column of " + entity.table)
    out = {}
    for col in entity.writable:
        if col.name not in given and not col.nullable:
            raise ValidationError(col.name, "is required")
        out[col.name] = check_value(col, given.get(col.name))
    return out


def check_update(entity: Entity, given: dict[str, Any]) -> dict[str, Any]:
    """Validated values for the columns given (a partial update)."""
    writable = {c.name: c for c in entity.writable}
    out = {}
    for name, value in given.items():
        col = writable.get(name)
        if col is None:
            raise ValidationError(name, f"cannot be updated on {entity.table}")
        out[name] = check_value(col, value)
    if not out:
        raise ValidationError(entity.name, "nothing to update: give at least one field")
    return out


def check_page(limit: int, offset: int) -> None:
    if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= MAX_PAGE:
        raise ValidationError("limit", f"must be an integer from 1 to {MAX_PAGE}")
    if isinstance(offset, bool) or not isinstance(offset, int) or offset < 0:
        raise ValidationError("offset", "must be a non-negative integer")
