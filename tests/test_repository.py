"""The dual-write repository on real databases: both stores get every write; the flag flips."""

from __future__ import annotations

from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from config import Settings
from proxy import NotFoundError, ValidationError, open_repository
from tests.convergence import assert_converged, count_rows


@pytest.fixture
def settings(sqlite_path: Path, pg_dsn: str) -> Settings:
    return Settings(sqlite_path=sqlite_path, postgres_dsn=pg_dsn, shadow_sample_rate=1.0)


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
        await assert_converged(repo.stores["sqlite"], repo.stores["postgres"])
        ok = registry.get_sample_value(
            "cutover_writes_total",
            {"backend": "postgres", "entity": "question", "op": "insert", "outcome": "ok"})
        assert ok == 1


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
