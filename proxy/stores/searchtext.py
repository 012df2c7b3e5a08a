"""What both stores agree a search query means, and how a hit is highlighted.

Semantics (the contract's): whitespace-separated terms, all required, no operators: every
character is text. A term's words are its runs of letters and digits (the way FTS5's unicode61
tokenizer and the PostgreSQL side's `cutover_words()`, which turns every run of other
characters into a space, both split), so
`json.dumps` is the phrase "json dumps" on both stores. Terms containing CJK characters also match
as plain substrings (neither engine segments CJK words: `学習` is inside the token
`機械学習の基礎`).
"""

from __future__ import annotations

import html
import re
import unicodedata
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from functools import lru_cache

from proxy.errors import ValidationError

MAX_QUERY_CHARS = 512
MAX_LIMIT = 100
DEFAULT_LIMIT = 20

_WORD = re.compile(r"[^\W_]+")
_CJK = re.compile(r"[\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uac00-\ud7af\uf900-\ufaff]")
MARK_OPEN = "\ue000"
MARK_CLOSE = "\ue001"


@dataclass(frozen=True, slots=True)
class ParsedQuery:
    """A query split the way both stores read it."""

    text: str  # the terms re-joined with single spaces
    terms: tuple[str, ...]  # each term's words joined by a space (an FTS phrase)
    substrings: tuple[str, ...]  # terms matched as substrings (the CJK path), case-folded

    @property
    def empty(self) -> bool:
        return not self.terms and not self.substrings


def check_limit(limit: int) -> int:
    if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= MAX_LIMIT:
        raise ValidationError("limit", f"must be an integer from 1 to {MAX_LIMIT}")
    return limit


def parse_query(query: str) -> ParsedQuery:
    """Split a user's query; raise `ValidationError` for input no store should see."""
    if not isinstance(query, str):
        raise ValidationError("q", "must be a string")
    if len(query) > MAX_QUERY_CHARS:
        raise ValidationError("q", f"query too long (at most {MAX_QUERY_CHARS} characters)")
    # NUL and other control characters cannot reach PostgreSQL text: treat them as spaces
    cleaned = "".join(" " if unicodedata.category(ch) in ("Cc", "Cs") else ch for ch in query)
    raw_terms = cleaned.split()
    terms: list[str] = []
    substrings: list[str] = []
    for raw in raw_terms:
        words = _WORD.findall(raw)
        if words:
            terms.append(" ".join(words))
        if _CJK.search(raw):
            substrings.append(raw.casefold())
    if substrings:
        # the substring path still requires every term: `学習 zebra` needs zebra too
        substrings = [raw.casefold() for raw in raw_terms if _WORD.search(raw)]
    return ParsedQuery(" ".join(raw_terms), tuple(terms), tuple(substrings))


def fts5_match(parsed: ParsedQuery) -> str:
    """The FTS5 MATCH expression: every term a quoted phrase, implicitly ANDed."""
    return " ".join('"' + t.replace('"', '""') + '"' for t in parsed.terms)


def fts5_question_match(parsed: ParsedQuery) -> str:
    """The same expression limited to the question column (a candidate's first sort key)."""
    return f"question : ({fts5_match(parsed)})"


@lru_cache(maxsize=1)
def _stemmer() -> object:
    import Stemmer  # PyStemmer: the same Porter algorithm FTS5's porter tokenizer runs

    return Stemmer.Stemmer("porter")


@lru_cache(maxsize=65536)
def stem(word: str) -> str:
    return _stem_folded(fold(word))


@lru_cache(maxsize=65536)
def _stem_folded(folded: str) -> str:
    return str(_stemmer().stemWord(folded))  # type: ignore[attr-defined]


def fold(text: str) -> str:
    """Case and accents folded, as both engines fold a token before stemming it."""
    if text.isascii():
        return text.lower()  # the common case, ten times faster
    return "".join(
        ch for ch in unicodedata.normalize("NFKD", text.casefold()) if not unicodedata.combining(ch)
    )


def highlight(text: str, parsed: ParsedQuery, *, fuzzy: bool = False) -> str:
    """HTML-escaped `text` with the query's matches in <mark>…</mark>.

    FTS matches are the words whose stem equals a query word's stem; substring terms are marked
    where they occur; a fuzzy hit marks the words closest to the query's words.
    """
    wanted = {stem(w) for term in parsed.terms for w in term.split()}
    spans: list[tuple[int, int]] = []
    words = [(m.start(), m.end(), m.group()) for m in _WORD.finditer(text)]
    for start, end, word in words:
        if stem(word) in wanted:
            spans.append((start, end))
    folded = text.casefold()
    if len(folded) == len(text):
        for sub in parsed.substrings:
            pos = folded.find(sub)
            while pos >= 0 and sub:
                spans.append((pos, pos + len(sub)))
                pos = folded.find(sub, pos + len(sub))
    if fuzzy and not spans:
        spans.extend(_closest_words(words, parsed))
    return _render(text, spans)


def _closest_words(
    words: list[tuple[int, int, str]], parsed: ParsedQuery
) -> list[tuple[int, int]]:
    from difflib import SequenceMatcher

    out = []
    for term in parsed.terms:
        for qword in term.split():
            best, best_span = 0.6, None
            for start, end, word in words:
                ratio = SequenceMatcher(None, qword.casefold(), word.casefold()).ratio()
                if ratio > best:
                    best, best_span = ratio, (start, end)
            if best_span:
                out.append(best_span)
    return out


def _render(text: str, spans: list[tuple[int, int]]) -> str:
    if not spans:
        return html.escape(text)
    spans.sort()
    merged: list[list[int]] = []
    for start, end in spans:
        if merged and start <= merged[-1][1]:
            merged[-1][1] = max(merged[-1][1], end)
        else:
            merged.append([start, end])
    parts, last = [], 0
    for start, end in merged:
        parts.append(html.escape(text[last:start]))
        parts.append("<mark>" + html.escape(text[start:end]) + "</mark>")
        last = end
    parts.append(html.escape(text[last:]))
    return "".join(parts)


def document(question: str, answer: str) -> str:
    """The text a hit is highlighted in: question, then answer."""
    return f"{question} {answer}"


# -- the shared full-text ranking (search parity) --------------------------------------------
#
# bm25 (FTS5) and ts_rank (PostgreSQL) order the same matches very differently (the one has
# IDF over the whole table, the other none), so each store picks its full-text candidates in one
# order both compute identically in SQL (`FTS_CANDIDATES` rows: the rows matching every term in
# the question first, then the shorter field, then the id) and ranks them with `fts_score`, the
# same Python on both stores. Same candidates in, same floats out: both stores return the same
# list whenever their engines match the same rows. The README (search parity) has the measurements.

#: Fixed, not a multiple of `limit`: a smaller limit returns a prefix of a larger one's list.
FTS_CANDIDATES = 100

# BM25's term-frequency saturation with the field's length normalised against fixed average
# lengths (typical of a question and of an answer): no corpus statistics, so a row's score
# depends on the row and the query alone, and both stores compute the same value.
_K1 = 1.2
_B = 0.75
_AVG_QUESTION_WORDS = 8.0
_AVG_ANSWER_WORDS = 30.0
_QUESTION_WEIGHT = 2.0  # the question weighs twice the answer, as in bm25(..., 2.0, 1.0) before
_ANSWER_WEIGHT = 1.0
# the query's own words, unstemmed, in the question: "json.dumps" outranks "json.dump"
_EXACT_WEIGHT = 0.5
# the question worded exactly as the query: that question first
_WHOLE_WEIGHT = 1.0


# a search reads at most 2 x FTS_CANDIDATES texts; an answer's entry is a few kB
@lru_cache(maxsize=4096)
def _analyze(text: str) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """A text's folded words and their stems, in order (cached: hits repeat across searches).

    The whole text is folded first (cheaper than word by word); the few characters whose
    decomposition is not a letter (a fraction) then split a word differently, alike on both
    stores.
    """
    words = tuple(_WORD.findall(fold(text)))
    return words, tuple(map(_stem_folded, words))


@dataclass(frozen=True, slots=True)
class _Shape:
    words: tuple[str, ...]  # the query's folded words, in order
    stems: tuple[str, ...]  # their distinct stems
    phrases: tuple[tuple[str, ...], ...]  # each term's stems (a phrase)


@lru_cache(maxsize=1024)
def _shape(parsed: ParsedQuery) -> _Shape:
    analyzed = [_analyze(term) for term in parsed.terms]  # as the documents' text is read
    phrases = tuple(stems for _, stems in analyzed if stems)
    words = tuple(w for term_words, _ in analyzed for w in term_words)
    return _Shape(words, tuple(dict.fromkeys(s for p in phrases for s in p)), phrases)


def _contains(stems: tuple[str, ...], phrase: tuple[str, ...]) -> bool:
    n = len(phrase)
    return any(stems[i:i + n] == phrase for i in range(len(stems) - n + 1))


def _saturation(tf: int, length: int, average: float) -> float:
    """BM25's tf component scaled to [0, 1)."""
    if tf == 0:
        return 0.0
    norm = 1.0 - _B + _B * length / average
    return tf / (tf + _K1 * norm)


def fts_score(parsed: ParsedQuery, question: str, answer: str) -> float:
    """A full-text hit's score in [2, 3): the same value on both stores for the same row.

    [2.5, 3) when every term is a phrase in the question, [2, 2.5) when some is only in the
    answer; within each: BM25-like term frequency (question weighted 2:1), the share of the
    query's words found unstemmed in the question, and a bonus when the question's words are
    exactly the query's.
    """
    shape = _shape(parsed)
    q_words, q_stems = _analyze(question)
    _, a_stems = _analyze(answer)
    in_question = all(_contains(q_stems, phrase) for phrase in shape.phrases)
    tf = 0.0
    for s in shape.stems:
        tf += _QUESTION_WEIGHT * _saturation(q_stems.count(s), len(q_stems), _AVG_QUESTION_WORDS)
        tf += _ANSWER_WEIGHT * _saturation(a_stems.count(s), len(a_stems), _AVG_ANSWER_WORDS)
    tf /= (_QUESTION_WEIGHT + _ANSWER_WEIGHT) * max(1, len(shape.stems))
    present = set(q_words)
    exact = sum(w in present for w in shape.words) / max(1, len(shape.words))
    whole = 1.0 if q_words == shape.words else 0.0
    relevance = (tf + _EXACT_WEIGHT * exact + _WHOLE_WEIGHT * whole) / (
        1.0 + _EXACT_WEIGHT + _WHOLE_WEIGHT)
    return 2.0 + (float(in_question) + relevance) / 2.0


def rank_fts(
    parsed: ParsedQuery, candidates: Iterable[tuple[uuid.UUID, str, str]], limit: int
) -> list[tuple[float, uuid.UUID, str, str]]:
    """The best `limit` of (id, question, answer) candidates: score descending, then id."""
    scored = [(fts_score(parsed, q, a), qid, q, a) for qid, q, a in candidates]
    scored.sort(key=lambda t: (-t[0], t[1]))
    return scored[:limit]
