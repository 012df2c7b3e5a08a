"""shadow/experiment.py: off the caller's path, bounded, timed out, and never raising."""

from __future__ import annotations

import asyncio
import gc
import json
import random
import time
import uuid
import weakref
from collections.abc import AsyncIterator, Callable, Sequence
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry
from structlog.testing import capture_logs

import shadow.experiment
from metrics import Metrics
from proxy.models import SearchResult
from shadow import Reason, ShadowRunner, ShadowStore, fingerprint
from shadow.compare import Hit, rbo
from shadow.experiment import QUIET_WAIT_S
from shadow.recorder import Compared, SearchContext

A, B, C, X = (uuid.UUID(int=i + 1) for i in range(4))
USER = uuid.UUID(int=99)
SECRET_QUERY = "aiko's private search"


def hits(*ids: uuid.UUID, kind: str = "fts") -> list[SearchResult]:
    return [
        SearchResult(q, "q", "a", "q", 1.0 / (i + 1), kind)  # type: ignore[arg-type]
        for i, q in enumerate(ids)
    ]


class FakeShadow:
    """A shadow search: returns `results`, raises `exc`, or waits for `gate` first."""

    def __init__(
        self,
        results: Sequence[SearchResult] = (),
        *,
        exc: BaseException | None = None,
        delay: float = 0.0,
        gate: asyncio.Event | None = None,
    ) -> None:
        self.results = list(results)
        self.exc = exc
        self.delay = delay
        self.gate = gate
        self.calls = 0

    async def __call__(self) -> list[SearchResult]:
        self.calls += 1
        if self.gate is not None:
            await self.gate.wait()
        if self.delay:
            await asyncio.sleep(self.delay)
        if self.exc is not None:
            raise self.exc
        return self.results


def value(m: Metrics, name: str, **labels: str) -> float:
    v = m.registry.get_sample_value(name, labels)
    assert v is not None, (name, labels)
    return v


def outcome(m: Metrics, o: str) -> float:
    return value(m, "cutover_shadow_comparisons_total", outcome=o)


@pytest.fixture
def m() -> Metrics:
    return Metrics(CollectorRegistry())


@pytest.fixture
async def runner(m: Metrics) -> AsyncIterator[ShadowRunner]:
    r = ShadowRunner(m, sample_rate=1.0, timeout_s=2.0, max_concurrency=4, salt=b"test-salt")
    yield r
    await r.aclose(timeout_s=2.0)


def submit(r: ShadowRunner, primary: list[SearchResult], run: Any, query: str = "python list",
           limit: int = 20) -> bool:
    return r.submit(query, user_id=USER, limit=limit, primary_backend="sqlite",
                    primary_results=primary, run_shadow=run)


async def started() -> None:
    """Two turns of the loop: the first starts the tasks `submit` queued, the second runs them
    to their first wait."""
    await asyncio.sleep(0)
    await asyncio.sleep(0)


async def test_submit_returns_at_once_and_leaves_the_primary_results_alone(
    runner: ShadowRunner, m: Metrics
) -> None:
    gate = asyncio.Event()
    fake = FakeShadow(hits(A, B), gate=gate)
    primary = hits(A, B)
    before = list(primary)
    start = time.perf_counter()
    assert submit(runner, primary, fake) is True
    assert time.perf_counter() - start < 0.05
    assert primary == before
    await started()
    assert runner.in_flight == 1 and fake.calls == 1
    assert value(m, "cutover_shadow_inflight") == 1
    gate.set()
    assert await runner.drain(2.0) == 0
    assert outcome(m, "match") == 1
    assert runner.in_flight == 0 and value(m, "cutover_shadow_inflight") == 0
    assert value(m, "cutover_search_duration_seconds_count", backend="postgres",
                 role="shadow") == 1


async def test_primary_ids_are_frozen_when_submitted(runner: ShadowRunner, m: Metrics) -> None:
    gate = asyncio.Event()
    primary = hits(A, B, C)
    submit(runner, primary, FakeShadow(hits(A, B, C), gate=gate))
    primary.reverse()  # the caller reuses its list after we returned
    primary.clear()
    gate.set()
    await runner.drain(2.0)
    assert outcome(m, "match") == 1 and outcome(m, "mismatch") == 0


@pytest.mark.slow
async def test_the_shadow_task_starts_after_the_callers_search_returned(
    runner: ShadowRunner, m: Metrics
) -> None:
    before = asyncio.all_tasks()
    fake = FakeShadow(hits(A))
    assert submit(runner, hits(A), fake) is True
    assert asyncio.all_tasks() == before and runner.in_flight == 1  # counted, not started
    assert await runner.drain(2.0) == 0  # a drain in the same turn waits for it too
    assert fake.calls == 1 and outcome(m, "match") == 1 and runner.in_flight == 0


async def test_not_sampled_searches_are_skipped_without_running_the_shadow(m: Metrics) -> None:
    r = ShadowRunner(m, sample_rate=0.0, timeout_s=1.0)
    fake = FakeShadow(hits(A))
    assert not any(submit(r, hits(A), fake) for _ in range(5))
    await r.aclose()
    assert fake.calls == 0
    assert outcome(m, "skipped") == 5


async def test_sampling_follows_the_rate_with_the_given_rng(m: Metrics) -> None:
    r = ShadowRunner(m, sample_rate=0.3, timeout_s=1.0, max_concurrency=1000,
                     rng=random.Random(7))
    fake = FakeShadow(hits(A))
    started = sum(submit(r, hits(A), fake) for _ in range(200))
    await r.drain(5.0)
    await r.aclose()
    replay = random.Random(7)
    assert started == sum(replay.random() < 0.3 for _ in range(200))
    assert 30 <= started <= 90
    assert fake.calls == started
    assert outcome(m, "match") == started and outcome(m, "skipped") == 200 - started


async def test_a_slow_shadow_times_out_and_is_counted(m: Metrics) -> None:
    r = ShadowRunner(m, sample_rate=1.0, timeout_s=0.05, salt=b"s")
    with capture_logs() as logs:
        submit(r, hits(A), FakeShadow(hits(A), delay=10.0))
        await r.drain(2.0)
    await r.aclose()
    assert outcome(m, "timeout") == 1
    assert value(m, "cutover_shadow_discrepancies_total", reason="shadow_timeout") == 1
    shadow_s = value(m, "cutover_search_duration_seconds_sum", backend="postgres", role="shadow")
    assert 0.04 <= shadow_s < 1.0
    failed = [e for e in logs if e["event"] == "shadow.failed"]
    assert len(failed) == 1 and failed[0]["outcome"] == "timeout"


async def test_a_shadow_exception_is_an_error_comparison_never_the_callers(
    runner: ShadowRunner, m: Metrics
) -> None:
    with capture_logs() as logs:
        ok = submit(runner, hits(A), FakeShadow(exc=RuntimeError(f"syntax near {SECRET_QUERY}")),
                    query=SECRET_QUERY)
        await runner.drain(2.0)
    assert ok is True
    assert outcome(m, "error") == 1
    assert value(m, "cutover_shadow_discrepancies_total", reason="shadow_error") == 1
    [event] = [e for e in logs if e["event"] == "shadow.failed"]
    assert event["error"] == "RuntimeError"
    # the exception's message may quote the query: it is not logged
    assert "private" not in json.dumps(logs, default=str)


async def test_a_drivers_own_timeout_error_is_an_error_not_a_timeout(
    runner: ShadowRunner, m: Metrics
) -> None:
    submit(runner, hits(A), FakeShadow(exc=TimeoutError()))
    await runner.drain(2.0)
    assert outcome(m, "error") == 1 and outcome(m, "timeout") == 0


async def test_a_failing_comparison_is_logged_and_counted_not_raised(
    runner: ShadowRunner, m: Metrics, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(*args: object) -> None:
        raise ZeroDivisionError("bug in compare")

    monkeypatch.setattr(shadow.experiment, "classify", broken)
    with capture_logs() as logs:
        assert submit(runner, hits(A), FakeShadow(hits(B))) is True
        await runner.drain(2.0)
    assert value(m, "cutover_shadow_internal_errors_total", stage="compare") == 1
    assert [e["stage"] for e in logs if e["event"] == "shadow.internal_error"] == ["compare"]
    assert runner.in_flight == 0


class BrokenPublishMetrics(Metrics):
    def observe_comparison(self, *args: Any, **kwargs: Any) -> None:
        raise RuntimeError("metrics backend broke")


class BrokenLogger:
    def warning(self, *args: Any, **kwargs: Any) -> None:
        raise RuntimeError("log sink broke")

    def exception(self, *args: Any, **kwargs: Any) -> None:
        raise RuntimeError("log sink broke again")


async def test_publishing_failures_never_reach_the_caller(tmp_path: Path) -> None:
    m = BrokenPublishMetrics(CollectorRegistry())
    store = ShadowStore(tmp_path / "shadow.db")
    r = ShadowRunner(m, sample_rate=1.0, timeout_s=1.0, logger=BrokenLogger(), store=store)
    assert submit(r, hits(A, B), FakeShadow(hits(X))) is True
    await r.drain(2.0)
    await r.aclose()
    assert value(m, "cutover_shadow_internal_errors_total", stage="publish") == 2  # metric, log
    assert store.counts() == (1, 1)  # what did not fail still happened
    store.close()


class BrokenStore(ShadowStore):
    def add(self, records: Any) -> int:
        raise OSError("disk full")


async def test_store_failures_are_counted_and_the_comparison_still_published(
    m: Metrics, tmp_path: Path
) -> None:
    store = BrokenStore(tmp_path / "shadow.db")
    r = ShadowRunner(m, sample_rate=1.0, timeout_s=1.0, store=store)
    with capture_logs() as logs:
        submit(r, hits(A), FakeShadow(hits(A)))
        await r.drain(2.0)
    await r.aclose()
    store.close()
    assert outcome(m, "match") == 1
    assert value(m, "cutover_shadow_internal_errors_total", stage="store") == 1
    assert any(e.get("stage") == "store" for e in logs)


async def test_pending_rows_explain_a_difference_as_stale_mirror(m: Metrics) -> None:
    async def pending() -> set[uuid.UUID]:
        return {C}

    r = ShadowRunner(m, sample_rate=1.0, timeout_s=1.0, pending_rows=pending)
    submit(r, hits(A, C), FakeShadow(hits(A)))
    await r.drain(2.0)
    await r.aclose()
    assert value(m, "cutover_shadow_discrepancies_total", reason="stale_mirror") == 1


async def test_rank_agreement_records_a_typo_guess_by_its_full_text_matches(
        runner: ShadowRunner, m: Metrics) -> None:
    """FTS5 found nothing for a typo, PostgreSQL guessed: a `fuzzy_only` difference, whose
    full-text matches (none on either side) agree; a real difference in order still counts."""
    submit(runner, [], FakeShadow(hits(A, B, kind="fuzzy")), query="pyhton")
    submit(runner, hits(A, B), FakeShadow(hits(B, A)))
    assert await runner.drain(2.0) == 0
    assert value(m, "cutover_shadow_discrepancies_total", reason="fuzzy_only") == 1
    assert value(m, "cutover_shadow_rank_agreement_count") == 2
    assert value(m, "cutover_shadow_rank_agreement_sum") == pytest.approx(1.0 + rbo((A, B), (B, A)))


async def test_a_failing_pending_rows_source_costs_only_the_explanation(m: Metrics) -> None:
    def pending() -> set[uuid.UUID]:
        raise ConnectionError("outbox unreachable")

    r = ShadowRunner(m, sample_rate=1.0, timeout_s=1.0, pending_rows=pending)
    submit(r, hits(A, C), FakeShadow(hits(A)), query="python dict")
    await r.drain(2.0)
    await r.aclose()
    assert value(m, "cutover_shadow_internal_errors_total", stage="pending") == 2  # before, after
    assert value(m, "cutover_shadow_discrepancies_total", reason="unexplained") == 1


async def test_the_concurrency_bound_sheds_and_counts(m: Metrics) -> None:
    r = ShadowRunner(m, sample_rate=1.0, timeout_s=5.0, max_concurrency=2)
    gate = asyncio.Event()
    fake = FakeShadow(hits(A), gate=gate)
    queued = [submit(r, hits(A), fake) for _ in range(5)]
    assert queued == [True, True, False, False, False]
    assert r.in_flight == 2
    await started()  # the gauge is set as the tasks start, off the caller's path
    assert value(m, "cutover_shadow_inflight") == 2
    assert outcome(m, "skipped") == 3 and value(m, "cutover_shadow_shed_total") == 3
    gate.set()
    await r.drain(2.0)
    assert submit(r, hits(A), fake) is True  # room again once the first two finished
    await r.aclose()
    assert outcome(m, "match") == 3


async def test_tasks_survive_garbage_collection(m: Metrics) -> None:
    """The runner holds strong references: the loop keeps only weak ones to its tasks."""
    r = ShadowRunner(m, sample_rate=1.0, timeout_s=60.0)

    async def orphaned() -> list[SearchResult]:
        # a future nobody else references: only a strong reference keeps this task alive
        await asyncio.get_running_loop().create_future()
        return []

    before = asyncio.all_tasks()
    submit(r, hits(A), orphaned)
    await asyncio.sleep(0)  # the task starts at the loop's next turn
    [task] = asyncio.all_tasks() - before
    ref = weakref.ref(task)
    del task, before
    await asyncio.sleep(0)
    gc.collect()
    assert ref() is not None
    await r.aclose(timeout_s=0.05)
    assert r.in_flight == 0


async def test_aclose_cancels_what_does_not_finish_in_time_and_refuses_new_work(
    m: Metrics,
) -> None:
    r = ShadowRunner(m, sample_rate=1.0, timeout_s=60.0)
    submit(r, hits(A), FakeShadow(gate=asyncio.Event()))  # never released
    await asyncio.sleep(0)
    assert await r.drain(0.05) == 1
    start = time.perf_counter()
    await r.aclose(timeout_s=0.05)
    assert time.perf_counter() - start < 1.0
    assert r.in_flight == 0 and r.closed
    assert submit(r, hits(A), FakeShadow(hits(A))) is False
    assert outcome(m, "skipped") == 1


def test_submit_outside_an_event_loop_skips_instead_of_raising(m: Metrics) -> None:
    r = ShadowRunner(m, sample_rate=1.0, timeout_s=1.0)
    assert submit(r, hits(A), FakeShadow(hits(A))) is False
    assert outcome(m, "skipped") == 1 and r.in_flight == 0


async def test_one_mismatch_event_per_mismatch_with_fingerprint_not_text(
    runner: ShadowRunner, m: Metrics
) -> None:
    with capture_logs() as logs:
        submit(runner, hits(A, B), FakeShadow(hits(B, A)), query=SECRET_QUERY)
        submit(runner, hits(A, B), FakeShadow(hits(A, B)), query=SECRET_QUERY)
        await runner.drain(2.0)
    events = [e for e in logs if e["event"] == "shadow.mismatch"]
    assert len(events) == 1
    [event] = events
    assert event["reason"] == "order_only"
    assert event["fingerprint"] == runner.fingerprint(SECRET_QUERY)
    assert event["primary_ids"] == [str(A), str(B)] and event["shadow_ids"] == [str(B), str(A)]
    assert event["rbo"] == pytest.approx(0.9)
    assert "query" not in event and SECRET_QUERY not in json.dumps(logs, default=str)
    assert str(USER) not in json.dumps(logs, default=str)


async def test_query_text_is_logged_only_when_the_operator_opts_in(m: Metrics) -> None:
    r = ShadowRunner(m, sample_rate=1.0, timeout_s=1.0, log_query_text=True)
    with capture_logs() as logs:
        submit(r, hits(A), FakeShadow(hits(X)), query=SECRET_QUERY)
        await r.drain(2.0)
    await r.aclose()
    [event] = [e for e in logs if e["event"] == "shadow.mismatch"]
    assert event["query"] == SECRET_QUERY


def test_fingerprint_is_keyed_short_and_ignores_spacing_and_case() -> None:
    fp = fingerprint("JSON  dumps", b"salt-1")
    assert fp == fingerprint(" json dumps ", b"salt-1")
    assert fp != fingerprint("json dumps", b"salt-2")
    assert fp != fingerprint("json loads", b"salt-1")
    assert len(fp) == 16 and int(fp, 16) >= 0


async def test_comparisons_reach_the_store_with_what_replay_needs(
    m: Metrics, tmp_path: Path
) -> None:
    store = ShadowStore(tmp_path / "shadow.db")
    r = ShadowRunner(m, sample_rate=1.0, timeout_s=1.0, store=store)
    submit(r, hits(A, B), FakeShadow(hits(A, B)))
    submit(r, hits(A, B), FakeShadow(hits(A, X)), query="python  dict")
    submit(r, hits(A), FakeShadow(exc=ValueError("x")))
    await r.drain(2.0)
    await r.aclose()
    assert store.counts() == (3, 2)
    newest, older = store.recent_mismatches()
    assert newest.reason is Reason.SHADOW_ERROR
    assert older.reason is Reason.UNEXPLAINED
    assert older.query == "python  dict" and older.user_id == str(USER) and older.limit == 20
    assert (older.primary_ids, older.shadow_ids) == ((A, B), (A, X))
    assert (older.primary_backend, older.shadow_backend) == ("sqlite", "postgres")
    # fingerprints use the store's salt, so another process computes the same one
    assert older.fingerprint == fingerprint("python dict", store.salt)
    store.close()


class CountingStore(ShadowStore):
    """A real store that remembers the size of each batch it was asked to write."""

    def __init__(self, path: Path) -> None:
        super().__init__(path)
        self.batches: list[int] = []

    def add(self, records: Any) -> int:
        batch = list(records)
        self.batches.append(len(batch))
        return super().add(batch)


@pytest.mark.slow
async def test_comparisons_finishing_together_are_stored_in_one_batch(
    m: Metrics, tmp_path: Path
) -> None:
    store = CountingStore(tmp_path / "shadow.db")
    r = ShadowRunner(m, sample_rate=1.0, timeout_s=5.0, store=store, flush_delay_s=1.0)
    gates = [asyncio.Event() for _ in range(6)]
    for i, gate in enumerate(gates):
        submit(r, hits(A), FakeShadow(hits(A if i else X), gate=gate))
    for gate in gates:  # one finishes (and is published) at a time, within the delay
        gate.set()
        for _ in range(5):
            await asyncio.sleep(0)
    assert outcome(m, "match") == 5 and store.batches == []
    assert await r.drain(5.0) == 0  # drain waits for the delayed flush too
    assert store.batches == [6]
    assert store.counts() == (6, 1)
    await r.aclose()
    store.close()


async def test_query_text_is_not_stored_when_told_not_to(m: Metrics, tmp_path: Path) -> None:
    store = ShadowStore(tmp_path / "shadow.db")
    r = ShadowRunner(m, sample_rate=1.0, timeout_s=1.0, store=store, store_query_text=False)
    submit(r, hits(A), FakeShadow(hits(X)))
    await r.drain(2.0)
    await r.aclose()
    [record] = store.recent_mismatches()
    assert record.query is None
    store.close()


def test_invalid_settings_are_refused(m: Metrics) -> None:
    for kwargs in ({"sample_rate": 1.5, "timeout_s": 1.0}, {"sample_rate": 0.5, "timeout_s": 0},
                   {"sample_rate": 0.5, "timeout_s": 1.0, "max_concurrency": 0}):
        with pytest.raises(ValueError):
            ShadowRunner(m, **kwargs)  # type: ignore[arg-type]



async def test_a_finished_shadow_is_compared_once_no_primary_search_runs(
    runner: ShadowRunner, m: Metrics
) -> None:
    runner.primary_started()  # a primary search is running, e.g. the next caller's
    assert submit(runner, hits(A), FakeShadow(hits(A)))
    await asyncio.sleep(0.02)  # the shadow has answered, well within QUIET_WAIT_S
    assert outcome(m, "match") == 0  # it waits: comparing would take the primary's lock
    runner.primary_finished()
    assert await runner.drain(2.0) == 0
    assert outcome(m, "match") == 1


async def test_a_search_that_arrives_with_a_shadows_answer_runs_before_its_comparison(
    runner: ShadowRunner, m: Metrics
) -> None:
    """An arrival is a callback that starts the search's task (as a request from the network
    would); queued before the comparison resumes, its search is running by the time the
    comparison would begin, so the comparison waits for it."""
    answer = asyncio.get_running_loop().create_future()

    async def shadow() -> list[SearchResult]:
        return await answer  # type: ignore[no-any-return]

    assert submit(runner, hits(A), shadow)
    await started()
    searching = asyncio.Event()

    async def primary_search() -> None:
        runner.primary_started()
        searching.set()
        await asyncio.sleep(0.05)
        runner.primary_finished()

    tasks: list[asyncio.Task[None]] = []
    answer.set_result(hits(A))  # the comparison's task is ready now ...
    asyncio.get_running_loop().call_soon(  # ... and a search arrives right behind it
        lambda: tasks.append(asyncio.get_running_loop().create_task(primary_search())))
    await searching.wait()
    await asyncio.sleep(0.01)
    assert outcome(m, "match") == 0  # waiting for the search that arrived
    assert await runner.drain(2.0) == 0
    assert outcome(m, "match") == 1
    await asyncio.gather(*tasks)


async def test_primary_searches_that_never_pause_delay_a_comparison_by_a_bound_only(
    runner: ShadowRunner, m: Metrics
) -> None:
    runner.primary_started()
    try:
        started = time.perf_counter()
        assert submit(runner, hits(A), FakeShadow(hits(A)))
        assert await runner.drain(2.0) == 0
        assert outcome(m, "match") == 1
        assert time.perf_counter() - started < QUIET_WAIT_S + 1.0
    finally:
        runner.primary_finished()


# -- a remote comparer (the worker's child compares and records; this process counts) ---------

class FakeRemote:
    """Answers `send_compare` with `answer` (or `exc`) after `delay`, or raises `refuse` at once."""

    def __init__(self, answer: Compared | None = None, *, exc: BaseException | None = None,
                 delay: float = 0.0, refuse: BaseException | None = None) -> None:
        self.answer, self.exc, self.delay, self.refuse = answer, exc, delay, refuse
        self.calls: list[tuple[SearchContext, tuple[Hit, ...], frozenset[uuid.UUID], float]] = []

    def send_compare(self, ctx: SearchContext, primary: tuple[Hit, ...],
                     pending: frozenset[uuid.UUID], *, timeout_s: float,
                     done: Callable[[Compared | BaseException | None], None]) -> None:
        self.calls.append((ctx, primary, pending, timeout_s))
        if self.refuse is not None:
            raise self.refuse
        asyncio.get_running_loop().call_later(
            self.delay, done, self.exc if self.exc is not None else self.answer)


async def test_a_remote_comparison_is_counted_here_and_recorded_there(
    m: Metrics, tmp_path: Path
) -> None:
    """The caller's process only observes the figures; the log line and the store row are the
    remote side's. The runner's own `run_shadow` is never needed."""
    remote = FakeRemote(Compared("mismatch", "fuzzy_only", 0.0, 1.0, False, 0.004))
    with ShadowStore(tmp_path / "s.db") as store, capture_logs() as logs:
        runner = ShadowRunner(m, sample_rate=1.0, timeout_s=0.5, store=store,
                              pending_rows=lambda: frozenset({X}), remote=remote)
        assert runner.submit("jsno", user_id=USER, limit=5, primary_backend="sqlite",
                             primary_results=hits(A, B))
        await runner.aclose()
        assert store.counts() == (0, 0)
    [(ctx, primary, pending, timeout_s)] = remote.calls
    assert ctx == SearchContext("jsno", str(USER), 5, "sqlite", "postgres")
    assert [h.question_id for h in primary] == [A, B] and pending == {X} and timeout_s == 0.5
    assert outcome(m, "mismatch") == 1
    assert value(m, "cutover_shadow_discrepancies_total", reason="fuzzy_only") == 1
    assert value(m, "cutover_shadow_rank_agreement_count") == 1
    assert value(m, "cutover_shadow_rank_agreement_sum") == 1.0
    assert value(m, "cutover_search_duration_seconds_sum", backend="postgres",
                 role="shadow") == pytest.approx(0.004)
    assert [e for e in logs if e["event"].startswith("shadow.")] == []


@pytest.mark.slow
@pytest.mark.parametrize("failure", ["raises", "refuses", "silent", "late"])
async def test_a_remote_comparison_that_records_nothing_is_recorded_here_once(
    m: Metrics, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, failure: str
) -> None:
    """The child gone (raises), no request taken (refuses: a busy worker raises at once), never
    answering (silent: the runner gives up at its timeout plus REMOTE_GRACE_S, and ignores the
    answer that comes after) or answering too late to record (TimeoutError): this process
    records the error or timeout, once."""
    monkeypatch.setattr(shadow.experiment, "REMOTE_GRACE_S", 0.1)
    remote = {
        "raises": FakeRemote(exc=ConnectionResetError("the child died")),
        "refuses": FakeRemote(refuse=ConnectionResetError("the child died")),
        "silent": FakeRemote(Compared("match", None, 1.0, 1.0, True, 0.001), delay=0.5),
        "late": FakeRemote(exc=TimeoutError("answered past its deadline")),
    }[failure]
    with ShadowStore(tmp_path / "s.db") as store, capture_logs() as logs:
        runner = ShadowRunner(m, sample_rate=1.0, timeout_s=0.1, store=store, remote=remote)
        assert runner.submit("json", user_id=USER, limit=5, primary_backend="sqlite",
                             primary_results=hits(A))
        assert await runner.drain(3.0) == 0
        await asyncio.sleep(0.6)  # the silent one's answer comes, after the give-up
        await runner.aclose()
        [mismatch] = store.recent_mismatches(10)
    failed = failure in ("raises", "refuses")
    expected = "error" if failed else "timeout"
    assert outcome(m, expected) == 1 and outcome(m, "match") == 0
    assert mismatch.outcome.value == expected and mismatch.primary_ids == (A,)
    assert mismatch.detail == ("ConnectionResetError" if failed else "")
    assert runner.in_flight == 0
    assert [e["event"] for e in logs] == ["shadow.failed"]


async def test_closing_abandons_what_the_remote_comparer_still_has(
    m: Metrics, tmp_path: Path
) -> None:
    """Past the close's wait, a shadow the remote side has not answered is dropped: nothing
    counted or recorded here, none left in flight, and its answer, when it comes, ignored."""
    answer = Compared("match", None, 1.0, 1.0, True, 0.001)
    with ShadowStore(tmp_path / "s.db") as store:
        runner = ShadowRunner(m, sample_rate=1.0, timeout_s=5.0, store=store,
                              remote=FakeRemote(answer, delay=0.3))
        assert runner.submit("json", user_id=USER, limit=5, primary_backend="sqlite",
                             primary_results=hits(A))
        await runner.aclose(timeout_s=0.05)
        assert runner.in_flight == 0
        await asyncio.sleep(0.4)  # the answer comes
        assert store.counts() == (0, 0)
    assert sum(outcome(m, o) for o in ("match", "mismatch", "error", "timeout")) == 0
    assert value(m, "cutover_shadow_inflight") == 0


async def test_a_comparison_that_failed_remotely_is_neither_counted_nor_recorded_here(
    m: Metrics, tmp_path: Path
) -> None:
    """None: comparing failed on the remote side, which counted it (as the inline runner counts
    a failure of `classify`); there is no outcome to count."""
    with ShadowStore(tmp_path / "s.db") as store:
        runner = ShadowRunner(m, sample_rate=1.0, timeout_s=0.5, store=store,
                              remote=FakeRemote(None))
        assert runner.submit("json", user_id=USER, limit=5, primary_backend="sqlite",
                             primary_results=hits(A))
        await runner.aclose()
        assert store.counts() == (0, 0)
    assert sum(outcome(m, o) for o in ("match", "mismatch", "error", "timeout")) == 0
    assert runner.in_flight == 0
