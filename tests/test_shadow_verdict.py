"""shadow/verdict.py: go only when every documented threshold holds."""

from __future__ import annotations

import json
import time
import uuid
from dataclasses import replace
from pathlib import Path
from types import MappingProxyType

import pytest

from shadow import (
    Comparison,
    ComparisonRecord,
    MirrorFigures,
    OutboxFigures,
    Outcome,
    ShadowStore,
    Thresholds,
    WindowSummary,
    decide,
    evaluate,
)
from shadow.compare import CompareContext, Hit, classify

CLEAN = {"sqlite": OutboxFigures(), "postgres": OutboxFigures()}


def summary(total: int = 500, *, rbo: float = 0.97, unexplained: int = 0, errors: int = 0,
            timeouts: int = 0) -> WindowSummary:
    mismatches = 40
    return WindowSummary(
        since_ts=0.0, total=total, matches=total - mismatches - errors - timeouts,
        mismatches=mismatches, errors=errors, timeouts=timeouts, mean_jaccard=0.95,
        mean_rbo=rbo, top1_rate=0.98,
        by_reason=MappingProxyType({"order_only": mismatches - unexplained,
                                    "unexplained": unexplained}),
    )


def failed_checks(v: object) -> list[str]:
    return [c.name for c in v.checks if not c.passed]  # type: ignore[attr-defined]


def test_a_healthy_window_is_a_go() -> None:
    v = decide(summary(), CLEAN, MirrorFigures(writes=10_000, failures=3))
    assert v.go and v.reasons == ()
    assert v.figures["comparisons"] == 500 and v.figures["mean_rbo"] == 0.97
    assert v.figures["reason.order_only"] == 40
    assert {c.name for c in v.checks} == {
        "comparisons", "mean_rbo", "unexplained_share", "failure_share", "dead_letters",
        "outbox_oldest_age_s", "mirror_failure_rate",
    }
    json.dumps(v.to_json())  # the CLI prints it


@pytest.mark.parametrize(
    ("window", "outbox", "mirror", "failing"),
    [
        (summary(total=199), CLEAN, None, "comparisons"),
        (summary(rbo=0.899), CLEAN, None, "mean_rbo"),
        (summary(unexplained=6), CLEAN, None, "unexplained_share"),  # 6/500 = 1.2 %
        (summary(errors=3, timeouts=3), CLEAN, None, "failure_share"),
        (summary(), {"postgres": OutboxFigures(dead_letters=1)}, None, "dead_letters"),
        (summary(), {"postgres": OutboxFigures(pending=4, oldest_age_s=61.0)}, None,
         "outbox_oldest_age_s"),
        (summary(), CLEAN, MirrorFigures(writes=1000, failures=11), "mirror_failure_rate"),
    ],
)
def test_each_threshold_alone_turns_the_verdict_to_no_go(
    window: WindowSummary, outbox: dict[str, OutboxFigures], mirror: MirrorFigures | None,
    failing: str,
) -> None:
    v = decide(window, outbox, mirror)
    assert not v.go
    assert failed_checks(v) == [failing]
    assert len(v.reasons) == 1


def test_thresholds_are_inclusive_where_documented() -> None:
    at_edge = summary(total=200, rbo=0.9, unexplained=2, errors=1, timeouts=1)  # 1 %, 1 %
    assert decide(at_edge, CLEAN, MirrorFigures(writes=100, failures=1)).go
    assert not decide(summary(), {"sqlite": OutboxFigures(pending=1, oldest_age_s=60.0)}).go


def test_an_old_age_without_pending_writes_does_not_count() -> None:
    assert decide(summary(), {"postgres": OutboxFigures(pending=0, oldest_age_s=500.0)}).go


def test_an_empty_window_is_a_no_go_with_readable_reasons() -> None:
    v = decide(WindowSummary(since_ts=0.0), CLEAN)
    assert not v.go
    assert failed_checks(v) == ["comparisons", "mean_rbo"]
    assert "0 shadow comparisons" in v.reasons[0]
    assert "no completed comparison" in v.reasons[1]


def test_custom_thresholds() -> None:
    lax = replace(Thresholds(), min_comparisons=10, min_mean_rbo=0.5)
    assert decide(summary(total=20, rbo=0.6), CLEAN, thresholds=lax).go


def test_evaluate_reads_the_window_from_the_store(tmp_path: Path) -> None:
    def rec(c: Comparison, ts: float) -> ComparisonRecord:
        return ComparisonRecord(ts=ts, comparison=c, fingerprint="f", query="q", user_id="u",
                                limit=20, primary_backend="sqlite", shadow_backend="postgres")

    a, b = uuid.UUID(int=1), uuid.UUID(int=2)
    same = classify([Hit(a, "fts")], [Hit(a, "fts")], CompareContext("q", 20))
    swapped = classify([Hit(a, "fts"), Hit(b, "fts")], [Hit(b, "fts"), Hit(a, "fts")],
                      CompareContext("q", 20))
    with ShadowStore(tmp_path / "shadow.db") as store:
        store.add([rec(same, 1000.0 + i) for i in range(199)])
        store.add([rec(Comparison.failed((a,), Outcome.TIMEOUT), 10.0)])  # long ago
        assert not evaluate(store, CLEAN, now=1500.0).go  # 199 in the window
        store.add([rec(swapped, 1300.0)])
        v = evaluate(store, CLEAN, now=1500.0)
    assert v.go, v.reasons
    assert v.figures["comparisons"] == 200 and v.figures["timeouts"] == 0
    assert v.figures["mean_rbo"] == pytest.approx((199 + 0.9) / 200)


async def test_refresh_ready_publishes_the_verdict_as_cutover_ready(tmp_path: Path) -> None:
    from prometheus_client import CollectorRegistry

    from metrics import Metrics
    from shadow import refresh_ready

    m = Metrics(CollectorRegistry())
    a = uuid.UUID(int=1)
    same = classify([Hit(a, "fts")], [Hit(a, "fts")], CompareContext("q", 20))
    lax = replace(Thresholds(), min_comparisons=3)
    with ShadowStore(tmp_path / "shadow.db") as store:
        m.set_ready(True)
        v = await refresh_ready(m, store, CLEAN, thresholds=lax)
        assert not v.go and m.registry.get_sample_value("cutover_ready") == 0
        now = time.time()
        store.add([
            ComparisonRecord(ts=now, comparison=same, fingerprint="f", query="q", user_id="u",
                             limit=20, primary_backend="sqlite", shadow_backend="postgres")
            for _ in range(3)
        ])
        v = await refresh_ready(m, store, CLEAN, thresholds=lax)
    assert v.go and m.registry.get_sample_value("cutover_ready") == 1
