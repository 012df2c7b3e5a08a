"""Re-run a stored mismatch against both stores (`cutover shadow replay`)."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Awaitable, Callable, Sequence

from config.settings import other_backend
from shadow.compare import CompareContext, Comparison, RankedHit, classify
from shadow.store import MismatchRecord

#: (backend, query, user_id, limit) -> that store's results
Search = Callable[[str, str, str, int], Awaitable[Sequence[RankedHit]]]


async def replay_mismatch(
    record: MismatchRecord,
    search: Search,
    *,
    pending: frozenset[uuid.UUID] = frozenset(),
    primary_backend: str | None = None,
) -> Comparison:
    """Search both stores again with the stored query and compare as the runner would.

    `primary_backend` defaults to the one recorded with the mismatch. Raises `ValueError` when
    the store was told not to keep query text; a store's exception propagates (the CLI reports
    it), unlike in the runner.
    """
    if record.query is None:
        raise ValueError(f"mismatch {record.id} has no stored query text to replay")
    primary = primary_backend or record.primary_backend
    shadow = other_backend(primary)
    a, b = await asyncio.gather(
        search(primary, record.query, record.user_id, record.limit),
        search(shadow, record.query, record.user_id, record.limit),
    )
    return classify(a, b, CompareContext(record.query, record.limit, pending))
