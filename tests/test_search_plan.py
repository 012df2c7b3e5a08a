"""The PostgreSQL search really uses its indexes: on 100k questions owned by one user, the plan of
the store's own SQL (with its real parameters) for a selective query reads questions through the
full-text GIN index and the vocabulary through its trigram index, with no sequential scan of
questions; a common word never runs the fuzzy branch; a typo of a common word scores at most
FTS_CANDIDATES questions."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import pytest

from proxy import PostgresStore
from proxy.stores.postgres import (
    FTS_ONLY_SQL,
    FUZZY_THRESHOLD,
    MAX_FUZZY_WORDS,
    SCAN_FTS_ONLY_SQL,
    SCAN_SEARCH_SQL,
    SCAN_USER_QUESTIONS,
    SEARCH_SQL,
    search_statement,
    substring_statement,
)
from proxy.stores.postgres_schema import SEARCH_INDEXES
from proxy.stores.searchtext import FTS_CANDIDATES, parse_query

pytestmark = pytest.mark.slow  # see pyproject.toml's markers

ROWS = 100_000
USER = uuid.UUID("00000000-0000-4000-8000-0000000000a1")
BOOK = uuid.UUID("00000000-0000-4000-8000-0000000000b1")
WORDS = ["python", "json", "encoder", "decoder", "string", "list", "dict", "tuple", "function",
         "class", "module", "import", "socket", "thread", "process", "async", "await",
         "generator", "iterator", "file", "path", "regex", "pattern", "number", "integer",
         "float", "decimal", "unicode", "bytes", "buffer", "queue", "stack", "heap", "tree",
         "graph", "parser", "lexer", "token", "stream", "reader", "writer", "logger", "handler",
         "config", "option", "socket", "server", "client", "request", "response", "cache"]
LOAD_SQL = """
INSERT INTO questions (study_book_id, language, category, difficulty, question, answer,
                       created_at, updated_at)
SELECT $1, 'en', 'python', 'easy',
       'How does the ' || w[1 + i % $3] || ' ' || w[1 + (i / $3) % $3] || ' work with '
           || md5(i::text) || '?',
       'Use ' || w[1 + (i * 7) % $3] || ' and ' || w[1 + (i * 13) % $3] || ' with the '
           || w[1 + (i * 31) % $3] || ' carefully.',
       now(), now()
FROM generate_series(1, $2) AS i, (SELECT $4::text[] AS w) AS words
"""
SELECTIVE = "c4ca4238a0b923820dcc509a6f75849b"  # md5('1'): in exactly one question


@pytest.fixture(scope="module")
def big_dsn(pg_server_dsn: str, pg_template: str) -> Iterator[str]:
    """A database with 100k questions of one user, loaded in SQL (not through the store)."""
    name = f"cutover_plan_{uuid.uuid4().hex[:12]}"
    dsn = urlunsplit(urlsplit(pg_server_dsn)._replace(path="/" + name))

    async def setup() -> float:
        admin = await asyncpg.connect(pg_server_dsn)
        await admin.execute(f'CREATE DATABASE "{name}" TEMPLATE "{pg_template}"')
        await admin.close()
        store = PostgresStore(dsn)
        await store.create_user(id=USER, name="Big", email="big@example.com")
        await store.create_study_book(id=BOOK, user_id=USER, title="All of them")
        await store.close()
        conn = await asyncpg.connect(dsn)
        try:
            started = time.perf_counter()
            # like the backfill: GIN indexes are built once after the bulk load
            await conn.execute("DROP INDEX idx_questions_search_vector")
            await conn.execute("SET maintenance_work_mem = '256MB'")
            await conn.execute(LOAD_SQL, BOOK, ROWS, len(WORDS), WORDS)
            await conn.execute(SEARCH_INDEXES)
            await conn.execute("VACUUM ANALYZE questions")
            return time.perf_counter() - started
        finally:
            await conn.close()

    async def teardown() -> None:
        admin = await asyncpg.connect(pg_server_dsn)
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()

    loop = asyncio.new_event_loop()
    try:
        seconds = loop.run_until_complete(setup())
        assert seconds < 60, f"bulk load took {seconds:.1f} s"
        yield dsn
    finally:
        loop.run_until_complete(teardown())
        loop.close()


def _statement(query: str, limit: int = 20) -> tuple[str, tuple[Any, ...]]:
    """Exactly the SQL and parameters PostgresStore.search runs for `query`."""
    return search_statement(parse_query(query), USER, limit)


def _literal(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def _nodes(plan: dict[str, Any]) -> Iterator[dict[str, Any]]:
    yield plan
    for child in plan.get("Plans", []):
        yield from _nodes(child)


def _explain_nodes(raw: str) -> list[dict[str, Any]]:
    return list(_nodes(json.loads(raw)[0]["Plan"]))


async def _generic_plan(conn: asyncpg.Connection, sql: str, args: tuple[Any, ...], *,
                        analyze: bool = False) -> list[dict[str, Any]]:
    """The nodes of the generic plan of the search statement `sql` for `args` (run, with
    `analyze`)."""
    terms, text, user, limit = args
    await conn.execute(f"PREPARE s(text[], text, uuid, int) AS {sql}")
    await conn.execute("SET plan_cache_mode = force_generic_plan")
    values = ["ARRAY[" + ", ".join(_literal(t) for t in terms) + "]::text[]",
              _literal(text), f"'{user}'", str(limit)]
    try:
        return _explain_nodes(
            await conn.fetchval(f"EXPLAIN ({'ANALYZE, ' if analyze else ''}FORMAT JSON) "
                                f"EXECUTE s({', '.join(values)})"))
    finally:
        await conn.execute("DEALLOCATE s")
        await conn.execute("RESET plan_cache_mode")


STRUCT_PACK = "How does struct.pack work "


async def _add_books(conn: asyncpg.Connection, user: uuid.UUID, books: int, per_book: int,
                     question: str, *, answer: str = "It packs values into bytes",
                     language: str = "en") -> None:
    """`books` study books of `user`, each with `per_book` questions: `question` and the
    question's number in its book."""
    ids = await conn.fetch("INSERT INTO study_books (user_id, title) SELECT $1, 'b' || n "
                           "FROM generate_series(1, $2::int) n RETURNING id", user, books)
    await conn.execute(
        "INSERT INTO questions (study_book_id, language, category, difficulty, question, "
        "answer) SELECT b, $4, 'c', 'd', $2 || n, $5 "
        "FROM unnest($1::uuid[]) b, generate_series(1, $3::int) n",
        [r["id"] for r in ids], question, per_book, language, answer)


def _assert_uses_both_indexes(nodes: list[dict[str, Any]]) -> None:
    bitmap = {n.get("Index Name") for n in nodes if n["Node Type"] == "Bitmap Index Scan"}
    assert {"idx_questions_search_vector", "cutover_search_words_book_trigram"} <= bitmap, bitmap
    seq = [n for n in nodes if n["Node Type"] == "Seq Scan"
           and n.get("Relation Name") == "questions"]
    assert seq == [], seq


async def test_selective_query_plan_uses_both_gin_indexes(big_dsn: str) -> None:
    conn = await asyncpg.connect(big_dsn)
    try:
        await conn.execute(f"SET pg_trgm.word_similarity_threshold = {FUZZY_THRESHOLD}")
        assert await conn.fetchval("SELECT count(*) FROM questions") == ROWS
        for query in (SELECTIVE, f"{SELECTIVE} parser"):
            sql, args = _statement(query)
            assert "<%" in sql and "@@" in sql  # the hybrid statement, not the full-text one
            # planned with the parameter values (a custom plan: what a session without the
            # store's plan_cache_mode gets for its first runs)
            raw = await conn.fetchval("EXPLAIN (FORMAT JSON) " + sql, *args)
            _assert_uses_both_indexes(_explain_nodes(raw))
            # and as a generic plan (the store's sessions use only those: _init_connection)
            _assert_uses_both_indexes(await _generic_plan(conn, sql, args))
    finally:
        await conn.close()


async def test_short_query_plan_uses_the_full_text_index(big_dsn: str) -> None:
    conn = await asyncpg.connect(big_dsn)
    try:
        sql, args = _statement("lex")
        assert sql == FTS_ONLY_SQL  # too short for trigrams to mean anything
        raw = await conn.fetchval("EXPLAIN (FORMAT JSON) " + sql, *args)
        nodes = _explain_nodes(raw)
        assert "idx_questions_search_vector" in {n.get("Index Name") for n in nodes}
        assert not [n for n in nodes if n["Node Type"] == "Seq Scan"
                    and n.get("Relation Name") == "questions"]
    finally:
        await conn.close()


async def test_common_word_never_runs_the_fuzzy_branch(big_dsn: str) -> None:
    conn = await asyncpg.connect(big_dsn)
    try:
        await conn.execute(f"SET pg_trgm.word_similarity_threshold = {FUZZY_THRESHOLD}")
        sql, args = _statement("parser")
        raw = await conn.fetchval("EXPLAIN (ANALYZE, FORMAT JSON) " + sql, *args)
        nodes = _explain_nodes(raw)
        fts_scans = [n for n in nodes if n.get("Index Name") == "idx_questions_search_vector"]
        assert fts_scans and all(n["Actual Loops"] == 1 for n in fts_scans)
        assert sum(n["Actual Rows"] for n in fts_scans) > 2000  # a common word indeed
        # the full-text branch filled the page, so no word was looked up in the vocabulary
        vocabulary = [n for n in nodes if n.get("Relation Name") == "cutover_search_words"
                      or n.get("Index Name", "").startswith("cutover_search_words")]
        assert vocabulary and all(n["Actual Loops"] == 0 for n in vocabulary), vocabulary
        assert not [n for n in nodes if n["Node Type"] in ("Seq Scan", "Parallel Seq Scan")
                    and n.get("Relation Name") == "questions" and n["Actual Loops"] > 0]
    finally:
        await conn.close()


async def test_search_answers_correctly_on_the_big_table(big_dsn: str) -> None:
    store = PostgresStore(big_dsn)
    try:
        hits = await store.search_questions(SELECTIVE, user_id=USER)
        assert [h.match_kind for h in hits] == ["fts"]
        assert SELECTIVE in hits[0].question
        hits = await store.search_questions("parser", user_id=USER)
        assert len(hits) == 20 and {h.match_kind for h in hits} == {"fts"}
        # a misspelling of the selective token still finds it, corrected by the vocabulary
        typo = SELECTIVE[:10] + SELECTIVE[11:]
        hits = await store.search_questions(typo, user_id=USER, limit=5)
        assert hits and hits[0].match_kind == "fuzzy" and SELECTIVE in hits[0].question
        hits = await store.search_questions(f"{typo} jsno", user_id=USER, limit=5)  # row 1: json
        assert hits and hits[0].match_kind == "fuzzy" and SELECTIVE in hits[0].question
        assert await store.search_questions(SELECTIVE, user_id=uuid.uuid4()) == []
    finally:
        await store.close()


async def test_a_typo_of_a_common_word_scores_few_questions(big_dsn: str) -> None:
    """`parsr` is corrected to `parser`, in a fifth of the 100k questions: they are found
    through the full-text index, and word similarity (the score) runs on FTS_CANDIDATES of
    them, not on every question that resembles the typo."""
    conn = await asyncpg.connect(big_dsn)
    try:
        await conn.execute(f"SET pg_trgm.word_similarity_threshold = {FUZZY_THRESHOLD}")
        sql, args = _statement("parsr")
        assert sql != FTS_ONLY_SQL
        nodes = _explain_nodes(await conn.fetchval(
            "EXPLAIN (ANALYZE, FORMAT JSON) " + sql, *args))
        fts_scans = [n for n in nodes if n.get("Index Name") == "idx_questions_search_vector"]
        assert sum(n["Actual Rows"] * n["Actual Loops"] for n in fts_scans) > 2000
        assert not [n for n in nodes if n["Node Type"] in ("Seq Scan", "Parallel Seq Scan")
                    and n.get("Relation Name") == "questions" and n["Actual Loops"] > 0]
        scored = [n for n in nodes if n.get("CTE Name") == "fuzzy_candidates"]
        assert scored and sum(n["Actual Rows"] for n in scored) <= FTS_CANDIDATES, scored
    finally:
        await conn.close()
    store = PostgresStore(big_dsn)
    try:
        hits = await store.search_questions("parsr", user_id=USER)
        assert len(hits) == 20 and {h.match_kind for h in hits} == {"fuzzy"}
        assert all("parser" in h.question + h.answer for h in hits)
    finally:
        await store.close()


def test_queries_of_many_words_skip_the_typo_lookups() -> None:
    """Each distinct word of the fuzzy branch is a vocabulary lookup: a query of more than
    MAX_FUZZY_WORDS of them (one dotted term may hold many) gets the full-text branch only."""
    user = uuid.uuid4()
    eight = search_statement(parse_query("a.b.c.d e.f.g.h"), user, 10)[0]
    nine = search_statement(parse_query("a.b.c.d.e.f.g.h.i"), user, 10)[0]
    repeated = search_statement(parse_query("a.b.a.b.a.b.a.b.a.b.a.b"), user, 10)[0]
    assert MAX_FUZZY_WORDS == 8
    assert (eight, nine, repeated) == (SEARCH_SQL, FTS_ONLY_SQL, SEARCH_SQL)


async def test_substring_search_reads_only_the_users_questions(pg_store: PostgresStore,
                                                              pg_schema_dsn: str) -> None:
    """The CJK path's strpos runs on one user's questions, reached through their study books,
    never on every user's: the cost follows the user's rows, not the table's."""
    me = await pg_store.create_user(name="me", email="me@example.com")
    other = await pg_store.create_user(name="other", email="other@example.com")
    conn = await asyncpg.connect(pg_schema_dsn)
    try:
        # a tenth of the questions are mine, and the term is rare: from its guess that strpos
        # matches a third of the rows, the planner expected the page filled within the first
        # few dozen rows in id order, and walked the whole table to find three
        await _add_books(conn, me.id, 10, 40, "確率の問題 ", answer="a", language="ja")
        await conn.execute("UPDATE questions SET question = '統計の基本 ' || id WHERE id IN ("
                           "SELECT id FROM questions ORDER BY id DESC LIMIT 3)")
        await _add_books(conn, other.id, 50, 80, "確率の問題 ", answer="a", language="ja")
        await conn.execute("ANALYZE")
        parsed = parse_query("統計")
        assert parsed.substrings == ("統計",)
        sql, args = substring_statement(parsed, me.id, 20)
        for _ in range(6):  # past the custom plans of the first five runs of a prepared statement
            raw = await conn.fetchval("EXPLAIN (ANALYZE, FORMAT JSON) " + sql, *args)
        nodes = _explain_nodes(raw)
        read = sum(n["Actual Rows"] + n.get("Rows Removed by Filter", 0) for n in nodes
                   if n.get("Relation Name") == "questions")
        assert read == 400, nodes  # my 400 questions; the other user's 4,000 never read
    finally:
        await conn.close()
    hits = await pg_store.search_questions("統計", user_id=me.id)
    assert len(hits) == 3 and all(h.question.startswith("統計の基本") for h in hits)
    assert {h.match_kind for h in hits} == {"substring"}


async def test_fuzzy_branch_finds_only_the_users_questions(pg_store: PostgresStore,
                                                           pg_schema_dsn: str) -> None:
    """The vocabulary is shared by every user, the questions it leads to are not: a typo finds
    the user's questions only, and no plan (generic, as `_init_connection` asks for, or custom)
    computes word similarity while reading questions: only the candidates' score does."""
    me = await pg_store.create_user(name="me", email="me@example.com")
    other = await pg_store.create_user(name="other", email="other@example.com")
    rows = await pg_store._fetch("SHOW plan_cache_mode")
    assert rows[0][0] == "force_generic_plan"
    conn = await asyncpg.connect(pg_schema_dsn)
    try:
        for user, n in ((me.id, 3), (other.id, 60)):
            await _add_books(conn, user, n, 20, STRUCT_PACK)
        await conn.execute("ANALYZE")
        await conn.execute(f"SET pg_trgm.word_similarity_threshold = {FUZZY_THRESHOLD}")
        sql, args = search_statement(parse_query("strct"), me.id, 20)
        assert sql != FTS_ONLY_SQL
        custom = _explain_nodes(await conn.fetchval("EXPLAIN (FORMAT JSON) " + sql, *args))
        generic = await _generic_plan(conn, sql, args)
        for nodes in (custom, generic):
            reads = [n for n in nodes if n.get("Relation Name") == "questions"]
            assert reads and not [n for n in reads if "<%" in n.get("Filter", "")
                                  or "similarity" in n.get("Filter", "")], reads
    finally:
        await conn.close()
    hits = await pg_store.search_questions("strct", user_id=me.id)
    assert len(hits) == 20 and {h.match_kind for h in hits} == {"fuzzy"}
    mine = {r["id"] for r in await pg_store._fetch(
        "SELECT q.id FROM questions q JOIN study_books b ON b.id = q.study_book_id "
        "WHERE b.user_id = $1", me.id)}
    assert {h.question_id for h in hits} <= mine


async def test_a_users_search_scans_the_full_text_index_once(pg_store: PostgresStore,
                                                             pg_schema_dsn: str) -> None:
    """Among many users, one user's search reads the full-text index once per branch and the
    table only where the user's study books meet the index's matches. Joined to the study books
    instead, the plans read every user's matching rows (here 6,300 for my 300), or scanned the
    whole index once per study book of the user (on 105,600 questions of 160 users, `what is a
    set for` took 271 ms: bench/tenants.py)."""
    me = await pg_store.create_user(name="me", email="me@example.com")
    others = [await pg_store.create_user(name=f"o{i}", email=f"o{i}@example.com")
              for i in range(20)]
    conn = await asyncpg.connect(pg_schema_dsn)
    try:
        for user in [me.id, *(o.id for o in others)]:
            await _add_books(conn, user, 30, 10, STRUCT_PACK)
        await conn.execute("VACUUM ANALYZE")
        await conn.execute(f"SET pg_trgm.word_similarity_threshold = {FUZZY_THRESHOLD}")
        for query in ("pack work", "strct work"):  # full text; a typo of each word (fuzzy)
            sql, args = search_statement(parse_query(query), me.id, 20)
            nodes = await _generic_plan(conn, sql, args, analyze=True)
            scans = [n for n in nodes if n.get("Index Name") == "idx_questions_search_vector"
                     and n["Actual Loops"] > 0]
            assert scans and all(n["Actual Loops"] == 1 for n in scans), (query, scans)
            heap = [n for n in nodes if n.get("Relation Name") == "questions"
                    and n["Actual Loops"] > 0]
            assert heap and all(n["Actual Rows"] * n["Actual Loops"] <= 300 for n in heap), heap
    finally:
        await conn.close()
    mine = {r["id"] for r in await pg_store._fetch(
        "SELECT q.id FROM questions q JOIN study_books b ON b.id = q.study_book_id "
        "WHERE b.user_id = $1", me.id)}
    for query, kind in (("pack work", "fts"), ("strct work", "fuzzy")):
        hits = await pg_store.search_questions(query, user_id=me.id)
        assert len(hits) == 20 and {h.match_kind for h in hits} == {kind}
        assert {h.question_id for h in hits} <= mine


async def _users_with_books(pg_store: PostgresStore, conn: asyncpg.Connection
                            ) -> tuple[uuid.UUID, list[uuid.UUID]]:
    """Me with 3 books of 20 questions, 20 others with 10 books of 20 each; the words are
    common to every user."""
    me = await pg_store.create_user(name="me", email="me@example.com")
    others = [await pg_store.create_user(name=f"o{i}", email=f"o{i}@example.com")
              for i in range(20)]
    await _add_books(conn, me.id, 3, 20, STRUCT_PACK)
    for o in others:
        await _add_books(conn, o.id, 10, 20, STRUCT_PACK)
    await conn.execute("VACUUM ANALYZE")
    await conn.execute(f"SET pg_trgm.word_similarity_threshold = {FUZZY_THRESHOLD}")
    return me.id, [o.id for o in others]


async def test_a_small_users_search_reads_their_questions_and_no_one_elses(
        pg_store: PostgresStore, pg_schema_dsn: str) -> None:
    """A user with at most SCAN_USER_QUESTIONS questions is searched by reading them, never
    through the full-text index, whose cost follows every user's matches (a common word's, on
    3.3M questions of 1,000 users, took 25-467 ms for one user's 3,330: bench/scale.py); the
    typo lookups read the user's vocabulary only, through the index that leads with the book."""
    conn = await asyncpg.connect(pg_schema_dsn)
    try:
        me, _ = await _users_with_books(pg_store, conn)
        for query in ("pack work", "strct work"):  # full text; a typo of each word (fuzzy)
            sql, args = search_statement(parse_query(query), me, 20, scan=True)
            assert sql == SCAN_SEARCH_SQL
            nodes = await _generic_plan(conn, sql, args, analyze=True)
            assert not [n for n in nodes if n.get("Index Name") == "idx_questions_search_vector"]
            read = [n for n in nodes if n.get("Relation Name") == "questions"
                    and n["Actual Loops"] > 0]
            assert read and all(n["Actual Rows"] + n.get("Rows Removed by Filter", 0) <= 60
                                for n in read), read
            words = [n for n in nodes if n.get("Index Name") == "cutover_search_words_book_trigram"
                     and n["Actual Loops"] > 0]
            assert (words != []) == (query == "strct work"), words
            mine = await conn.fetchval(
                "SELECT count(*) FROM cutover_search_words v JOIN study_books b "
                "ON b.id = v.study_book_id WHERE b.user_id = $1", me)
            assert all(n["Actual Rows"] <= mine for n in words), words
    finally:
        await conn.close()


async def test_both_forms_of_the_search_find_the_same_rows(
        pg_store: PostgresStore, pg_schema_dsn: str) -> None:
    """Reading the user's questions or going through the index is a choice of cost only."""
    conn = await asyncpg.connect(pg_schema_dsn)
    try:
        me, others = await _users_with_books(pg_store, conn)
        await conn.execute("UPDATE questions SET answer = 'the file of what it is' WHERE id IN "
                           "(SELECT id FROM questions ORDER BY id LIMIT 500)")
        for user in (me, others[0]):
            for query in ("pack", "pack work", "strct wrk", "what is the file of", "the",
                          "how does", "zzzz"):
                found = []
                for scan in (False, True):
                    sql, args = search_statement(parse_query(query), user, 20, scan=scan)
                    assert (sql in (SCAN_SEARCH_SQL, SCAN_FTS_ONLY_SQL)) == scan
                    found.append(sorted((r["id"], r["is_fts"], round(r["score"], 9))
                                        for r in await conn.fetch(sql, *args)))
                assert found[0] == found[1], (user, query)
    finally:
        await conn.close()


async def test_the_store_scans_a_small_users_questions_and_indexes_a_big_ones(
        big_dsn: str) -> None:
    """The 100k questions of big_dsn's user go through the index; a user with few, or none,
    are read; each process remembers a user's size for a while."""
    store = PostgresStore(big_dsn)
    try:
        assert SCAN_USER_QUESTIONS < ROWS
        assert await store._scan_users_questions(USER) is False
        assert await store._scan_users_questions(uuid.uuid4()) is True
        small = await store.create_user(name="Small", email="small@example.com")
        book = await store.create_study_book(user_id=small.id, title="Few")
        await store.create_question(study_book_id=book.id, language="en", category="c",
                                    difficulty="d", question="How does the parser work?",
                                    answer="It reads tokens.")
        assert await store._scan_users_questions(small.id) is True
        hits = await store.search_questions("parser", user_id=small.id)
        assert [h.question for h in hits] == ["How does the parser work?"]
        await store.delete_user(small.id)  # big_dsn is the module's: leave it as it was
    finally:
        await store.close()
