"""The two PostgreSQL search forms (the index, or a scan of a small user's questions) answer alike.

On random corpora (many seeds): several users sharing words, users with many books, with
books but no questions, with nothing; duplicate questions (ties), empty answers, CJK,
accents, punctuation, stop words. For each user and query the store's whole answer (order,
scores, kinds) must be the same whichever form it picks, contain only the user's questions,
and not change when every other user is deleted (no other user's question or vocabulary
word can reach it)."""

from __future__ import annotations

import random
import time
import uuid

import asyncpg
import pytest

from proxy import PostgresStore

pytestmark = pytest.mark.slow

VOCAB = ["pack", "struct", "work", "json", "encoder", "decoder", "parser", "strict", "stack",
         "the", "is", "a", "of", "what", "how", "does", "it", "file", "café", "naïve",
         "東京", "日本語", "タワー", "数据库", "v2", "3.14", "struct.pack", "json-dumps", "C++",
         "über", "résumé", "tokens", "token", "tokenizer", "reader", "readers", "read"]
STOP = ["the", "is", "a", "of", "what", "how", "does", "it"]


def _sentence(rng: random.Random, n: int) -> str:
    return " ".join(rng.choice(VOCAB) for _ in range(n))


def _typo(rng: random.Random, word: str) -> str:
    if len(word) < 3:
        return word
    i = rng.randrange(len(word))
    op = rng.randrange(3)
    if op == 0:
        return word[:i] + word[i + 1:]
    if op == 1:
        return word[:i] + rng.choice("aeiourst") + word[i + 1:]
    j = min(i + 1, len(word) - 1)
    chars = list(word)
    chars[i], chars[j] = chars[j], chars[i]
    return "".join(chars)


def _queries(rng: random.Random) -> list[str]:
    qs = ["the", "what is the", "how does it", "of a", "pack", "struct.pack", "東京",
          "日本", "本語", "タワ", "数据", "café", "cafe", "strct", "jsno encodr", "zzzz",
          '"pack work"', "tokn", "readr", "C++", "v2", "3.14", "übr", "resume", ""]
    for _ in range(25):
        words = [rng.choice(VOCAB) for _ in range(rng.randint(1, 3))]
        if rng.random() < 0.4:
            words = [_typo(rng, w) for w in words]
        if rng.random() < 0.2:
            words = [rng.choice(STOP) for _ in range(rng.randint(1, 4))]
        q = " ".join(words)
        if rng.random() < 0.15:
            q = f'"{q}"'
        if rng.random() < 0.1:
            q = q[1:-1] if len(q) > 3 else q  # a substring of words
        qs.append(q)
    return qs


async def _corpus(conn: asyncpg.Connection, rng: random.Random) -> list[uuid.UUID]:
    users = []
    for u in range(rng.randint(3, 6)):
        uid = await conn.fetchval("INSERT INTO users (name, email) VALUES ($1, $2) RETURNING id",
                                  f"u{u}", f"u{u}-{uuid.uuid4().hex[:6]}@example.com")
        users.append(uid)
        shape = rng.random()
        if shape < 0.15:
            continue  # no books at all
        books = rng.randint(1, 12) if shape > 0.3 else 1
        for _ in range(books):
            book = await conn.fetchval(
                "INSERT INTO study_books (user_id, title) VALUES ($1, 'b') RETURNING id", uid)
            if shape < 0.3:
                continue  # a book with no questions
            template = _sentence(rng, rng.randint(1, 6))
            rows = []
            for _ in range(rng.randint(0, 25)):
                q = template if rng.random() < 0.3 else _sentence(rng, rng.randint(1, 8))
                a = "" if rng.random() < 0.2 else _sentence(rng, rng.randint(0, 10))
                rows.append((book, "en", "c", "d", q, a))
            await conn.executemany(
                "INSERT INTO questions (study_book_id, language, category, difficulty, "
                "question, answer) VALUES ($1, $2, $3, $4, $5, $6)", rows)
    return users


def _key(hits: list) -> list[tuple]:
    return [(h.question_id, h.match_kind, round(h.score, 9), h.highlight) for h in hits]


async def _search(store: PostgresStore, q: str, user: uuid.UUID, limit: int, scan: bool) -> list:
    store._user_sizes[user] = (time.monotonic(), scan)
    return await store.search(q, user, limit)


@pytest.mark.parametrize("seed", range(12))
async def test_both_forms_answer_alike_on_random_corpora(
        pg_store: PostgresStore, pg_schema_dsn: str, seed: int) -> None:
    rng = random.Random(seed)
    conn = await asyncpg.connect(pg_schema_dsn)
    try:
        users = await _corpus(conn, rng)
        await conn.execute("ANALYZE")
        owned = {u: {r["id"] for r in await conn.fetch(
            "SELECT q.id FROM questions q JOIN study_books b ON b.id = q.study_book_id "
            "WHERE b.user_id = $1", u)} for u in users}
        queries = _queries(rng)
        answers: dict[tuple[uuid.UUID, str, int], list] = {}
        for user in users:
            for q in queries:
                for limit in (1, 7, 20, 150, 500):
                    index = await _search(pg_store, q, user, limit, False)
                    scan = await _search(pg_store, q, user, limit, True)
                    assert _key(index) == _key(scan), (seed, user, q, limit)
                    assert {h.question_id for h in index} <= owned[user], (seed, q)
                    answers[(user, q, limit)] = _key(index)
        # alone in the database, each user's answers are the same
        me = users[rng.randrange(len(users))]
        await conn.execute("DELETE FROM users WHERE id <> $1", me)
        await conn.execute("ANALYZE")
        for q in queries:
            for limit in (1, 7, 20, 150, 500):
                for scan in (False, True):
                    alone = _key(await _search(pg_store, q, me, limit, scan))
                    assert alone == answers[(me, q, limit)], (seed, q, limit, scan)
    finally:
        await conn.close()


async def test_both_forms_answer_alike_past_the_candidates_with_ties(
        pg_store: PostgresStore, pg_schema_dsn: str) -> None:
    """More equal matches than FTS_CANDIDATES (100), all of one length (ties broken by id
    only), limits beyond 100, and a second user with the very same questions."""
    conn = await asyncpg.connect(pg_schema_dsn)
    try:
        users = []
        for u in range(2):
            uid = await conn.fetchval(
                "INSERT INTO users (name, email) VALUES ('t', $1) RETURNING id", f"t{u}@x.org")
            users.append(uid)
            for _ in range(3):
                book = await conn.fetchval(
                    "INSERT INTO study_books (user_id, title) VALUES ($1, 'b') RETURNING id", uid)
                await conn.execute(
                    "INSERT INTO questions (study_book_id, language, category, difficulty, "
                    "question, answer) SELECT $1, 'en', 'c', 'd', 'How does pack work', "
                    "CASE WHEN i % 3 = 0 THEN '' ELSE 'the struct of it' END "
                    "FROM generate_series(1, 130) i", book)
        await conn.execute("ANALYZE")
        for user in users:
            for q in ("pack", "pack work", "the", "pakc wrok", "struct", "strcut", "ack wor",
                      "how does"):
                for limit in (1, 99, 100, 101, 150, 390, 500):
                    index = _key(await _search(pg_store, q, user, limit, False))
                    scan = _key(await _search(pg_store, q, user, limit, True))
                    assert index == scan, (q, limit)
    finally:
        await conn.close()
