"""The go/no-go verdict for flipping the primary, over a recent window.

Inputs are plain figures: a `WindowSummary` of the shadow comparisons (from `ShadowStore`), the
outbox state of each store and, when the caller knows them, the mirror writes and failures of
the window. Every check below must pass for `go`; each failing check adds one line to `reasons`.

| check | default threshold |
|---|---|
| enough comparisons in the window (default 15 min, bounded by the store's cap) | >= 200 |
| mean rank-biased overlap of completed comparisons (their `agreement`, see below) | >= 0.90 |
| share of comparisons with reason `unexplained` | <= 1 % |
| share of comparisons that errored or timed out | <= 1 % |
| dead letters in any outbox | 0 |
| oldest pending mirror write, any store | < 60 s |
| mirror failures / mirror writes in the window (skipped when not given) | <= 1 % |

A comparison's `agreement` is its rank-biased overlap, except for `fuzzy_only`, where it is that
of the full-text matches alone (`shadow.compare`): a typo fallback's guesses, where FTS5 has
none, are PostgreSQL's by design and do not count against a flip.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from metrics import Metrics
from shadow.store import ShadowStore, WindowSummary

Figure = float | int | None


@dataclass(frozen=True, slots=True)
class Thresholds:
    """The documented go/no-go thresholds (see the module docstring)."""

    window_s: float = 900.0
    min_comparisons: int = 200
    min_mean_rbo: float = 0.90
    max_unexplained_share: float = 0.01
    max_failure_share: float = 0.01
    max_dead_letters: int = 0
    max_outbox_age_s: float = 60.0
    max_mirror_failure_rate: float = 0.01


DEFAULT_THRESHOLDS = Thresholds()


@dataclass(frozen=True, slots=True)
class OutboxFigures:
    """The outbox of the mirror writes waiting to reach one store."""

    pending: int = 0
    oldest_age_s: float = 0.0
    dead_letters: int = 0


@dataclass(frozen=True, slots=True)
class MirrorFigures:
    """Mirror writes attempted and failed during the window."""

    writes: int
    failures: int


@dataclass(frozen=True, slots=True)
class Check:
    """One line of the verdict: what was measured against what."""

    name: str
    passed: bool
    value: Figure
    threshold: Figure
    message: str


@dataclass(frozen=True, slots=True)
class Verdict:
    """`go` when every check passed; `reasons` are the failed checks' messages."""

    go: bool
    reasons: tuple[str, ...]
    figures: Mapping[str, Figure] = field(default_factory=lambda: MappingProxyType({}))
    checks: tuple[Check, ...] = ()

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready dict (for `cutover status --json` and the service)."""
        return {
            "go": self.go,
            "reasons": list(self.reasons),
            "figures": dict(self.figures),
            "checks": [
                {"name": c.name, "passed": c.passed, "value": c.value,
                 "threshold": c.threshold, "message": c.message}
                for c in self.checks
            ],
        }


def _share(part: int, whole: int) -> float:
    return part / whole if whole else 0.0


def decide(
    summary: WindowSummary,
    outbox: Mapping[str, OutboxFigures],
    mirror: MirrorFigures | None = None,
    thresholds: Thresholds = DEFAULT_THRESHOLDS,
) -> Verdict:
    """Judge the window against `thresholds`; pure, so the CLI and the service agree."""
    t = thresholds
    checks: list[Check] = []

    def check(name: str, passed: bool, value: Figure, threshold: Figure, message: str) -> None:
        checks.append(Check(name, passed, value, threshold, message))

    check(
        "comparisons", summary.total >= t.min_comparisons, summary.total, t.min_comparisons,
        f"{summary.total} shadow comparisons in the window, need at least {t.min_comparisons}",
    )
    mean_rbo = summary.mean_rbo
    check(
        "mean_rbo", mean_rbo is not None and mean_rbo >= t.min_mean_rbo, mean_rbo,
        t.min_mean_rbo,
        "no completed comparison in the window" if mean_rbo is None
        else f"mean rank-biased overlap {mean_rbo:.3f}, need at least {t.min_mean_rbo:.3f}",
    )
    unexplained = _share(summary.unexplained, summary.total)
    check(
        "unexplained_share", unexplained <= t.max_unexplained_share, unexplained,
        t.max_unexplained_share,
        f"{unexplained:.2%} of comparisons unexplained ({summary.unexplained}),"
        f" at most {t.max_unexplained_share:.2%} allowed",
    )
    failures = summary.errors + summary.timeouts
    failure_share = _share(failures, summary.total)
    check(
        "failure_share", failure_share <= t.max_failure_share, failure_share,
        t.max_failure_share,
        f"{failure_share:.2%} of shadow searches failed ({summary.errors} errors,"
        f" {summary.timeouts} timeouts), at most {t.max_failure_share:.2%} allowed",
    )
    dead = sum(o.dead_letters for o in outbox.values())
    check(
        "dead_letters", dead <= t.max_dead_letters, dead, t.max_dead_letters,
        f"{dead} dead-lettered mirror writes, at most {t.max_dead_letters} allowed",
    )
    oldest = max((o.oldest_age_s for o in outbox.values() if o.pending > 0), default=0.0)
    check(
        "outbox_oldest_age_s", oldest < t.max_outbox_age_s, oldest, t.max_outbox_age_s,
        f"oldest pending mirror write is {oldest:.0f} s old, must be under"
        f" {t.max_outbox_age_s:.0f} s",
    )
    mirror_rate: float | None = None
    if mirror is not None:
        mirror_rate = _share(mirror.failures, mirror.writes)
        check(
            "mirror_failure_rate", mirror_rate <= t.max_mirror_failure_rate, mirror_rate,
            t.max_mirror_failure_rate,
            f"{mirror_rate:.2%} of mirror writes failed ({mirror.failures}/{mirror.writes}),"
            f" at most {t.max_mirror_failure_rate:.2%} allowed",
        )

    figures: dict[str, Figure] = {
        "window_s": t.window_s,
        "comparisons": summary.total,
        "matches": summary.matches,
        "mismatches": summary.mismatches,
        "errors": summary.errors,
        "timeouts": summary.timeouts,
        "mean_jaccard": summary.mean_jaccard,
        "mean_rbo": mean_rbo,
        "top1_rate": summary.top1_rate,
        "unexplained_share": unexplained,
        "failure_share": failure_share,
        "dead_letters": dead,
        "outbox_pending": sum(o.pending for o in outbox.values()),
        "outbox_oldest_age_s": oldest,
        "mirror_failure_rate": mirror_rate,
    }
    figures.update({f"reason.{r}": n for r, n in sorted(summary.by_reason.items())})
    reasons = tuple(c.message for c in checks if not c.passed)
    return Verdict(
        go=not reasons, reasons=reasons, figures=MappingProxyType(figures), checks=tuple(checks)
    )


async def refresh_ready(
    metrics: Metrics,
    store: ShadowStore,
    outbox: Mapping[str, OutboxFigures],
    mirror: MirrorFigures | None = None,
    thresholds: Thresholds = DEFAULT_THRESHOLDS,
) -> Verdict:
    """Evaluate off the event loop and publish the result as `cutover_ready`."""
    verdict = await asyncio.to_thread(evaluate, store, outbox, mirror, thresholds)
    metrics.set_ready(verdict.go)
    return verdict


def evaluate(
    store: ShadowStore,
    outbox: Mapping[str, OutboxFigures],
    mirror: MirrorFigures | None = None,
    thresholds: Thresholds = DEFAULT_THRESHOLDS,
    now: float | None = None,
) -> Verdict:
    """Read the window from `store` and `decide` (blocking: use `asyncio.to_thread` in a loop)."""
    now = time.time() if now is None else now
    return decide(store.summary(window_s=thresholds.window_s, now=now), outbox, mirror, thresholds)
