"""When a mirror write stops being retried: the one dead-letter policy.

The repository's replay loop and `cutover reconcile` both ask `is_dead` after a failed replay of
an outbox entry. A dead letter stays in the outbox (dead=true): it is no longer replayed, the
flip to its target is refused while it is there (unless forced), `cutover verify` counts it as
a difference, and `cutover reconcile --retry-dead` puts it back in the queue.
"""

from __future__ import annotations

from datetime import UTC, datetime

from proxy.stores.base import ApplyResult, OutboxEntry

#: a mirror write refused for a lasting reason (a constraint only the mirror enforces) becomes a
#: dead letter once it has failed this many times
MAX_ATTEMPTS = 10
#: a mirror write whose parent row is missing on the mirror (the backfill may still be copying
#: it) is retried for this long, counted from when the primary wrote it
MISSING_PARENT_GRACE_S = 3600.0


def is_dead(entry: OutboxEntry, result: ApplyResult, *, now: datetime | None = None) -> bool:
    """Whether `entry`, whose replay just failed with `result`, is now a dead letter."""
    if result.permanent:
        return entry.attempts + 1 >= MAX_ATTEMPTS
    age = ((now or datetime.now(UTC)) - entry.created_at).total_seconds()
    return age > MISSING_PARENT_GRACE_S

