"""A backfill into an empty questions table counts the typo vocabulary once, at the end, instead
of per batch through the triggers: the result must be the table the triggers build from the same
rows, and writes made through the repository meanwhile must be counted too."""

from __future__ import annotations

import asyncio
import random
from pathlib import Path
from typing import Any

import asyncpg

from proxy.migrate.backfill import run_backfill
from proxy.stores.postgres import PostgresStore
from tests.test_backfill import LegacyDB, new_id

WORDS = ("json", "dumps", "Serialize", "obj", "café", "Déjà", "vu", "東京", "a", "x" * 70,
         "str.", "don't", "v1.2.3", "JSON", "formatted", "42", "self-contained", "__init__")

Vocabulary = set[tuple[str, str, int]]


def fill(legacy: LegacyDB, questions: int = 400) -> None:
    """Books shared by users, questions with repeated, mixed-case and punctuated words, and an
    orphan question that is rejected (its words must not count)."""
    rng = random.Random(7)
    legacy.conn.execute("BEGIN")
    users = [legacy.user() for _ in range(3)]
    books = [legacy.book(users[i % 3]) for i in range(7)]
    for _ in range(questions):
        legacy.question(rng.choice(books),
                        question=" ".join(rng.choices(WORDS, k=rng.randint(1, 6))) + "?",
                        answer=", ".join(rng.choices(WORDS, k=rng.randint(1, 9))))
    legacy.question(new_id(), question="orphanword", answer="orphanword")
    legacy.conn.execute("COMMIT")


async def vocabulary(conn: asyncpg.Connection) -> Vocabulary:
    rows = await conn.fetch("SELECT study_book_id, word, questions FROM cutover_search_words")
    return {(str(r["study_book_id"]), r["word"], r["questions"]) for r in rows}


async def built_by_the_triggers(conn: asyncpg.Connection, batch: int) -> Vocabulary:
    """Delete every question (the triggers must take each word back to nothing), then insert the
    same rows again in batches of `batch` statements' worth: the triggers' vocabulary."""
    cols = "id, study_book_id, language, category, difficulty, question, answer, created_at"
    await conn.execute(f"CREATE TEMP TABLE saved AS SELECT {cols} FROM questions")
    await conn.execute("DELETE FROM questions")
    assert await vocabulary(conn) == set()
    n = await conn.fetchval("SELECT count(*) FROM saved")
    for lo in range(0, n, batch):
        await conn.execute(f"INSERT INTO questions ({cols}) SELECT {cols} FROM saved "
                           "ORDER BY id OFFSET $1 LIMIT $2", lo, batch)
    return await vocabulary(conn)


async def test_the_recount_is_what_the_triggers_build(
        tmp_path: Path, pg_dsn: str) -> None:
    legacy = LegacyDB(tmp_path / "legacy.db")
    fill(legacy)
    report = await run_backfill(legacy.path, pg_dsn, rejects_path=tmp_path / "r.jsonl",
                                batch_size=37)
    assert "vocabulary" in report.timings  # counted once, at the end
    assert report.tables["questions"].rejected == 1
    conn = await asyncpg.connect(pg_dsn)
    try:
        recounted = await vocabulary(conn)
        assert {w for _, w, _ in recounted} >= {"json", "café", "東京", "init", "don", "t"}
        assert "orphanword" not in {w for _, w, _ in recounted}
        assert "x" * 70 not in {w for _, w, _ in recounted}  # longer than 64: not a word
        assert await built_by_the_triggers(conn, 53) == recounted
        # its key and trigram index are in place again
        assert await conn.fetchval(
            "SELECT count(*) FROM pg_indexes WHERE indexname IN "
            "('cutover_search_words_book_trigram', 'cutover_search_words_pkey')") == 2
    finally:
        await conn.close()


async def test_writes_through_the_repository_during_the_pass_are_counted(
        tmp_path: Path, pg_dsn: str, monkeypatch: Any) -> None:
    """A question written through the repository while the backfill loads (its trigger fires in
    its own session) is in the vocabulary once, beside the backfilled ones."""
    legacy = LegacyDB(tmp_path / "legacy.db")
    fill(legacy, 200)
    store = PostgresStore(pg_dsn)
    await store.init_schema()
    import proxy.migrate.backfill as backfill

    written: list[Any] = []
    original = backfill.rebuild_vocabulary

    async def write_first(pool: asyncpg.Pool, parts: int, *rest: Any) -> float:
        user = await store.create_user(name="live", email="live@example.com")
        book = await store.create_study_book(user_id=user.id, title="live")
        written.append(await store.create_question(
            study_book_id=book.id, language="en", category="c", difficulty="d",
            question="zorbatron json", answer="written meanwhile"))
        # its trigger fired (only the pass's own sessions defer them), before any recount
        seen = await asyncpg.connect(pg_dsn)
        try:
            assert await seen.fetchval(
                "SELECT questions FROM cutover_search_words WHERE word = 'zorbatron'") == 1
            # and the pass's own rows are not counted yet: their triggers were deferred
            assert await seen.fetchval(
                "SELECT count(*) FROM cutover_search_words WHERE word = 'serialize'") == 0
        finally:
            await seen.close()
        return await original(pool, parts, *rest)

    monkeypatch.setattr(backfill, "rebuild_vocabulary", write_first)
    try:
        report = await run_backfill(legacy.path, pg_dsn, rejects_path=tmp_path / "r.jsonl",
                                    batch_size=50)
    finally:
        await store.close()
    assert written and "vocabulary" in report.timings
    conn = await asyncpg.connect(pg_dsn)
    try:
        recounted = await vocabulary(conn)
        assert (str(written[0].study_book_id), "zorbatron", 1) in recounted
        assert await built_by_the_triggers(conn, 41) == recounted
    finally:
        await conn.close()


async def test_a_table_with_rows_keeps_its_triggers_counting(
        tmp_path: Path, pg_dsn: str) -> None:
    """Questions already in PostgreSQL: the pass goes through the triggers (no recount, which
    would hold up writes to a live table)."""
    store = PostgresStore(pg_dsn)
    try:
        await store.init_schema()
        user = await store.create_user(name="live", email="live@example.com")
        book = await store.create_study_book(user_id=user.id, title="live")
        await store.create_question(study_book_id=book.id, language="en", category="c",
                                    difficulty="d", question="zorbatron", answer="live")
    finally:
        await store.close()
    legacy = LegacyDB(tmp_path / "legacy.db")
    fill(legacy, 100)
    report = await run_backfill(legacy.path, pg_dsn, rejects_path=tmp_path / "r.jsonl",
                                batch_size=30)
    assert "vocabulary" not in report.timings
    conn = await asyncpg.connect(pg_dsn)
    try:
        counted = await vocabulary(conn)
        assert len(counted) > 20
        assert await built_by_the_triggers(conn, 29) == counted
    finally:
        await conn.close()


async def test_a_lock_request_queued_behind_the_recount_fails_it_not_hangs_it(
        tmp_path: Path, pg_dsn: str, monkeypatch: Any) -> None:
    """The recount holds SHARE on questions; an ALTER TABLE (ACCESS EXCLUSIVE) queued behind
    it makes the recount's own parts, reading questions from other sessions, queue behind the
    ALTER: a deadlock PostgreSQL cannot see (the recount waits for its parts). The parts give
    up after their lock timeout, the recount rolls back (the vocabulary as it was), and the
    ALTER goes through. (A pass that fails so owes its recount to the next run.)"""
    import threading
    import time

    import pytest

    import proxy.migrate.vocabulary as vocabulary_mod
    from proxy.migrate.backfill import open_pool

    legacy = LegacyDB(tmp_path / "legacy.db")
    fill(legacy, 100)
    await run_backfill(legacy.path, pg_dsn, rejects_path=tmp_path / "r.jsonl", batch_size=50)
    conn = await asyncpg.connect(pg_dsn)
    try:
        counted = await vocabulary(conn)
    finally:
        await conn.close()
    ranges = vocabulary_mod._book_ranges
    altered: list[float] = []

    async def alter() -> None:
        conn = await asyncpg.connect(pg_dsn)
        try:
            async with conn.transaction():
                await conn.execute("LOCK TABLE questions IN ACCESS EXCLUSIVE MODE")
            altered.append(time.monotonic())
        finally:
            await conn.close()

    async def queued() -> None:
        conn = await asyncpg.connect(pg_dsn)
        try:
            for _ in range(1500):
                if await conn.fetchval("SELECT count(*) FROM pg_locks WHERE NOT granted "
                                       "AND relation = 'questions'::regclass"):
                    return
                await asyncio.sleep(0.02)
        finally:
            await conn.close()

    def queue_an_alter_then_split(parts: int) -> list[str]:
        # called once the recount holds its lock, before its parts start
        threading.Thread(target=lambda: asyncio.run(alter()), daemon=True).start()
        waiting = threading.Thread(target=lambda: asyncio.run(queued()))
        waiting.start()
        waiting.join(30)
        return ranges(parts)

    monkeypatch.setattr(vocabulary_mod, "_book_ranges", queue_an_alter_then_split)
    pool = await open_pool(pg_dsn)
    try:
        with pytest.raises(asyncpg.LockNotAvailableError):  # not TimeoutError: a hang
            await asyncio.wait_for(vocabulary_mod.rebuild_vocabulary(pool, 2), 60)
    finally:
        await pool.close()
    for _ in range(200):
        if altered:
            break
        await asyncio.sleep(0.05)
    assert altered, "the ALTER never got its lock"
    conn = await asyncpg.connect(pg_dsn)
    try:
        assert await vocabulary(conn) == counted
    finally:
        await conn.close()
