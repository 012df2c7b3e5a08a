"""A schema change during dual writes (issue 25), on real databases: a revision that adds
`questions.tags` and changes the search configuration is applied, the mirror first and then the
primary (the README's runbook), while writers run through the repository. Writes go on, the
stores stay equal row by row without any repair, and every stored `search_vector` follows the
new configuration."""

from __future__ import annotations

import asyncio
import sqlite3
import uuid
from decimal import Decimal
from pathlib import Path

import asyncpg
from prometheus_client import CollectorRegistry

from config import Settings
from proxy import open_repository
from proxy.stores.migrations import upgrade_postgres, upgrade_sqlite
from tests.convergence import differences
from tests.test_convergence import drain

REVISIONS = Path(__file__).parent / "revisions"  # 0004_question_tags, which this code ships not
VECTOR_IS_STALE = """
SELECT count(*) FROM questions WHERE search_vector IS DISTINCT FROM
    setweight(to_tsvector('cutover_search'::regconfig, cutover_words(question)), 'A') ||
    setweight(to_tsvector('cutover_search'::regconfig, cutover_words(answer)), 'B')"""


async def test_a_revision_applied_while_writers_run_keeps_the_mirror_equal(
        tmp_path: Path, pg_dsn: str) -> None:
    settings = Settings(sqlite_path=tmp_path / "app.db", postgres_dsn=pg_dsn,
                        shadow_sample_rate=0.0)
    registry = CollectorRegistry()
    async with open_repository(settings, registry=registry) as repo:
        user = await repo.create_user(name="Writer", email="writer@example.com")
        book = await repo.create_study_book(user_id=user.id, title="Audio")
        for i in range(30):
            await repo.create_question(study_book_id=book.id, language="en", category="audio",
                                       difficulty="easy", question=f"Which mp3s play {i}?",
                                       answer="Most players do.")
        done: list[int] = [0, 0, 0]
        stop = asyncio.Event()

        async def writer(n: int) -> None:
            while not stop.is_set():
                q = await repo.create_question(
                    study_book_id=book.id, language="en", category="audio", difficulty="easy",
                    question=f"Writer {n} asks about mp3s {done[n]}", answer="A question.")
                await repo.update_question(q.id, answer=f"Answered {done[n]}")
                await repo.record_typing_log(user_id=user.id, question_id=q.id, wpm=60,
                                             accuracy=Decimal("95.50"), took_ms=1200)
                done[n] += 1

        writers = [asyncio.create_task(writer(n)) for n in range(3)]
        await asyncio.sleep(0.5)
        before = sum(done)
        # the runbook's order: the mirror (PostgreSQL, while SQLite is primary), then the primary
        await upgrade_postgres(pg_dsn, version_locations=[REVISIONS])
        await asyncio.to_thread(upgrade_sqlite, settings.sqlite_path, "head", [REVISIONS])
        during = sum(done)
        await asyncio.sleep(0.5)
        stop.set()
        await asyncio.gather(*writers)  # a writer's error fails the test here
        after = sum(done)
        assert before > 0 and after > during, (before, during, after)

        await drain(repo)  # the mirror's own path (outbox replay): no reconcile, no repair
        stats = await repo.outbox_stats()
        assert all(s.dead == 0 for s in stats.values())
        sqlite_store, pg_store = repo.stores["sqlite"], repo.stores["postgres"]
        assert await differences(sqlite_store, pg_store) == []
        assert await sqlite_store.schema_revision() == "0004_question_tags"
        assert await pg_store.schema_revision() == "0004_question_tags"

        # a rolling deploy: the new code wrote tags on both stores; a process of the old code
        # then updates the question: it names only its columns, so the tags stay on both
        tagged = (await repo.list_questions(book.id, limit=1))[0]
        await _set_tags(settings.sqlite_path, pg_dsn, tagged.id, "audio,formats")
        await repo.update_question(tagged.id, answer="Changed by the old code.")
        await drain(repo)
        assert await differences(sqlite_store, pg_store) == []
        assert await _tags(settings.sqlite_path, pg_dsn, tagged.id) == ("audio,formats",) * 2

    # a process of the old code still opens on stores at a revision it does not know
    async with open_repository(settings) as repo:
        assert len(await repo.list_questions(book.id, limit=5)) == 5

    conn = sqlite3.connect(settings.sqlite_path)
    try:
        assert conn.execute("SELECT count(*), count(tags) FROM questions").fetchone() == (
            30 + after, 1)
    finally:
        conn.close()
    pg = await asyncpg.connect(pg_dsn)
    try:
        assert await pg.fetchval("SELECT count(*) FROM questions WHERE tags IS NOT NULL") == 1
        assert await pg.fetchval(VECTOR_IS_STALE) == 0  # the rows from before the change too
        first = await pg.fetchval("SELECT search_vector::text FROM questions "
                                  "WHERE question = 'Which mp3s play 0?'")
        assert "'mp3s'" in first and "'mp3'" not in first
    finally:
        await pg.close()


async def _set_tags(path: Path, dsn: str, question_id: uuid.UUID, tags: str) -> None:
    conn = sqlite3.connect(path)
    with conn:
        conn.execute("UPDATE questions SET tags = ? WHERE id = ?", (tags, str(question_id)))
    conn.close()
    pg = await asyncpg.connect(dsn)
    try:
        await pg.execute("UPDATE questions SET tags = $1 WHERE id = $2", tags, question_id)
    finally:
        await pg.close()


async def _tags(path: Path, dsn: str, question_id: uuid.UUID) -> tuple[str | None, str | None]:
    conn = sqlite3.connect(path)
    try:
        lite = conn.execute("SELECT tags FROM questions WHERE id = ?",
                            (str(question_id),)).fetchone()[0]
    finally:
        conn.close()
    pg = await asyncpg.connect(dsn)
    try:
        return lite, await pg.fetchval("SELECT tags FROM questions WHERE id = $1", question_id)
    finally:
        await pg.close()
