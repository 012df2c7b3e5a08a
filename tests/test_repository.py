"""The dual-write repository on real databases: both stores get every write; the flag flips."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from config import Settings
from proxy import (
    NotFoundError,
    PostgresStore,
    SQLiteStore,
    StoreUnavailable,
    ValidationError,
    open_repository,
)
from proxy.models import USERS
from tests.convergence import assert_converged, count_rows


class SwitchableMirror:
    """A real PostgreSQL store whose mirror writes all fail while `down` is set, as when the
    server cannot be reached."""

    backend = "postgres"

    def __init__(self, store: PostgresStore) -> None:
        self._store = store
        self.down = False

    def __getattr__(self, name: str) -> object:
        return getattr(self._store, name)

    async def apply(self, mutations: Any) -> Any:
        if self.down:
            raise ConnectionError("down")
        return await self._store.apply(mutations)

    async def apply_inline(self, mutations: Any) -> Any:
        if self.down:
            raise ConnectionError("down")
        return await self._store.apply_inline(mutations)


@pytest.fixture
async def switchable(pg_dsn: str) -> AsyncIterator[SwitchableMirror]:
    """The test's PostgreSQL store, for `open_repository(stores=...)`, with a switch."""
    store = PostgresStore(pg_dsn)
    yield SwitchableMirror(store)
    await store.close()


@pytest.fixture
def settings(sqlite_path: Path, pg_dsn: str) -> Settings:
    return Settings(sqlite_path=sqlite_path, postgres_dsn=pg_dsn, shadow_sample_rate=1.0)


async def test_a_store_given_to_open_repository_is_used_and_left_open(settings: Settings) -> None:
    store = SQLiteStore(settings.sqlite_path)
    try:
        async with open_repository(settings, stores={"sqlite": store}) as repo:
            assert repo.stores["sqlite"] is store
            user = await repo.create_user(name="Aiko", email="aiko@example.com")
        assert await store.get_row(USERS, user.id) is not None  # still the caller's, still open
    finally:
        await store.close()


async def test_writes_reach_both_stores_and_reads_follow_the_flag(settings: Settings) -> None:
    registry = CollectorRegistry()
    async with open_repository(settings, registry=registry) as repo:
        assert repo.read_primary == "sqlite"
        user = await repo.create_user(name="Aiko", email="aiko@example.com")
        book = await repo.create_study_book(user_id=user.id, title="Python")
        q = await repo.create_question(study_book_id=book.id, language="en", category="python",
                                       difficulty="easy", question="What does json.dumps do?",
                                       answer="Serialize obj to a JSON formatted str.")
        for store in repo.stores.values():
            assert (await store.get_question(q.id)) == q
        await repo.set_read_primary("postgres")
        assert repo.read_primary == "postgres"
        assert registry.get_sample_value("cutover_read_primary", {"backend": "postgres"}) == 1
        q2 = await repo.update_question(q.id, answer="Turns obj into JSON text.")
        hits = await repo.search_questions("json dumps", user_id=user.id)
        assert [h.question_id for h in hits] == [q.id]
        await repo.set_read_primary("sqlite")
        assert await repo.get_question(q.id) == q2
        await repo.delete_study_book(book.id)
        with pytest.raises(NotFoundError):
            await repo.get_question(q.id)
        await repo.replay_once()  # a delete that cascades is mirrored by the replay loop
        await assert_converged(repo.stores["sqlite"], repo.stores["postgres"])
        ok = registry.get_sample_value(
            "cutover_writes_total",
            {"backend": "postgres", "entity": "question", "op": "insert", "outcome": "ok"})
        assert ok == 1


async def test_mirrored_questions_feed_postgres_typo_vocabulary(settings: Settings) -> None:
    """Mirror writes (upserts, committed once SQLite has) fire the vocabulary's triggers too:
    after the flip, a typo of a word first written through the repository is corrected."""
    async with open_repository(settings, registry=CollectorRegistry()) as repo:
        user = await repo.create_user(name="Ren", email="ren@example.com")
        book = await repo.create_study_book(user_id=user.id, title="Python")
        q = await repo.create_question(study_book_id=book.id, language="en", category="python",
                                       difficulty="easy", question="What is a quokkaplex?",
                                       answer="A made-up word.")
        await repo.update_question(q.id, answer="Now about a wombatrix.")
        await repo.set_read_primary("postgres")
        for typo in ("quokkalpex", "wombtarix"):
            hits = await repo.search_questions(typo, user_id=user.id)
            assert [(h.question_id, h.match_kind) for h in hits] == [(q.id, "fuzzy")], typo
        await repo.set_read_primary("sqlite")
        assert await repo.search_questions("quokkalpex", user_id=user.id) == []  # FTS5: none


async def test_bad_input_leaves_both_stores_unchanged(settings: Settings) -> None:
    async with open_repository(settings) as repo:
        user = await repo.create_user(name="Aiko", email="aiko@example.com")
        before = [await count_rows(s) for s in repo.stores.values()]
        bad_calls = [
            lambda: repo.create_user(name="", email="a@b.c"),
            lambda: repo.create_user(name="x" * 256, email="a@b.c"),
            lambda: repo.create_study_book(user_id="not-a-uuid", title="t"),
            lambda: repo.record_typing_log(user_id=user.id, wpm=-1, accuracy=50, took_ms=1),
            lambda: repo.record_typing_log(user_id=user.id, wpm=1, accuracy=100.5, took_ms=1),
            lambda: repo.record_typing_log(user_id=user.id, wpm=1, accuracy=float("nan"),
                                           took_ms=1),
            lambda: repo.record_learning_event(user_id="u", app_id="a", action="x",
                                               duration_ms=-5),
        ]
        for call in bad_calls:
            with pytest.raises(ValidationError):
                await call()
        with pytest.raises(NotFoundError) as missing:
            await repo.create_study_book(user_id="8c2b1f5e-2f7b-4c39-9d7c-3f7c1d2a9b10",
                                         title="t")
        assert missing.value.field == "user_id"
        after = [await count_rows(s) for s in repo.stores.values()]
        assert before == after


class HeldAfterCommit:
    """A real SQLite store whose inserts commit, then wait to return until released."""

    backend = "sqlite"

    def __init__(self, store: object) -> None:
        self._store = store
        self.committed = asyncio.Event()
        self.release = asyncio.Event()

    def __getattr__(self, name: str) -> object:
        return getattr(self._store, name)

    async def insert_row(self, *args: Any, **kwargs: Any) -> Any:
        result = await self._store.insert_row(*args, **kwargs)  # type: ignore[attr-defined]
        self.committed.set()
        await self.release.wait()
        return result


async def test_a_replay_leaves_alone_a_write_whose_inline_mirror_is_under_way(
    settings: Settings,
) -> None:
    """Between its primary's commit and its mirror write, a write's outbox entry is not
    replayed by the background pass (that would apply it twice and log a replay that was not
    needed); once mirrored inline it is only acknowledged."""
    from structlog.testing import capture_logs

    store = SQLiteStore(settings.sqlite_path)
    held = HeldAfterCommit(store)
    try:
        async with open_repository(settings, registry=CollectorRegistry(),
                                   stores={"sqlite": held}) as repo:
            write = asyncio.create_task(repo.create_user(name="Aiko", email="aiko@example.com"))
            await asyncio.wait_for(held.committed.wait(), 5)
            assert (await repo.outbox_stats())["postgres"].pending == 1  # committed, not mirrored
            with capture_logs() as logs:
                assert await repo.replay_once() == 0
            assert "outbox.replayed" not in {e["event"] for e in logs}
            held.release.set()
            user = await write
            await repo.replay_once()  # acknowledges the inline mirror write
            assert (await repo.outbox_stats())["postgres"].pending == 0
            assert await repo.stores["postgres"].get_row(USERS, user.id) is not None
    finally:
        await store.close()


async def test_a_mirror_only_constraint_becomes_a_dead_letter_without_blocking(
    settings: Settings, pg_dsn: str
) -> None:
    import asyncpg
    from structlog.testing import capture_logs

    registry = CollectorRegistry()
    async with open_repository(settings, registry=registry) as repo:
        conn = await asyncpg.connect(pg_dsn)
        await conn.execute("ALTER TABLE users ADD CONSTRAINT no_bob CHECK (name <> 'bob')")
        await conn.close()
        with capture_logs() as logs:
            bob = await repo.create_user(name="bob", email="bob@example.com")  # still succeeds
            after = await repo.create_user(name="alice", email="alice@example.com")
            for _ in range(12):  # retried a bounded number of times (10), then set aside
                await repo.replay_once()
        stats = await repo.outbox_stats()
        assert stats["postgres"].dead == 1
        assert stats["postgres"].pending == 0
        assert await repo.stores["postgres"].get_row(USERS, after.id) is not None
        assert await repo.stores["postgres"].get_row(USERS, bob.id) is None
        events = {e["event"] for e in logs}
        assert {"mirror.failed", "outbox.dead_letter"} <= events
        assert registry.get_sample_value("cutover_outbox_dead_letters",
                                         {"backend": "postgres"}) == 1


@pytest.mark.slow
async def test_read_primary_file_is_the_authority_and_is_watched(
    sqlite_path: Path, pg_dsn: str, tmp_path: Path
) -> None:
    import asyncio
    import time

    from structlog.testing import capture_logs

    flag = tmp_path / "primary"
    flag.write_text("postgres\n")
    settings = Settings(sqlite_path=sqlite_path, postgres_dsn=pg_dsn, read_primary="sqlite",
                        read_primary_file=flag)
    async with open_repository(settings) as repo:
        assert repo.read_primary == "postgres"  # the file overrides READ_PRIMARY
        flag.write_text("sqlite\n")
        start = time.monotonic()
        while repo.read_primary != "sqlite":
            assert time.monotonic() - start < 2.0, "flip not seen within 2 s"
            await asyncio.sleep(0.05)
        with capture_logs() as logs:
            flag.write_text("mysql\n")
            await asyncio.sleep(1.2)
        assert repo.read_primary == "sqlite"  # a bad file keeps the current primary
        assert any(e["event"] == "primary_file.invalid" for e in logs)
        await repo.set_read_primary("postgres")  # rewrites the file atomically
        assert flag.read_text().strip() == "postgres"


@pytest.mark.slow
async def test_flip_is_refused_while_writes_for_the_target_cannot_be_replayed(
    settings: Settings, switchable: SwitchableMirror,
) -> None:
    from proxy import FlipRefused

    async with open_repository(settings, stores={"postgres": switchable}) as repo:
        user = await repo.create_user(name="Aiko", email="aiko@example.com")
        switchable.down = True
        await repo.update_user(user.id, name="Aiko 2")  # mirror fails: pending for postgres
        repo.drain_timeout_s = 0.5
        with pytest.raises(FlipRefused):
            await repo.set_read_primary("postgres")
        assert repo.read_primary == "sqlite"
        switchable.down = False
        await repo.set_read_primary("postgres")  # the drain now succeeds
        assert (await repo.get_user(user.id)).name == "Aiko 2"


@pytest.mark.slow
async def test_a_refused_flip_does_not_reach_the_primary_file(
    sqlite_path: Path, pg_dsn: str, tmp_path: Path, switchable: SwitchableMirror,
) -> None:
    import asyncio

    from proxy import FlipRefused

    flag = tmp_path / "primary"
    flag.write_text("sqlite\n")
    settings = Settings(sqlite_path=sqlite_path, postgres_dsn=pg_dsn, read_primary_file=flag)
    async with open_repository(settings, stores={"postgres": switchable}) as repo:
        user = await repo.create_user(name="Aiko", email="aiko@example.com")
        switchable.down = True
        await repo.update_user(user.id, name="Aiko 2")
        repo.drain_timeout_s = 0.3
        with pytest.raises(FlipRefused):
            await repo.set_read_primary("postgres")
        await asyncio.sleep(1.2)  # the file watcher polls every 0.5 s
        assert flag.read_text().strip() == "sqlite"
        assert repo.read_primary == "sqlite"
        switchable.down = False


@pytest.mark.slow
async def test_the_shadow_runner_hears_when_each_primary_search_ends_even_a_failed_one(
    settings: Settings,
) -> None:
    """Comparisons wait for the primary searches in flight (`ShadowRunner.primary_started`):
    a count left raised would hold every later comparison back by the wait's bound."""
    async with open_repository(settings, registry=CollectorRegistry()) as repo:
        assert repo.shadow is not None
        user = await repo.create_user(name="Aiko", email="aiko@example.com")
        await asyncio.gather(*(repo.search_questions("json", user_id=user.id)
                               for _ in range(5)))
        assert repo.shadow._primaries == 0
        await repo.stores["sqlite"].close()  # the primary fails the next search
        with pytest.raises(StoreUnavailable):
            await repo.search_questions("json", user_id=user.id)
        assert repo.shadow._primaries == 0
