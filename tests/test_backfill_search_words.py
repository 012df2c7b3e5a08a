"""`cutover_words()` runs on every question the backfill copies (the generated `search_vector`),
so it matches punctuation runs only and leaves spaces alone. That must not change what search
reads: the words, their positions and the phrase queries are those of replacing every
non-alphanumeric run, the definition both stores agree on (`proxy.stores.searchtext`)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import asyncpg
import pytest

from proxy.stores import postgres_schema

pytestmark = pytest.mark.slow  # see pyproject.toml's markers

# The definition the function is measured against.
EVERY_RUN = r"regexp_replace(doc, '[^[:alnum:]]+', ' ', 'g')"

DOCS = [
    "", " ", "   ", "...", " . . ", "a . b", "a  .  b c", "json.dumps(obj)", "foo_bar baz-qux",
    "user@example.com http://x.y/z?q=1&r=2", "1.5e10 v1.2.3 -3 +4 50%", "<b>bold</b> &amp; x",
    "  leading and trailing  ", "tab\there", "new\nline\r\nx", "nbsp\u00a0x", "em\u2014dash",
    "ideographic\u3000space", "zero\u200bwidth", "cafe\u0301 latte", "café déjà vu",
    "東京 機械学習の基礎", "don't stop", "The the THE a an of", "C:\\path\\to file.txt",
    "Return the str(x) of obj; raise ValueError if x < 0 or x > 10.",
]


@pytest.fixture
async def conn(pg_dsn: str) -> AsyncIterator[asyncpg.Connection]:
    c = await asyncpg.connect(pg_dsn)
    await c.execute(postgres_schema.DDL)
    yield c
    await c.close()


async def test_the_same_words_positions_and_phrases_as_replacing_every_run(
        conn: asyncpg.Connection) -> None:
    rows = await conn.fetch(
        "SELECT doc, to_tsvector('cutover_search', cutover_words(doc))::text AS vector, "
        f"to_tsvector('cutover_search', {EVERY_RUN})::text AS vector_wanted, "
        "phraseto_tsquery('cutover_search', cutover_words(doc))::text AS phrase, "
        f"phraseto_tsquery('cutover_search', {EVERY_RUN})::text AS phrase_wanted "
        "FROM unnest($1::text[]) AS doc", DOCS)
    assert [(r["doc"], r["vector"], r["phrase"]) for r in rows] == [
        (r["doc"], r["vector_wanted"], r["phrase_wanted"]) for r in rows]
    # and the test sees what it should: punctuation splits words, positions are word counts
    vectors = {r["doc"]: r["vector"] for r in rows}
    assert vectors["json.dumps(obj)"] == "'dump':2 'json':1 'obj':3"
    assert vectors["a  .  b c"] == "'a':1 'b':2 'c':3"


async def test_only_punctuation_is_rewritten(conn: asyncpg.Connection) -> None:
    words = await conn.fetchval("SELECT cutover_words($1)", "json.dumps(obj)  x")
    assert words == "json dumps obj   x"  # each punctuation run is a space; spaces stay
