"""The typo vocabulary is per study book and a search corrects from the searching user's own
books only (issue 24): a probe question cannot tell whether another user ever wrote a word, and
a deleted user's words leave with them."""

from __future__ import annotations

import uuid
from typing import Any

import asyncpg
import pytest

from proxy import PostgresStore


async def _probe(store: PostgresStore, user_id: uuid.UUID) -> list[tuple[Any, ...]]:
    """What a search for `zorbatron` shows: the hits, their kind, score and highlight."""
    hits = await store.search_questions("zorbatron", user_id=user_id)
    return [(str(h.question_id), h.match_kind, h.score, h.highlight) for h in hits]


@pytest.mark.slow
async def test_another_users_words_never_change_a_typos_corrections(
        pg_store: PostgresStore, pg_schema_dsn: str) -> None:
    attacker = await pg_store.create_user(name="eve", email="eve@example.com")
    book = await pg_store.create_study_book(user_id=attacker.id, title="probe")
    probe = await pg_store.create_question(
        study_book_id=book.id, language="en", category="c", difficulty="d",
        question="zorbatryn", answer="x")
    alone = await _probe(pg_store, attacker.id)
    # the probe's own word corrects the typo
    assert [hit[:2] for hit in alone] == [(str(probe.id), "fuzzy")]

    victim = await pg_store.create_user(name="vic", email="vic@example.com")
    vbook = await pg_store.create_study_book(user_id=victim.id, title="plans")
    await pg_store.create_question(
        study_book_id=vbook.id, language="en", category="c", difficulty="d",
        question="project zorbatron launch date", answer="secret")
    assert await _probe(pg_store, attacker.id) == alone  # no signal: the victim's word is not read
    assert [hit[1] for hit in await _probe(pg_store, victim.id)] == ["fts"]

    await pg_store.delete_user(victim.id)
    assert await _probe(pg_store, attacker.id) == alone
    conn = await asyncpg.connect(pg_schema_dsn)
    try:
        # the victim's words left with the victim
        assert await conn.fetchval(
            "SELECT count(*) FROM cutover_search_words WHERE word = ANY($1::text[])",
            ["zorbatron", "launch", "secret", "project"]) == 0
    finally:
        await conn.close()


@pytest.mark.slow
async def test_the_vocabulary_counts_each_books_questions(
        pg_store: PostgresStore, pg_schema_dsn: str) -> None:
    """Words come and go with the questions that hold them: insert, update (text or book),
    delete, and the delete a study book's removal cascades to."""
    user = await pg_store.create_user(name="u", email="u@example.com")
    b1 = await pg_store.create_study_book(user_id=user.id, title="one")
    b2 = await pg_store.create_study_book(user_id=user.id, title="two")
    q1 = await pg_store.create_question(study_book_id=b1.id, language="en", category="c",
                                        difficulty="d", question="alpha beta", answer="beta")
    q2 = await pg_store.create_question(study_book_id=b1.id, language="en", category="c",
                                        difficulty="d", question="beta gamma", answer="g")
    conn = await asyncpg.connect(pg_schema_dsn)

    async def vocabulary() -> set[tuple[str, str, int]]:
        rows = await conn.fetch("SELECT study_book_id, word, questions FROM cutover_search_words")
        names = {b1.id: "b1", b2.id: "b2"}
        return {(names[r[0]], r[1], r[2]) for r in rows}

    try:
        assert await vocabulary() == {("b1", "alpha", 1), ("b1", "beta", 2), ("b1", "gamma", 1),
                                      ("b1", "g", 1)}
        await pg_store.update_question(q1.id, question="delta beta")
        assert await vocabulary() == {("b1", "delta", 1), ("b1", "beta", 2), ("b1", "gamma", 1),
                                      ("b1", "g", 1)}
        await pg_store.update_question(q1.id, difficulty="hard")  # the text unchanged
        await pg_store.update_question(q2.id, study_book_id=b2.id)
        assert await vocabulary() == {("b1", "delta", 1), ("b1", "beta", 1), ("b2", "beta", 1),
                                      ("b2", "gamma", 1), ("b2", "g", 1)}
        await pg_store.delete_question(q1.id)
        assert await vocabulary() == {("b2", "beta", 1), ("b2", "gamma", 1), ("b2", "g", 1)}
        await pg_store.delete_study_book(b2.id)
        assert await vocabulary() == set()
    finally:
        await conn.close()


async def test_a_vocabulary_of_every_user_is_rebuilt_per_study_book(
        pg_store: PostgresStore, pg_schema_dsn: str) -> None:
    """A database whose vocabulary predates issue 24 (one table of every user's words), and so
    predates recorded revisions too, gets the per-book one from init_schema (stamped
    0000_legacy, then brought to the baseline)."""
    user = await pg_store.create_user(name="u", email="u@example.com")
    book = await pg_store.create_study_book(user_id=user.id, title="b")
    await pg_store.create_question(study_book_id=book.id, language="en", category="c",
                                   difficulty="d", question="quixotic", answer="a")
    conn = await asyncpg.connect(pg_schema_dsn)
    try:
        await conn.execute("DROP TABLE cutover_search_words; "
                           "CREATE TABLE cutover_search_words (word TEXT NOT NULL); "
                           "INSERT INTO cutover_search_words VALUES ('elsewhere'); "
                           "DROP TABLE alembic_version")
        await pg_store.init_schema()
        rows = await conn.fetch("SELECT study_book_id, word FROM cutover_search_words")
        assert {(r[0], r[1]) for r in rows} == {(book.id, "quixotic"), (book.id, "a")}
    finally:
        await conn.close()
