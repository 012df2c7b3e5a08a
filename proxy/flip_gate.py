"""The flip's gate: whether the primary may move to a store now. One answer, used by the
library (`Repository.set_read_primary`), `cutover read-primary` and the service's admin
endpoint alike.

Every flip, the library's included, refuses (`FlipRefused`) while dead letters for the target
wait or while its pending mirror writes cannot be replayed in time (the target would take over
without their rows; `dead_letter_refusal`). An operator's flip (the CLI, the service, through
`Repository.flip_refusal`) is also refused while mirror writes to the target have waited
longer than `STUCK_AFTER_S` (a backlog, not traffic) and, to PostgreSQL, while the go/no-go
verdict says no. `force` skips the gate (an emergency rollback).
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from typing import TypeVar

from proxy.stores.base import OutboxStats
from shadow.verdict import OutboxFigures, Verdict

K = TypeVar("K", bound=str)

#: a mirror write pending longer than this is a backlog, not traffic: under live traffic a few
#: writes are always in flight, what blocks a flip is writes waiting longer than a replay pass
STUCK_AFTER_S = 5.0


def outbox_figures(stats: Mapping[K, OutboxStats],
                   now: datetime | None = None) -> dict[K, OutboxFigures]:
    """The outbox stats of each target store as the verdict's figures."""
    now = now or datetime.now(UTC)
    return {
        target: OutboxFigures(
            pending=s.pending, dead_letters=s.dead,
            oldest_age_s=(now - s.oldest_created_at).total_seconds()
            if s.oldest_created_at else 0.0)
        for target, s in stats.items()
    }


def dead_letter_refusal(count: int, target: str, *, override: str = "force") -> str | None:
    """Why a flip to `target` is refused while `count` dead letters wait for it (None: none)."""
    if not count:
        return None
    letters = "dead letter" if count == 1 else "dead letters"
    return f"{count} {letters} for {target}; run `cutover reconcile --retry-dead`, or {override}"


def refusal(target: str, primary: str, outbox: Mapping[str, OutboxFigures],
            verdict: Verdict | None, *, override: str = "force") -> str | None:
    """Why an operator's flip from `primary` to `target` is refused now, or None when it may go
    (`verdict` None: no shadow store, nothing to judge by)."""
    if target == primary:
        return None
    figures = outbox.get(target, OutboxFigures())
    dead = dead_letter_refusal(figures.dead_letters, target, override=override)
    if dead is not None:
        return dead
    if figures.pending and figures.oldest_age_s > STUCK_AFTER_S:
        return (f"{figures.pending} mirror writes to {target} are pending (oldest "
                f"{figures.oldest_age_s:.0f} s); run `cutover reconcile`, or {override}")
    if target == "postgres" and verdict is not None and not verdict.go:
        return f"the go/no-go verdict says no-go: {'; '.join(verdict.reasons)} ({override})"
    return None
