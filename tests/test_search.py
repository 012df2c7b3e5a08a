"""search_questions: the contract's semantics, the same on both stores.

Whitespace-separated terms, all required; no operators (every character is text); blank input
gives []; over 512 characters or a limit outside 1-100 is a ValidationError; higher score is
better, full-text hits before fuzzy and substring ones, ties by question_id; highlights are
HTML-escaped with <mark>; only the given user's questions.

Documented differences, asserted here:
- A misspelled query (`jsno encodr`) finds its question on PostgreSQL through the trigram
  `fuzzy` branch, which answers only when full text finds nothing; SQLite has no fuzzy branch
  (FTS5 matches whole stemmed tokens), so it returns [].
- Two-character CJK words such as 学習 are inside a longer token (`機械学習の基礎` is one token
  to both engines), so both stores find them as plain substrings: match_kind "substring".
"""

from __future__ import annotations

import asyncio
import html
import re
import unicodedata
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from proxy import PostgresStore, SearchResult, SQLiteStore, ValidationError
from tests.databases import copy_sqlite, fresh_database

AnyStore = SQLiteStore | PostgresStore
BACKENDS = ["sqlite", "postgres"]


def _id(n: int) -> uuid.UUID:
    return uuid.UUID(int=(0xA0 << 120) | n)


UA, UB, UC = (uuid.UUID(f"{c * 8}-{c * 4}-4{c * 3}-8{c * 3}-{c * 12}") for c in "abc")
BA, BB = _id(0xBA), _id(0xBB)
Q_DUMPS, Q_ENCODER, Q_CJK, Q_CJK_COURSE = _id(1), _id(2), _id(3), _id(4)
Q_SCRIPT, Q_STUDY, Q_OPS = _id(5), _id(6), _id(7)
Q_TIE_LOW, Q_TIE_HIGH = _id(8), _id(9)
Q_PARSER_Q, Q_PARSER_A = _id(10), _id(11)
Q_OBJECTS, Q_OBJEKTS = _id(12), _id(13)
B_DUMPS, B_CJK = _id(0x101), _id(0x102)
BULK = [_id(0x200 + i) for i in range(25)]

# (id, book, question, answer), in insertion order
CORPUS: list[tuple[uuid.UUID, uuid.UUID, str, str]] = [
    (Q_DUMPS, BA, "What does json.dumps do?", "Serialize obj to a JSON formatted str."),
    (Q_ENCODER, BA, "How do I write a custom JSON encoder?",
     "Subclass json.JSONEncoder and override default()."),
    (Q_CJK, BA, "機械学習の基礎", "データからモデルを作る方法"),
    (Q_CJK_COURSE, BA, "機械学習の基礎講座", "入門編"),
    (Q_SCRIPT, BA, "Is <script>alert(1)</script> escaped?", "Yes & it must be: use html.escape."),
    (Q_STUDY, BA, "A self-study plan", "Study every day; key:value notes help."),
    (Q_OPS, BA, "C++ templates question", "don't ask what? AND foo"),
    # identical text; the higher id is inserted first so insertion order cannot break the tie
    (Q_TIE_HIGH, BA, "Tie breaker sample", "identical twin text"),
    (Q_TIE_LOW, BA, "Tie breaker sample", "identical twin text"),
    (Q_PARSER_A, BA, "Unrelated title words here", "the answer mentions parser once"),
    (Q_PARSER_Q, BA, "Which parser should I use", "pick one that fits the need"),
    (Q_OBJECTS, BA, "Mutable objects in Python", "Lists and dicts are mutable."),
    (Q_OBJEKTS, BA, "Hashable objekts as keys", "Tuples can be keys."),
    *[(BULK[i], BA, f"bulk item number {i}", "filler answer") for i in range(25)],
    # user B shares words with user A
    (B_DUMPS, BB, "What does json.dumps do?", "Serialize obj to a JSON formatted str."),
    (B_CJK, BB, "機械学習の基礎", "別のユーザー"),
]
TEXT = {qid: (q, a) for qid, _, q, a in CORPUS}


@dataclass
class Corpus:
    stores: dict[str, AnyStore]
    sqlite_path: Path
    dsn: str


async def load_corpus(store: AnyStore) -> None:
    for uid, name in ((UA, "A"), (UB, "B"), (UC, "C")):
        await store.create_user(id=uid, name=name, email=f"{name.lower()}@example.com")
    await store.create_study_book(id=BA, user_id=UA, title="A's book")
    await store.create_study_book(id=BB, user_id=UB, title="B's book")
    for qid, book, question, answer in CORPUS:
        await store.create_question(id=qid, study_book_id=book, language="en",
                                    category="c", difficulty="d", question=question,
                                    answer=answer)


@pytest.fixture(scope="module")
async def corpus(
    pg_server_dsn: str, pg_template: str, sqlite_template: Path,
    tmp_path_factory: pytest.TempPathFactory,
) -> AsyncIterator[Corpus]:
    path = tmp_path_factory.mktemp("search") / "app.db"
    copy_sqlite(sqlite_template, path)
    async with fresh_database(pg_server_dsn, template=pg_template) as dsn:
        stores: dict[str, AnyStore] = {"sqlite": SQLiteStore(path),
                                       "postgres": PostgresStore(dsn)}
        try:
            for s in stores.values():
                await load_corpus(s)
            yield Corpus(stores, path, dsn)
        finally:
            for s in stores.values():
                await s.close()


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    name: str = request.param
    return name


async def search(corpus: Corpus, backend: str, query: str, user: uuid.UUID = UA,
                 **kw: Any) -> list[SearchResult]:
    hits = await corpus.stores[backend].search_questions(query, user_id=user, **kw)
    check_invariants(hits, user)
    return hits


KIND_ORDER = {"fts": 0, "fuzzy": 1, "substring": 2}
_MARK = re.compile(r"</?mark>")


def check_invariants(hits: list[SearchResult], user: uuid.UUID) -> None:
    """What holds for every result list: order, kinds, scores, highlights, ownership."""
    assert isinstance(hits, list)
    for h in hits:
        assert isinstance(h, SearchResult)
        assert h.match_kind in KIND_ORDER
        assert isinstance(h.score, float)
        assert h.question_id in TEXT, h
        owner = UB if h.question_id in (B_DUMPS, B_CJK) else UA
        assert owner == user, ("another user's question", h)
        assert (h.question, h.answer) == TEXT[h.question_id]
        # HTML-escaped text with matches in <mark>: nothing else is markup
        plain = _MARK.sub("", h.highlight)
        assert "<" not in plain and ">" not in plain, h.highlight
        assert html.unescape(plain) == f"{h.question} {h.answer}", h.highlight
        assert h.highlight.count("<mark>") == h.highlight.count("</mark>")
    # score descending, ties by question_id; full-text before fuzzy before substring
    assert [h.question_id for h in hits] == [
        h.question_id for h in sorted(hits, key=lambda h: (-h.score, h.question_id))]
    kinds = [KIND_ORDER[h.match_kind] for h in hits]
    assert kinds == sorted(kinds), [h.match_kind for h in hits]
    assert len({h.question_id for h in hits}) == len(hits)


def ids(hits: list[SearchResult], kind: str | None = None) -> list[uuid.UUID]:
    return [h.question_id for h in hits if kind is None or h.match_kind == kind]


# -- terms and operators --

async def test_all_terms_are_required(corpus: Corpus, backend: str) -> None:
    assert ids(await search(corpus, backend, "json dumps"), "fts") == [Q_DUMPS]
    assert set(ids(await search(corpus, backend, "json"), "fts")) == {Q_DUMPS, Q_ENCODER}
    assert ids(await search(corpus, backend, "json encoder"), "fts") == [Q_ENCODER]
    assert ids(await search(corpus, backend, "  JSON \t\n dumps  "), "fts") == [Q_DUMPS]
    assert ids(await search(corpus, backend, "json zebra"), "fts") == []


async def test_a_dotted_name_is_its_words_on_both(corpus: Corpus, backend: str) -> None:
    # PostgreSQL's parser would keep json.dumps as one host token; both split it like FTS5
    assert ids(await search(corpus, backend, "dumps"), "fts") == [Q_DUMPS]
    assert ids(await search(corpus, backend, "json.dumps"), "fts") == [Q_DUMPS]
    assert ids(await search(corpus, backend, "dumps.json"), "fts") == []  # a phrase, in order


OPERATOR_LIKE = ["self-study", "key:value", "-study", "C++", "what?", "don't", "AND", "foo AND",
                 "(study", '"abc', "study NOT dog", "question:templates", "NEAR(a b)", "a*",
                 "^a", "OR", "NOT", "study OR dog", '"', '""', "*", "^", ":", "-", "()", "a:b:c",
                 "study*", "NEAR", "{question answer}: json", "'", "\\", "%", "_", "%_%",
                 "json'); DROP TABLE questions; --", "$1", "?", "@@", "<%", "&", "|", "!"]


@pytest.mark.parametrize("query", OPERATOR_LIKE)
async def test_operator_like_queries_are_plain_text(
    corpus: Corpus, backend: str, query: str
) -> None:
    hits = await search(corpus, backend, query)
    assert isinstance(hits, list)


@pytest.mark.parametrize(("query", "expected"), [
    ("self-study", {Q_STUDY}),
    ("key:value", {Q_STUDY}),
    ("-study", {Q_STUDY}),  # not "everything but study"
    ("(study", {Q_STUDY}),
    ("study NOT dog", set()),  # NOT is a word that must be there, as is dog
    ("question:templates", set()),  # not a column filter: the phrase is not in the text
    ("C++", {Q_OPS}),
    ("don't", {Q_OPS}),
    ("foo AND", {Q_OPS}),
    ('"abc', set()),
    ("jso*", set()),  # no prefix operator
    ("json*", {Q_DUMPS, Q_ENCODER}),
])
async def test_operator_characters_are_text(
    corpus: Corpus, backend: str, query: str, expected: set[uuid.UUID]
) -> None:
    assert set(ids(await search(corpus, backend, query), "fts")) == expected


async def test_operator_words_are_searched_as_words(corpus: Corpus, backend: str) -> None:
    assert Q_OPS in ids(await search(corpus, backend, "AND"), "fts")
    assert Q_ENCODER in ids(await search(corpus, backend, "and"), "fts")
    assert set(ids(await search(corpus, backend, "what?"), "fts")) == {Q_DUMPS, Q_OPS}


@pytest.mark.parametrize("query", ["", " ", "\t\n  ", "\u3000", "\x00", "\x00 \x01", "...", "!!"])
async def test_blank_or_wordless_input_returns_nothing(
    corpus: Corpus, backend: str, query: str
) -> None:
    assert await search(corpus, backend, query) == []


async def test_query_length_limit(corpus: Corpus, backend: str) -> None:
    at_limit = "dumps json " * 46 + "json  "
    assert len(at_limit) == 512
    assert ids(await search(corpus, backend, at_limit), "fts") == [Q_DUMPS]
    assert ids(await search(corpus, backend, "json" + " " * 508), "fts") == [Q_DUMPS, Q_ENCODER]
    for too_long in ("x" * 513, "json " * 2000, "学" * 513):
        with pytest.raises(ValidationError) as info:
            await search(corpus, backend, too_long)
        assert info.value.field == "q"
        assert "512" in str(info.value)


@pytest.mark.parametrize("limit", [0, 101, -1, 1000, "5", 2.5, True, None])
async def test_limit_outside_1_to_100_is_rejected(
    corpus: Corpus, backend: str, limit: Any
) -> None:
    with pytest.raises(ValidationError) as info:
        await search(corpus, backend, "bulk", limit=limit)
    assert info.value.field == "limit"


async def test_limit_default_is_20(corpus: Corpus, backend: str) -> None:
    assert len(await search(corpus, backend, "bulk")) == 20
    assert len(await search(corpus, backend, "bulk", limit=100)) == 25
    assert len(await search(corpus, backend, "bulk", limit=1)) == 1
    everything = ids(await search(corpus, backend, "bulk", limit=100))
    assert ids(await search(corpus, backend, "bulk", limit=7)) == everything[:7]


@pytest.mark.parametrize("user", ["not-a-uuid", "", 42, None])
async def test_user_id_must_be_a_uuid(corpus: Corpus, backend: str, user: Any) -> None:
    with pytest.raises(ValidationError) as info:
        await corpus.stores[backend].search_questions("json", user_id=user)
    assert info.value.field == "user_id"


async def test_user_id_as_text_is_accepted(corpus: Corpus, backend: str) -> None:
    hits = await corpus.stores[backend].search_questions("dumps", user_id=str(UA))
    assert ids(hits, "fts") == [Q_DUMPS]


# -- ranking --

async def test_higher_score_is_better(corpus: Corpus, backend: str) -> None:
    hits = await search(corpus, backend, "parser")
    assert ids(hits, "fts")[:2] == [Q_PARSER_Q, Q_PARSER_A]  # in the question beats the answer
    assert hits[0].score > hits[1].score


async def test_ties_break_by_question_id(corpus: Corpus, backend: str) -> None:
    hits = await search(corpus, backend, "tie breaker")
    assert ids(hits, "fts") == [Q_TIE_LOW, Q_TIE_HIGH]
    assert hits[0].score == hits[1].score


async def test_full_text_ranks_before_substring(corpus: Corpus, backend: str) -> None:
    hits = await search(corpus, backend, "機械学習の基礎")  # one token; a longer one holds it
    assert [(h.question_id, h.match_kind) for h in hits] == [
        (Q_CJK, "fts"), (Q_CJK_COURSE, "substring")]
    assert hits[0].score > hits[1].score


async def test_fuzzy_is_the_fallback_when_full_text_finds_nothing(corpus: Corpus) -> None:
    # a full-text hit is never padded with look-alikes (objekts is only similar to objects)
    hits = await search(corpus, "postgres", "objects")
    assert [(h.question_id, h.match_kind) for h in hits] == [(Q_OBJECTS, "fts")]
    # typos find nothing by full text, so the trigram branch answers; every term must be
    # similar to the question (objekts is, mutible is not: the other question is left out)
    hits = await search(corpus, "postgres", "mutible objecst")
    assert [(h.question_id, h.match_kind) for h in hits] == [(Q_OBJECTS, "fuzzy")]
    assert 1.0 < hits[0].score <= 2.0
    assert "<mark>" in hits[0].highlight
    hits = await search(corpus, "postgres", "objecst")
    assert {h.question_id for h in hits} == {Q_OBJECTS, Q_OBJEKTS}
    assert {h.match_kind for h in hits} == {"fuzzy"}
    # SQLite matches whole (stemmed) tokens only
    assert await search(corpus, "sqlite", "mutible objecst") == []
    assert ids(await search(corpus, "sqlite", "objects")) == [Q_OBJECTS]


async def test_scores_are_banded_by_match_kind(corpus: Corpus, backend: str) -> None:
    fts = await search(corpus, backend, "json")
    sub = await search(corpus, backend, "学習")
    assert fts and all(2.0 < h.score <= 3.0 for h in fts if h.match_kind == "fts")
    assert sub and all(h.score < 1.0 for h in sub if h.match_kind == "substring")


# -- highlights --

async def test_highlight_is_escaped_with_marks(corpus: Corpus, backend: str) -> None:
    (hit,) = await search(corpus, backend, "script")
    assert hit.question_id == Q_SCRIPT
    assert "<script>" not in hit.highlight
    assert hit.highlight.startswith(
        "Is &lt;<mark>script</mark>&gt;alert(1)&lt;/<mark>script</mark>&gt; escaped?")
    assert "Yes &amp; it must be" in hit.highlight
    hit = (await search(corpus, backend, "json dumps"))[0]
    assert hit.question_id == Q_DUMPS and hit.match_kind == "fts"
    assert hit.highlight == ("What does <mark>json</mark>.<mark>dumps</mark> do? Serialize obj "
                             "to a <mark>JSON</mark> formatted str.")


async def test_highlight_marks_stemmed_forms(corpus: Corpus, backend: str) -> None:
    (hit,) = await search(corpus, backend, "studying")
    assert hit.question_id == Q_STUDY
    assert "<mark>Study</mark>" in hit.highlight and "self-<mark>study</mark>" in hit.highlight


# -- ownership --

async def test_only_the_given_users_questions(corpus: Corpus, backend: str) -> None:
    # (check_invariants asserts every hit, fuzzy ones included, belongs to the user)
    assert ids(await search(corpus, backend, "json dumps", UA), "fts") == [Q_DUMPS]
    assert ids(await search(corpus, backend, "json dumps", UB), "fts") == [B_DUMPS]
    assert await search(corpus, backend, "json dumps", UC) == []
    assert await search(corpus, backend, "json", uuid.uuid4()) == []
    assert ids(await search(corpus, backend, "学習", UB)) == [B_CJK]
    assert ids(await search(corpus, backend, "jsno dumsp", UC)) == []


# -- the documented behaviours --

async def test_misspelled_query_is_fuzzy_on_postgres_and_empty_on_sqlite(corpus: Corpus) -> None:
    hits = await search(corpus, "postgres", "jsno encodr")
    assert hits and hits[0].question_id == Q_ENCODER
    assert hits[0].match_kind == "fuzzy"
    assert 1.0 < hits[0].score <= 2.0
    assert "<mark>" in hits[0].highlight
    # documented: FTS5 matches whole (stemmed) tokens, SQLite has no fuzzy branch
    assert await search(corpus, "sqlite", "jsno encodr") == []
    # a transposition shares few trigrams: word similarity 0.375 to `encoder`, under 0.4
    hits = await search(corpus, "postgres", "encdoer")
    assert [(h.question_id, h.match_kind) for h in hits] == [(Q_ENCODER, "fuzzy")]


async def test_two_character_cjk_word_is_a_substring_match(corpus: Corpus, backend: str) -> None:
    hits = await search(corpus, backend, "学習")
    assert [(h.question_id, h.match_kind) for h in hits] == [
        (Q_CJK, "substring"), (Q_CJK_COURSE, "substring")]
    assert hits[0].highlight == "機械<mark>学習</mark>の基礎 データからモデルを作る方法"
    # 4 characters: inside the one word 機械学習の基礎講座 on both stores, too many edits away
    # from it for PostgreSQL's vocabulary to take it as a typo
    hits = await search(corpus, backend, "基礎講座")
    assert [(h.question_id, h.match_kind) for h in hits] == [(Q_CJK_COURSE, "substring")]
    assert await search(corpus, backend, "学習 zebra") == []  # still all terms required


# -- any string a user types: a list or a ValidationError, on both stores --

FTS5_WORDS = ["AND", "OR", "NOT", "NEAR", "NEAR(", "and", "or", "not", "near/2"]
PUNCT = [*'"\'*^():-+~.,;{}[]\\/|&!?@#$%_<>=`', "''", '""', "--", "/*", "*/", "::", "<->"]
ODD = ["\x00", "\x01", "\x1f", "\x7f", "\t", "\n", "\r", "\u200b", "\ufeff", "\u3000",
       "\ud7ff", "\U0001f600", "\U0001f468\u200d\U0001f469", "é", "e\u0301", "ß", "İ", "ﬁ",
       "学習", "機械", "の", "한국어", "العربية", "\u202e", "\uffff"]
TOKENS = FTS5_WORDS + PUNCT + ODD + ["json", "dumps", "study", "self-study", "key:value",
                                     "question:", "answer:", "C++", "don't", "a*", "^a"]

queries = st.one_of(
    st.text(max_size=60),
    st.text(alphabet=st.sampled_from(sorted({c for t in TOKENS for c in t} | set("ab "))),
            max_size=80),
    st.lists(st.one_of(st.sampled_from(TOKENS), st.text(max_size=6)), max_size=25).map(
        " ".join),
    st.lists(st.sampled_from(TOKENS), max_size=25).map("".join),
    st.tuples(st.text(min_size=1, max_size=8), st.integers(1200, 2000)).map(
        lambda t: (t[0] * t[1])[:10_240]),  # ~10 kB
    st.tuples(st.sampled_from(TOKENS), st.integers(1, 130)).map(
        lambda t: " ".join([t[0]] * t[1])),  # many terms, at and around the limit
)


@pytest.mark.slow
def test_any_string_is_a_list_or_a_validation_error(corpus: Corpus) -> None:
    """At least 2,000 generated strings on both stores: never a database error."""
    loop = asyncio.new_event_loop()
    stores: dict[str, AnyStore] = {"sqlite": SQLiteStore(corpus.sqlite_path),
                                   "postgres": PostgresStore(corpus.dsn, min_size=1, max_size=2)}
    calls = {"sqlite": 0, "postgres": 0}
    outcomes = {"list": 0, "validation": 0, "hits": 0}

    @settings(max_examples=2000, deadline=None, database=None,
              suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow,
                                     HealthCheck.data_too_large])
    @given(query=queries)
    def check(query: str) -> None:
        for name, store in stores.items():
            calls[name] += 1
            try:
                hits = loop.run_until_complete(store.search_questions(query, user_id=UA))
            except ValidationError as exc:
                assert exc.field == "q", exc
                assert len(query) > 512, (query, exc)
                outcomes["validation"] += 1
                continue
            check_invariants(hits, UA)
            outcomes["list"] += 1
            outcomes["hits"] += bool(hits)
            if not any(unicodedata.category(c)[0] in "LN" for c in query):
                assert hits == [], (name, query, hits)

    try:
        check()
    finally:
        for store in stores.values():
            loop.run_until_complete(store.close())
        loop.close()
    assert calls["sqlite"] >= 2000 and calls["postgres"] >= 2000, calls
    assert outcomes["validation"] > 0 and outcomes["hits"] > 0, outcomes
