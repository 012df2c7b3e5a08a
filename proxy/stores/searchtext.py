"""What both stores agree a search query means, and how a hit is highlighted.

Semantics (the contract's): whitespace-separated terms, all required, no operators: every
character is text. A term's words are its runs of letters and digits (the way FTS5's unicode61
tokenizer and the PostgreSQL side's `regexp_replace(..., '[^[:alnum:]]+', ' ')` both split), so
`json.dumps` is the phrase "json dumps" on both stores. Terms containing CJK characters also match
as plain substrings (neither engine segments CJK words: `学習` is inside the token
`機械学習の基礎`).
"""

from __future__ import annotations

import html
import re
import unicodedata
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
    return ParsedQuery(" ".join(raw_terms), tuple(terms), tuple(substrings))


def fts5_match(parsed: ParsedQuery) -> str:
    """The FTS5 MATCH expression: every term a quoted phrase, implicitly ANDed."""
    return " ".join('"' + t.replace('"', '""') + '"' for t in parsed.terms)


@lru_cache(maxsize=1)
def _stemmer() -> object:
    import Stemmer  # PyStemmer: the same Porter algorithm FTS5's porter tokenizer runs

    return Stemmer.Stemmer("porter")


@lru_cache(maxsize=65536)
def stem(word: str) -> str:
    folded = "".join(
        ch for ch in unicodedata.normalize("NFKD", word.casefold()) if not unicodedata.combining(ch)
    )
    return str(_stemmer().stemWord(folded))  # type: ignore[attr-defined]


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
