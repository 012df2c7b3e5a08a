"""shadow/worker.py on real databases: the child answers what the stores answer, its death costs
shadow errors only (never the caller's search), it comes back, and closing leaves no process."""

from __future__ import annotations

import asyncio
import io
import json
import multiprocessing
import os
import pickle
import signal
import sqlite3
import sys
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import asyncpg
import pytest
import structlog
from prometheus_client import CollectorRegistry
from structlog.testing import capture_logs

import shadow.experiment
from config import Settings
from metrics import Metrics
from proxy import open_repository
from proxy.connect import SearchStores
from proxy.repository import Repository
from shadow import ShadowRunner, ShadowStore, snapshot
from shadow.compare import Hit
from shadow.recorder import Compared, SearchContext
from shadow.worker import (
    BATCH_DELAY_S,
    Recording,
    SearchWorker,
    WorkerSearchFailed,
    WorkerUnavailable,
    _configure_logging,
    portable_log_config,
)

pytestmark = pytest.mark.slow  # see pyproject.toml's markers

QUERIES = ["json", "json dumps", "jsno", "学習", "習と", "file python", "zebra", "serialize 学習"]


@pytest.fixture
def settings(sqlite_path: Path, pg_dsn: str) -> Settings:
    # a long shadow timeout: a child starting on a loaded machine must not turn into a timeout
    return Settings(sqlite_path=sqlite_path, postgres_dsn=pg_dsn, shadow_sample_rate=1.0,
                    shadow_timeout_ms=60_000, shadow_worker="process")


async def seed(repo: Repository) -> tuple[uuid.UUID, uuid.UUID]:
    """Questions for two users, mirrored and acknowledged (so no row is pending a mirror write,
    which would make a mismatch a stale mirror); returns their ids."""
    users = []
    for name in ("aiko", "bo"):
        user = await repo.create_user(name=name, email=f"{name}@example.com")
        book = await repo.create_study_book(user_id=user.id, title="notes")
        for question, answer in [
            ("What does json.dumps do?", "Serialize obj to a JSON formatted str."),
            ("How do I read a file in Python?", "open() it and call read()."),
            ("学習とは何ですか", "Learning: 学習 is the Japanese word."),
            ("What does json.loads do?", "Deserialize a str holding a JSON document."),
        ]:
            await repo.create_question(study_book_id=book.id, language="en", category="python",
                                       difficulty="easy", question=f"{question} ({name})",
                                       answer=answer)
        users.append(user.id)
    await repo.replay_once()  # acknowledges the inline mirror writes
    assert (await repo.outbox_stats())["postgres"].pending == 0  # and refreshes pending_rows
    assert repo.pending_rows() == frozenset()
    return users[0], users[1]


def worker_of(repo: Repository) -> SearchWorker:
    owner = repo.shadow.remote if repo.shadow is not None else None
    assert isinstance(owner, SearchWorker), "open_repository did not wire the worker"
    return owner


def outcomes(registry: CollectorRegistry) -> dict[str, float]:
    return {
        o: registry.get_sample_value("cutover_shadow_comparisons_total", {"outcome": o}) or 0.0
        for o in ("match", "mismatch", "error", "timeout")
    }


async def until(condition: Callable[[], bool], what: str) -> None:
    for _ in range(3000):
        if condition():
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"gave up waiting for {what}")


def gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


async def test_the_worker_answers_what_each_store_answers(settings: Settings) -> None:
    async with open_repository(settings, registry=CollectorRegistry()) as repo:
        aiko, bo = await seed(repo)
        worker = worker_of(repo)
        kinds: set[str] = set()
        for backend, store in repo.stores.items():
            for query in QUERIES:
                for user, limit in ((aiko, 20), (bo, 20), (aiko, 1)):
                    expected = snapshot(
                        await store.search(query, user, limit, highlights=False))
                    got = await worker.search(backend, query, user, limit)
                    assert got == expected, (backend, query, limit)
                    kinds |= {h.match_kind for h in got}
        assert {"fts", "fuzzy", "substring"} <= kinds, kinds  # every path was reached


async def test_a_killed_child_fails_its_shadow_never_the_callers_search(
    settings: Settings, tmp_path: Path
) -> None:
    registry = CollectorRegistry()
    with capture_logs() as logs:
        async with open_repository(settings, registry=registry,
                                   shadow_store_path=tmp_path / "shadow.db") as repo:
            aiko, _ = await seed(repo)
            assert repo.shadow is not None
            worker = worker_of(repo)
            expected = await repo.stores["sqlite"].search("json", aiko, 20)
            assert expected

            assert await repo.search_questions("json", user_id=aiko) == expected
            await repo.shadow.drain(60.0)
            assert outcomes(registry)["match"] == 1

            # a shadow request waits in a stopped child, which is then killed
            first = worker.pid
            assert first is not None
            os.kill(first, signal.SIGSTOP)
            try:
                assert await repo.search_questions("json", user_id=aiko) == expected
                await until(lambda: len(worker._waiting) == 1, "the request to be sent")
            finally:
                os.kill(first, signal.SIGKILL)
            await repo.shadow.drain(60.0)
            assert outcomes(registry) == {"match": 1, "mismatch": 0, "error": 1, "timeout": 0}

            # the next search starts a new child, whose shadow matches again
            assert await repo.search_questions("json", user_id=aiko) == expected
            await repo.shadow.drain(60.0)
            assert outcomes(registry) == {"match": 2, "mismatch": 0, "error": 1, "timeout": 0}
            second = worker.pid
            assert second is not None and second != first
            assert worker.restarts == 1
            assert gone(first)  # reaped when the new child started
    assert gone(second)
    died = [e for e in logs if e["event"] == "shadow_worker.died"]
    assert [(e["pid"], e["failed_requests"]) for e in died] == [(first, 1)]
    failed = [e for e in logs if e["event"] == "shadow.failed"]
    assert [e["error"] for e in failed] == ["WorkerUnavailable"]


async def test_an_idle_child_killed_is_replaced_on_the_next_request(
    sqlite_path: Path, pg_dsn: str, settings: Settings
) -> None:
    async with open_repository(settings, registry=CollectorRegistry()) as repo:
        aiko, _ = await seed(repo)
    async with SearchWorker(SearchStores(sqlite_path, pg_dsn)) as worker:
        first = worker.pid
        assert first is not None
        os.kill(first, signal.SIGKILL)
        await until(lambda: worker.pid is None, "the worker to notice")
        hits = await worker.search("postgres", "json", aiko, 20)
        assert len(hits) == 2 and worker.pid not in (None, first)


@pytest.mark.skipif(not hasattr(os, "SCHED_IDLE"), reason="Linux's idle scheduling class")
async def test_the_child_runs_at_idle_priority(sqlite_path: Path, pg_dsn: str,
                                               sqlite_store: Any) -> None:
    """The caller's process wins every core the two want at once (see `_child_main`)."""
    async with SearchWorker(SearchStores(sqlite_path, pg_dsn)) as worker:
        assert worker.pid is not None
        assert os.sched_getscheduler(worker.pid) == os.SCHED_IDLE
        assert os.sched_getscheduler(0) != os.SCHED_IDLE  # the caller's own is untouched


async def test_restarts_are_bounded(sqlite_path: Path, pg_dsn: str, sqlite_store: Any) -> None:
    with capture_logs() as logs:
        async with SearchWorker(SearchStores(sqlite_path, pg_dsn), max_restarts=2) as worker:
            for _ in range(2):
                pid = worker.pid
                assert pid is not None
                os.kill(pid, signal.SIGKILL)
                await until(lambda: worker.pid is None, "the worker to notice")
                await worker.search("sqlite", "json", uuid.uuid4(), 20)  # restarts the child
            os.kill(worker.pid or 0, signal.SIGKILL)
            await until(lambda: worker.pid is None, "the worker to notice")
            with pytest.raises(WorkerUnavailable, match="not restarted"):
                await worker.search("sqlite", "json", uuid.uuid4(), 20)
            with pytest.raises(WorkerUnavailable, match="not restarted"):  # logged once
                await worker.search("sqlite", "json", uuid.uuid4(), 20)
            assert worker.restarts == 2
    assert [e["event"] for e in logs].count("shadow_worker.restart_refused") == 1


async def test_a_store_error_in_the_child_is_a_search_failure(
    sqlite_path: Path, pg_server_dsn: str
) -> None:
    missing = pg_server_dsn.rsplit("/", 1)[0] + f"/cutover_missing_{uuid.uuid4().hex[:8]}"
    async with SearchWorker(SearchStores(sqlite_path, missing)) as worker:
        with pytest.raises(WorkerSearchFailed) as info:
            await worker.search("postgres", "json", uuid.uuid4(), 20)
        assert "Unavailable" in str(info.value) or "Error" in str(info.value)
        # the child survives its store's failure
        assert worker.pid is not None and worker.restarts == 0


@pytest.mark.parametrize("stopped", [False, True], ids=["answering", "stopped"])
async def test_close_leaves_no_child_process(
    sqlite_path: Path, pg_dsn: str, stopped: bool
) -> None:
    with capture_logs() as logs:
        worker = SearchWorker(SearchStores(sqlite_path, pg_dsn), close_timeout_s=1.0)
        await worker.start()
        pid = worker.pid
        assert pid is not None and not gone(pid)
        pending: asyncio.Task[Any] | None = None
        if stopped:  # a child that cannot answer the close request is killed
            os.kill(pid, signal.SIGSTOP)
            pending = asyncio.create_task(worker.search("sqlite", "x", uuid.uuid4(), 20))
            await until(lambda: len(worker._waiting) == 1, "the request to be sent")
        await worker.aclose()
        assert gone(pid)
        assert all(p.pid != pid for p in multiprocessing.active_children())
        if pending is not None:
            with pytest.raises(WorkerUnavailable, match="closed"):
                await pending
        with pytest.raises(WorkerUnavailable):
            await worker.search("sqlite", "x", uuid.uuid4(), 20)
    assert ("shadow_worker.killed" in [e["event"] for e in logs]) == stopped


async def _waiting_searches(conn: asyncpg.Connection) -> int:
    """Backends (the child's) waiting for the lock on questions."""
    return int(await conn.fetchval(
        "SELECT count(*) FROM pg_locks WHERE NOT granted AND relation = 'questions'::regclass"))


@pytest.mark.parametrize("concurrency", [1, 3])
async def test_the_child_runs_its_concurrency_of_searches_at_once(
    sqlite_path: Path, pg_dsn: str, settings: Settings, concurrency: int
) -> None:
    async with open_repository(settings, registry=CollectorRegistry()) as repo:
        aiko, _ = await seed(repo)
    locker = await asyncpg.connect(pg_dsn)
    try:
        async with SearchWorker(SearchStores(sqlite_path, pg_dsn),
                                concurrency=concurrency) as worker:
            tx = locker.transaction()
            await tx.start()
            await locker.execute("LOCK TABLE questions IN ACCESS EXCLUSIVE MODE")
            searches = [asyncio.ensure_future(worker.search("postgres", "json", aiko, 20))
                        for _ in range(4)]
            observer = await asyncpg.connect(pg_dsn)
            try:
                for _ in range(300):
                    if await _waiting_searches(observer) >= concurrency:
                        break
                    await asyncio.sleep(0.01)
                await asyncio.sleep(0.2)  # time for more to start, were they allowed to
                assert await _waiting_searches(observer) == concurrency
            finally:
                await observer.close()
            await tx.rollback()
            assert [len(h) for h in await asyncio.gather(*searches)] == [2, 2, 2, 2]
    finally:
        await locker.close()


async def test_the_child_stops_work_past_the_callers_deadline(
    sqlite_path: Path, pg_dsn: str, settings: Settings
) -> None:
    async with open_repository(settings, registry=CollectorRegistry()) as repo:
        aiko, _ = await seed(repo)
    locker = await asyncpg.connect(pg_dsn)
    observer = await asyncpg.connect(pg_dsn)
    try:
        async with SearchWorker(SearchStores(sqlite_path, pg_dsn), timeout_s=0.5) as worker:
            async with locker.transaction():
                await locker.execute("LOCK TABLE questions IN ACCESS EXCLUSIVE MODE")
                running = asyncio.ensure_future(worker.search("postgres", "json", aiko, 20))
                worker.timeout_s = 0.1  # this one's deadline passes while it waits its turn
                queued = asyncio.ensure_future(worker.search("postgres", "json", aiko, 20))
                with pytest.raises(WorkerSearchFailed, match="cancelled at its deadline"):
                    await running
                with pytest.raises(WorkerSearchFailed, match="expired before it started"):
                    await queued
                # the search was cancelled on the server, not left waiting behind the lock
                assert await _waiting_searches(observer) == 0
            worker.timeout_s = 5.0
            assert len(await worker.search("postgres", "json", aiko, 20)) == 2
    finally:
        await locker.close()
        await observer.close()


async def test_searches_sent_together_travel_as_one_batch_each_way(
    sqlite_path: Path, pg_dsn: str, settings: Settings
) -> None:
    """Each side wakes the other once per batch, not once per search (BATCH_DELAY_S)."""
    async with open_repository(settings, registry=CollectorRegistry()) as repo:
        aiko, _ = await seed(repo)
    async with SearchWorker(SearchStores(sqlite_path, pg_dsn), batch_delay_s=0.2) as worker:
        conn: Any = worker._conn
        sent: list[bytes] = []
        received: list[bytes] = []
        send, recv = conn.send_bytes, conn.recv_bytes

        def counted_send(payload: bytes) -> None:
            sent.append(payload)
            send(payload)

        def counted_recv() -> bytes:
            received.append(recv())
            return received[-1]

        conn.send_bytes, conn.recv_bytes = counted_send, counted_recv
        results = await asyncio.gather(*(worker.search(backend, "json", aiko, 20)
                                         for backend in ("postgres", "sqlite") * 3))
        assert [len(hits) for hits in results] == [2] * 6
        assert [len(pickle.loads(p)[1]) for p in sent] == [6]  # (pending rows, requests)
        # six searches of eight rows take far less than the child's 0.2 s batch delay
        assert [len(pickle.loads(m)) for m in received] == [6]


def test_a_short_timeout_shortens_the_batches(sqlite_path: Path) -> None:
    """A request's deadline runs from when it is queued: its batch waits a tenth of it at most."""
    assert SearchWorker(SearchStores(sqlite_path, "postgresql://unused"),
                        timeout_s=0.3).batch_delay_s == pytest.approx(0.03)
    assert SearchWorker(SearchStores(sqlite_path, "postgresql://unused"),
                        timeout_s=5.0).batch_delay_s == BATCH_DELAY_S
    assert SearchWorker(SearchStores(sqlite_path, "postgresql://unused")
                        ).batch_delay_s == BATCH_DELAY_S


def test_a_negative_batch_delay_is_refused(sqlite_path: Path) -> None:
    with pytest.raises(ValueError, match="batch_delay_s"):
        SearchWorker(SearchStores(sqlite_path, "postgresql://unused"), batch_delay_s=-0.1)


async def test_the_runner_feeding_the_worker_takes_a_burst_of_24_shadows(
    settings: Settings,
) -> None:
    """The runner that feeds the worker allows SHADOWS_IN_FLIGHT (128): its batches keep each
    shadow in flight up to 2 x BATCH_DELAY_S longer. 24 searches at once are all compared, none
    shed (the inline runner's bound of 8 sheds 16 of them)."""
    registry = CollectorRegistry()
    async with open_repository(settings, registry=registry) as repo:
        aiko, _ = await seed(repo)
        assert repo.shadow is not None
        await repo.shadow.drain(60.0)
        before = outcomes(registry)
        await asyncio.gather(*(repo.search_questions(q, user_id=aiko) for q in QUERIES * 3))
        assert await repo.shadow.drain(60.0) == 0
        after = outcomes(registry)
        assert registry.get_sample_value("cutover_shadow_shed_total") == 0.0
        assert after["match"] + after["mismatch"] - before["match"] - before["mismatch"] == 24
        assert after["error"] == after["timeout"] == 0.0


# -- comparing and recording in the child ---------------------------------------------------------

def recording(store_path: Path) -> Recording:
    with ShadowStore(store_path) as store:  # creates the file and its salt, as the service does
        salt = store.salt
    return Recording(salt=salt, store_path=str(store_path))


async def test_the_child_logs_and_stores_a_mismatch_the_callers_process_only_counts(
    settings: Settings, tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    registry = CollectorRegistry()
    store_path = tmp_path / "shadow.db"
    async with open_repository(settings, registry=registry, shadow_store_path=store_path) as repo:
        aiko, _ = await seed(repo)
        assert repo.shadow is not None
        worker_of(repo)
        capfd.readouterr()
        # FTS5 has no match for the typo; PostgreSQL corrects it
        assert await repo.search_questions("jsno", user_id=aiko) == []
        assert await repo.shadow.drain(60.0) == 0
        fp = repo.shadow.fingerprint("jsno")
    assert outcomes(registry) == {"match": 0, "mismatch": 1, "error": 0, "timeout": 0}
    assert registry.get_sample_value("cutover_shadow_discrepancies_total",
                                     {"reason": "fuzzy_only"}) == 1.0
    assert registry.get_sample_value("cutover_search_duration_seconds_count",
                                     {"backend": "postgres", "role": "shadow"}) == 1.0
    with ShadowStore(store_path) as store:  # the child's write, flushed when it closed
        [mismatch] = store.recent_mismatches(10)
    assert (mismatch.reason.value, mismatch.fingerprint, mismatch.query) == (
        "fuzzy_only", fp, "jsno")
    assert len(mismatch.shadow_ids) == 2 and mismatch.primary_ids == ()
    out, err = capfd.readouterr()
    # the event is the child's (on the stderr it shares), with the fingerprint, not the query
    [line] = [x for x in err.splitlines() if "shadow.mismatch" in x]
    assert fp in line and "jsno" not in line
    assert "shadow.mismatch" not in out


async def test_pending_rows_reach_the_child_and_explain_a_stale_mirror(
    sqlite_path: Path, pg_dsn: str, settings: Settings, tmp_path: Path
) -> None:
    async with open_repository(settings, registry=CollectorRegistry()) as repo:
        aiko, _ = await seed(repo)
        expected = snapshot(await repo.stores["sqlite"].search("json", aiko, 20))
    store_path = tmp_path / "shadow.db"
    stale = uuid.uuid4()  # on the primary only: its mirror write is pending
    ctx = SearchContext("json", str(aiko), 20, "sqlite", "postgres")
    async with SearchWorker(SearchStores(sqlite_path, pg_dsn),
                            recording=recording(store_path)) as worker:
        got = [await worker.compare(ctx, (*expected, Hit(stale, "fts")), pending,
                                    timeout_s=30.0)
               for pending in (frozenset({stale}), frozenset())]
        got.append(await worker.compare(ctx, expected, frozenset(), timeout_s=30.0))
    assert [c[:2] if c is not None else None for c in got] == [
        ("mismatch", "stale_mirror"), ("mismatch", "unexplained"), ("match", None)]
    assert all(c is not None and c.shadow_s is not None and c.shadow_s > 0 for c in got)
    with ShadowStore(store_path) as store:
        assert store.counts() == (3, 2)


async def test_send_compare_answers_through_its_callback_and_a_raising_one_keeps_the_child(
    sqlite_path: Path, pg_dsn: str, settings: Settings, tmp_path: Path
) -> None:
    """The runner's path: no coroutine, the answer comes to `done` on the loop. A `done` that
    raises is counted as publishing failing; it is not taken for an unreadable answer, which
    would detach the child."""
    async with open_repository(settings, registry=CollectorRegistry()) as repo:
        aiko, _ = await seed(repo)
        expected = snapshot(await repo.stores["sqlite"].search("json", aiko, 20))
    ctx = SearchContext("json", str(aiko), 20, "sqlite", "postgres")
    errors: list[str] = []
    async with SearchWorker(SearchStores(sqlite_path, pg_dsn),
                            recording=recording(tmp_path / "s.db"),
                            on_internal_error=errors.append) as worker:
        pid = worker.pid
        answers: asyncio.Queue[object] = asyncio.Queue()

        def bad(_: object) -> None:
            raise RuntimeError("a bug in the caller's callback")

        worker.send_compare(ctx, expected, frozenset(), timeout_s=30.0, done=bad)
        worker.send_compare(ctx, expected, frozenset(), timeout_s=30.0,
                            done=answers.put_nowait)
        answer = await asyncio.wait_for(answers.get(), 30.0)
        assert isinstance(answer, Compared) and (answer.outcome, answer.reason) == (
            "match", None)
        assert errors == ["publish"] and worker.pid == pid
        assert await worker.search("sqlite", "json", aiko, 20)  # the same child still serves
        assert worker.pid == pid


async def test_a_store_failure_in_the_child_is_counted_by_the_callers_process(
    settings: Settings, tmp_path: Path
) -> None:
    store_path = tmp_path / "shadow.db"
    recording(store_path)
    with sqlite3.connect(store_path) as conn:  # every write of the store fails
        conn.execute("CREATE TRIGGER refuse BEFORE INSERT ON comparisons "
                     "BEGIN SELECT RAISE(ABORT, 'injected'); END")
    registry = CollectorRegistry()
    async with open_repository(settings, registry=registry, shadow_store_path=store_path) as repo:
        aiko, _ = await seed(repo)
        assert repo.shadow is not None
        expected = await repo.stores["sqlite"].search("json", aiko, 20)
        assert await repo.search_questions("json", user_id=aiko) == expected
        await repo.shadow.drain(60.0)
        await until(lambda: (registry.get_sample_value(
            "cutover_shadow_internal_errors_total", {"stage": "store"}) or 0) >= 1,
            "the child's store failure to be counted")
        assert outcomes(registry)["match"] == 1


@pytest.mark.parametrize("stopped_s", [1.0, 2.0])
async def test_a_child_too_late_to_record_leaves_the_record_to_the_callers_process(
    sqlite_path: Path, pg_dsn: str, settings: Settings, tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch, stopped_s: float,
) -> None:
    """Stopped past its deadline plus LATE_S, the child answers "late" and records nothing
    (1 s); stopped past the runner's patience too, its answer finds nobody waiting (2 s).
    Either way, one timeout is recorded, by the caller's process."""
    monkeypatch.setattr(shadow.experiment, "REMOTE_GRACE_S", 1.5)  # timeout + 1.5 = 1.7 s
    async with open_repository(settings, registry=CollectorRegistry()) as repo:
        aiko, _ = await seed(repo)
        primary = await repo.stores["sqlite"].search("json", aiko, 20)
    store_path = tmp_path / "shadow.db"
    m = Metrics(CollectorRegistry())
    async with SearchWorker(SearchStores(sqlite_path, pg_dsn),
                            recording=recording(store_path)) as worker:
        with ShadowStore(store_path) as store:
            runner = ShadowRunner(m, sample_rate=1.0, timeout_s=0.2, store=store, remote=worker)
            pid = worker.pid
            assert pid is not None
            os.kill(pid, signal.SIGSTOP)
            try:
                assert runner.submit("json", user_id=aiko, limit=20, primary_backend="sqlite",
                                     primary_results=primary)
                await asyncio.sleep(stopped_s)
            finally:
                os.kill(pid, signal.SIGCONT)
            assert await runner.drain(10.0) == 0
            await runner.aclose()
            await until(lambda: not worker._unanswered, "the child's answer")
    assert m.registry.get_sample_value("cutover_shadow_comparisons_total",
                                       {"outcome": "timeout"}) == 1.0
    with ShadowStore(store_path) as store:
        assert store.counts() == (1, 1)
        [record] = store.recent_mismatches(10)
    assert record.outcome.value == "timeout"


def test_the_log_configuration_travels_as_far_as_it_pickles(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """The child logs with the caller's processors and level; what cannot be pickled stays
    behind, and the child then prints JSON lines to the stderr it shares with the caller."""

    class Unpicklable:
        def __call__(self, logger: Any, name: str, event: Any) -> Any:
            return event

        def __reduce__(self) -> Any:
            raise TypeError("not picklable")

    saved = structlog.get_config()
    try:
        structlog.configure(
            processors=[structlog.processors.add_log_level, structlog.processors.JSONRenderer()],
            logger_factory=structlog.PrintLoggerFactory(sys.stdout),
        )
        config = portable_log_config()
        assert config["logger_factory"] == "stdout" and len(config["processors"]) == 2
        pickle.dumps(config)

        structlog.configure(processors=[Unpicklable()],
                            logger_factory=structlog.PrintLoggerFactory(io.StringIO()))
        config = portable_log_config()
        assert "processors" not in config and "logger_factory" not in config
        _configure_logging(pickle.loads(pickle.dumps(config)))  # what the child does with it
        structlog.get_logger("cutover.shadow").warning("shadow.mismatch", fingerprint="ab")
        line = json.loads(capsys.readouterr().err)
        assert (line["event"], line["fingerprint"], line["level"]) == (
            "shadow.mismatch", "ab", "warning")
    finally:
        structlog.configure(**saved)
