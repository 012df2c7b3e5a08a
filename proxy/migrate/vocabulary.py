"""The typo vocabulary counted once, set-based, after a backfill loaded the questions with its
triggers deferred (`docs/backfill-at-scale.md`)."""

from __future__ import annotations

import asyncio
import itertools
import time

import asyncpg

from proxy.stores import postgres_schema

WORDS = "cutover_search_words"


def _book_ranges(parts: int) -> list[str]:
    """The recount's WHERE conditions: `parts` ranges of study_book_id split at hex digits."""
    cuts = [None, *(f"{16 * i // parts:x}0000000-0000-0000-0000-000000000000"
                    for i in range(1, parts)), None]
    return [" AND ".join([*([f"q.study_book_id >= '{lo}'"] if lo else []),
                          *([f"q.study_book_id < '{hi}'"] if hi else [])]) or "true"
            for lo, hi in itertools.pairwise(cuts)]


async def rebuild_vocabulary(pool: asyncpg.Pool, parts: int,
                             counted: asyncio.Event | None = None) -> float:
    """Count every study book's words from its questions, set-based, replacing the vocabulary;
    return the seconds it took.

    The pass's own sessions loaded the questions with the vocabulary's triggers deferred
    (`postgres_schema.DEFER_WORDS`): per batch, the triggers' upsert into a growing table was
    planned on the statistics of the moment, and a bad plan made a whole backfill several times
    slower. The count is the triggers' invariant (a book's word: how many of its questions hold
    it), so the result is the table the triggers would have built from the same rows. Writes to
    questions wait meanwhile (SHARE lock): a repository write counted by its trigger during the
    pass is counted again here, and none can slip in between the count and the commit.

    The books are counted in `parts` disjoint ranges side by side, each from its own connection
    into an unlogged table (each starts after the lock is held, so all see the same questions);
    then one transaction empties the vocabulary, fills it bare from them in key order (each part
    sorted its own), and builds its key and trigram index once. Searches that read the vocabulary
    wait for that commit. No ANALYZE of questions in here: it would wait for their index builds
    and, held to the commit, hold up the other tables' reference checks (their SHARE lock on
    questions conflicts with it); the count's plan (a scan of questions, the words of each, one
    aggregate) has no join order for statistics to get wrong."""
    started = time.perf_counter()
    staged = [f"cutover_words_part_{i}" for i in range(parts)]

    async def count(table: str, books: str) -> None:
        async with pool.acquire() as c:
            # a lock request queued on questions (an ALTER TABLE) would wait for the recount's
            # transaction, and this count behind it: fail the pass (it resumes) instead of hanging
            # no Memoize over the per-question word lists: the documents hardly repeat, and
            # caching them cost a sixth of the count (27.6 -> 23.4 s on a quarter of the 10M
            # file's books: bench/search_plans.py --recount-books 0.25)
            await c.execute(f"SET lock_timeout = '10s'; SET work_mem = '256MB'; "
                            "SET enable_memoize = off; "
                            f"DROP TABLE IF EXISTS {table}; "
                            f"CREATE UNLOGGED TABLE {table} AS "
                            + postgres_schema.WORDS_COUNT.format(books=books)
                            + " ORDER BY 1, 2")

    async with pool.acquire() as conn, conn.transaction():
        await conn.execute("SET LOCAL lock_timeout = '10s'")
        await conn.execute("LOCK TABLE questions IN SHARE MODE")
        await conn.execute("SET LOCAL lock_timeout = 0")
        await asyncio.gather(*(count(t, b) for t, b in zip(staged, _book_ranges(parts),
                                                           strict=True)))
        if counted is not None:
            counted.set()
        await conn.execute("SET LOCAL maintenance_work_mem = '256MB'")
        await conn.execute(f"DROP INDEX IF EXISTS {postgres_schema.WORDS_INDEX_NAME}")
        await conn.execute(f"TRUNCATE {WORDS}")
        # filled bare, then keyed and indexed: a key built over sorted rows beats one kept row
        # by row (the report's `vocabulary` timing shows it). Each part sorted its own rows, side
        # by side, and the parts' book ranges follow each other: read in turn they are in key
        # order, with no sort here on the one backend the rest of the recount waits for.
        await conn.execute(f"ALTER TABLE {WORDS} DROP CONSTRAINT IF EXISTS {WORDS}_pkey")
        await conn.execute(f"INSERT INTO {WORDS} "
                           + " UNION ALL ".join(f"SELECT * FROM {t}" for t in staged))
        await conn.execute(f"DROP TABLE {', '.join(staged)}")
        await conn.execute(f"ALTER TABLE {WORDS} ADD CONSTRAINT {WORDS}_pkey "
                           "PRIMARY KEY (study_book_id, word)")
        await conn.execute(postgres_schema.WORDS_INDEX)
    return time.perf_counter() - started
