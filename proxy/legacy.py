"""Reading the legacy database's values: ids that are not UUIDs, and timestamps in many forms.

A legacy id that is not a UUID becomes `uuid5(LEGACY_NAMESPACE, legacy_id)` on both stores, so
every reference to it maps the same way; the original text is kept in `legacy_ids`.
Timestamps: ISO 8601 (with `Z`, an offset, a space separator, fractional seconds; no offset
means UTC) or all digits: epoch seconds, or epoch milliseconds above 100,000,000,000.
Anything else (an empty string, an impossible date) is rejected, never replaced.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

LEGACY_NAMESPACE = uuid.UUID("6f1d7a52-3c1e-5b8e-9a57-2f0c1b4d8e90")
EPOCH_MS_THRESHOLD = 100_000_000_000


def legacy_uuid(value: str) -> uuid.UUID:
    """The UUID a legacy id maps to: itself when it is one, else its uuid5."""
    try:
        return uuid.UUID(value)
    except (ValueError, AttributeError, TypeError):
        return uuid.uuid5(LEGACY_NAMESPACE, value)


def is_uuid_text(value: str) -> bool:
    try:
        return str(uuid.UUID(value)) == value.lower()
    except (ValueError, AttributeError, TypeError):
        return False


def parse_timestamp(value: str | int | float) -> datetime:
    """Parse a legacy timestamp to an aware UTC datetime; `ValueError` if it is not one."""
    if isinstance(value, bool):
        raise ValueError("not a timestamp")
    if isinstance(value, int | float):
        return _from_epoch(float(value))
    text = value.strip()
    if not text:
        raise ValueError("empty timestamp")
    if text.isdigit():
        return _from_epoch(float(text))
    if text.endswith(("Z", "z")):
        text = text[:-1] + "+00:00"
    parsed = datetime.fromisoformat(text)
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    return parsed.astimezone(UTC)


def _from_epoch(number: float) -> datetime:
    if number > EPOCH_MS_THRESHOLD:
        number /= 1000.0
    return datetime.fromtimestamp(number, UTC)
