"""Graded comparison of two ranked result lists, and why they differ.

Both lists hold question ids in rank order, ties already broken by id (the contract's search
semantics). Scores are never compared: bm25, ts_rank and word_similarity live on different
scales, so only ranks and membership count.

Figures (pure functions):

- `jaccard_at_k`: |A∩B| / |A∪B| over the first k of each list; order-blind.
- `overlap_at_k`: |A∩B| / k.
- `rbo`: rank-biased overlap (Webber, Moffat, Zobel 2010), the extrapolated RBO_ext of their
  equation 32 for finite, possibly uneven lists, p = 0.9: top-weighted, 1.0 for identical lists
  and for a short list that is a prefix of the long one, 0.0 for disjoint lists.
- `top1_agreement`, `kendall_tau` (tau-a over the shared items; None when fewer than 2 are
  shared), `only_in_each` (ids found on one side only, in rank order).

`classify` turns two lists into a `Comparison`: outcome `match` when the id lists are identical,
else `mismatch` with exactly one `Reason`, the first of these that fits:

- `stale_mirror`: an id found on one side only, or ranked differently, has a mirror write still
  pending: the stores are briefly out of step, not answering differently.
- `order_only`: the same ids in a different order.
- `fuzzy_only`: every id found on one side only was a fuzzy or substring match on that side; the
  full-text matches agree as a set (PostgreSQL's typo fallback has no FTS5 counterpart).
- `k_boundary`: the lists differ only near the cut: each id found on one side only sits in the
  last ⌈limit/4⌉ places of its list, and the other list is full (`limit` results), so the id
  would probably be just past the other side's cut.
- `stemming_or_stopword`: a full-text match is found on one side only and the query has a term
  the two engines analyse differently: a PostgreSQL stop word (FTS5 has none), a word whose
  Porter (FTS5) and Snowball (PostgreSQL) stems may differ, or a term with punctuation or
  non-ASCII letters that the two tokenizers split differently (`json.dumps`, `self-study`, CJK).
- `unexplained`: none of the above. This is what the go/no-go verdict counts.

`Comparison.failed` makes the two outcomes without a shadow list: `error` (reason
`shadow_error`) and `timeout` (reason `shadow_timeout`).

`Comparison.agreement` is the figure the go/no-go verdict averages and the
`cutover_shadow_rank_agreement` histogram records: `rbo`, except for `fuzzy_only`, where it is
the rbo of the full-text matches alone (1.0 when neither side has one). Those are what the two
engines are built to agree on; a typo fallback's guesses where FTS5 finds nothing are
PostgreSQL's addition by design, counted under their reason, and scoring them 0 made the
verdict's mean fall as typo recall rose (the demo's went 0.909 -> 0.903 when the vocabulary
made more typos match).
"""

from __future__ import annotations

import dataclasses
import functools
import math
import uuid
from collections.abc import Hashable, Iterable, Sequence
from dataclasses import dataclass, field
from enum import Enum
from typing import NamedTuple, Protocol, TypeVar

DEFAULT_P = 0.9


class Outcome(Enum):
    """What one shadowed search came to (the `outcome` label, `skipped` aside)."""

    MATCH = "match"
    MISMATCH = "mismatch"
    ERROR = "error"
    TIMEOUT = "timeout"


class Reason(Enum):
    """Why a shadowed search did not match; the `reason` label. See the module docstring."""

    STALE_MIRROR = "stale_mirror"
    ORDER_ONLY = "order_only"
    FUZZY_ONLY = "fuzzy_only"
    K_BOUNDARY = "k_boundary"
    STEMMING_OR_STOPWORD = "stemming_or_stopword"
    SHADOW_ERROR = "shadow_error"
    SHADOW_TIMEOUT = "shadow_timeout"
    UNEXPLAINED = "unexplained"

    @property
    def benign(self) -> bool:
        """True for the reasons a cutover expects and tolerates (not errors, not unexplained)."""
        return self not in (Reason.SHADOW_ERROR, Reason.SHADOW_TIMEOUT, Reason.UNEXPLAINED)


class RankedHit(Protocol):
    """What `classify` reads from a result: `proxy.models.SearchResult` satisfies it."""

    @property
    def question_id(self) -> uuid.UUID: ...

    @property
    def match_kind(self) -> str: ...


class Hit(NamedTuple):
    """A result reduced to what comparison needs (the runner's frozen snapshot). A named tuple,
    not a frozen dataclass: the caller's search pays for one snapshot of its results, and a
    tuple is built in a third of the time."""

    question_id: uuid.UUID
    match_kind: str


def snapshot(results: Iterable[RankedHit]) -> tuple[Hit, ...]:
    """Freeze a result list: later changes to the caller's list or objects cannot leak in.
    A tuple of Hits (the worker's answers) is frozen already and is returned as it is."""
    if type(results) is tuple and all(type(r) is Hit for r in results):
        return results
    return tuple([_new_tuple(Hit, (r.question_id, str(r.match_kind))) for r in results])


# Hit(...) goes through the named tuple's Python-level __new__; this is what it calls
_new_tuple = tuple.__new__


def freeze(results: Iterable[RankedHit]) -> tuple[RankedHit, ...]:
    """What the caller's path pays to freeze a result list: a tuple of the results as they are
    when every one is an instance of a frozen dataclass (the stores' `SearchResult`: its fields
    cannot be rebound, and a UUID and a str cannot change), else a `snapshot`. A tuple costs
    well under a microsecond; a snapshot of 20 results about 7. `snapshot` it later, off the
    caller's path, to drop what comparison does not read (a result carries its texts)."""
    frozen = tuple(results)
    if all(_frozen_type(t) for t in set(map(type, frozen))):
        return frozen
    return snapshot(frozen)


@functools.cache
def _frozen_type(cls: type) -> bool:
    if cls is Hit:
        return True
    params = getattr(cls, "__dataclass_params__", None)
    return bool(dataclasses.is_dataclass(cls) and params is not None and params.frozen)


@dataclass(frozen=True, slots=True)
class CompareContext:
    """What the classifier knows besides the two lists."""

    query: str
    limit: int
    #: ids with a mirror write still pending (to either store)
    pending: frozenset[uuid.UUID] = frozenset()


@dataclass(frozen=True, slots=True)
class Comparison:
    """One graded comparison. Figures are None when the shadow produced no list."""

    outcome: Outcome
    reason: Reason | None
    primary_ids: tuple[uuid.UUID, ...]
    shadow_ids: tuple[uuid.UUID, ...] = ()
    jaccard: float | None = None
    overlap: float | None = None
    rbo: float | None = None
    top1: bool | None = None
    kendall_tau: float | None = None
    #: what the verdict counts: `rbo`, of the full-text matches alone for `fuzzy_only`
    agreement: float | None = None
    only_primary: tuple[uuid.UUID, ...] = ()
    only_shadow: tuple[uuid.UUID, ...] = ()
    #: short machine-readable context: the analysis hints, or the shadow's exception type
    detail: str = ""
    hints: frozenset[str] = field(default_factory=frozenset)

    @classmethod
    def failed(
        cls, primary_ids: Sequence[uuid.UUID], outcome: Outcome, detail: str = ""
    ) -> Comparison:
        """A comparison whose shadow raised (`Outcome.ERROR`) or ran out of time (`TIMEOUT`)."""
        if outcome is Outcome.ERROR:
            reason = Reason.SHADOW_ERROR
        elif outcome is Outcome.TIMEOUT:
            reason = Reason.SHADOW_TIMEOUT
        else:
            raise ValueError(f"failed() takes ERROR or TIMEOUT, not {outcome}")
        return cls(outcome=outcome, reason=reason, primary_ids=tuple(primary_ids), detail=detail)


# -- figures ---------------------------------------------------------------------------------
# Over any hashable ids: `classify` passes the UUIDs' 128-bit ints, which hash and compare in C
# (a UUID does both in Python).
K = TypeVar("K", bound=Hashable)


def _cut(items: Sequence[K], k: int | None) -> Sequence[K]:
    return items if k is None else items[:k]


def jaccard_at_k(a: Sequence[K], b: Sequence[K], k: int | None = None) -> float:
    """|A∩B| / |A∪B| over the first k of each list (all when k is None); 1.0 if both empty."""
    sa, sb = set(_cut(a, k)), set(_cut(b, k))
    union = sa | sb
    return 1.0 if not union else len(sa & sb) / len(union)


def overlap_at_k(a: Sequence[K], b: Sequence[K], k: int | None = None) -> float:
    """|A∩B| / k over the first k of each list; k defaults to the longer list's length.

    1.0 when k is 0 (two empty lists agree). Passing the search `limit` as k instead scores
    short but identical lists below 1, which is sometimes what one wants.
    """
    if k is None:
        k = max(len(a), len(b))
    if k < 0:
        raise ValueError("k must be >= 0")
    if k == 0:
        return 1.0
    return len(set(a[:k]) & set(b[:k])) / k


def rbo(a: Sequence[K], b: Sequence[K], p: float = DEFAULT_P) -> float:
    """Extrapolated rank-biased overlap RBO_ext (Webber et al. 2010, eq. 32).

    Lists may differ in length; items are assumed unique within a list. Two empty lists score
    1.0; one empty and one not score 0.0.
    """
    if not 0.0 < p < 1.0:
        raise ValueError("p must be in (0, 1)")
    long_, short = (a, b) if len(a) >= len(b) else (b, a)
    n_long, s = len(long_), len(short)
    if s == 0:
        return 1.0 if n_long == 0 else 0.0
    seen_long: set[K] = set()
    seen_short: set[K] = set()
    overlap = 0  # X_d: |L:d ∩ S:d|, with S:d = S once d > s
    x_s = 0
    weighted = 0.0  # Σ_{d=1}^{l} X_d/d · p^d
    extrapolated = 0.0  # Σ_{d=s+1}^{l} X_s(d−s)/(s·d) · p^d
    for d in range(1, n_long + 1):
        item_l = long_[d - 1]
        if d <= s:
            item_s = short[d - 1]
            if item_l == item_s:
                overlap += 1
            else:
                overlap += (item_l in seen_short) + (item_s in seen_long)
            seen_long.add(item_l)
            seen_short.add(item_s)
            if d == s:
                x_s = overlap
        else:
            overlap += item_l in seen_short
            extrapolated += x_s * (d - s) / (s * d) * p**d
        weighted += overlap / d * p**d
    x_l = overlap
    tail = ((x_l - x_s) / n_long + x_s / s) * p**n_long
    value = (1 - p) / p * (weighted + extrapolated) + tail
    # float noise can push identical lists a hair past 1.0
    return min(1.0, max(0.0, value))


def top1_agreement(a: Sequence[K], b: Sequence[K]) -> bool:
    """Whether both lists start with the same id (two empty lists agree)."""
    return list(a[:1]) == list(b[:1])


def kendall_tau(a: Sequence[K], b: Sequence[K]) -> float | None:
    """Kendall's tau-a between the two rankings of the shared ids; None if fewer than 2 shared."""
    rank_b = {x: i for i, x in enumerate(b)}
    shared = [rank_b[x] for x in a if x in rank_b]  # b's ranks, in a's order
    n = len(shared)
    if n < 2:
        return None
    concordant = discordant = 0
    for i in range(n):
        for j in range(i + 1, n):
            if shared[i] < shared[j]:
                concordant += 1
            else:
                discordant += 1
    return (concordant - discordant) / (n * (n - 1) / 2)


def only_in_each(a: Sequence[K], b: Sequence[K]) -> tuple[tuple[K, ...], tuple[K, ...]]:
    """(ids only in a, ids only in b), each in its list's rank order."""
    sa, sb = set(a), set(b)
    return tuple(x for x in a if x not in sb), tuple(x for x in b if x not in sa)


# -- why two lists differ --------------------------------------------------------------------

_STOP_WORDS_TEXT = """
    i me my myself we our ours ourselves you your yours yourself yourselves he him his himself
    she her hers herself it its itself they them their theirs themselves what which who whom this
    that these those am is are was were be been being have has had having do does did doing a an
    the and but if or because as until while of at by for with about against between into through
    during before after above below to from up down in out on off over under again further then
    once here there when where why how all any both each few more most other some such no nor not
    only own same so than too very s t can will just don should now"""
#: PostgreSQL's `english` stop words (snowball english.stop); FTS5 has no stop words at all.
PG_ENGLISH_STOP_WORDS: frozenset[str] = frozenset(_STOP_WORDS_TEXT.split())

# Porter (FTS5 `porter`) and Snowball english (PostgreSQL) agree on plain plurals but part ways
# on derivational suffixes, on -y/-ies, on a few prefixes and on Snowball's exception list
# (general/generous, news, relativity in notes/search-pitfalls.md).
_STEM_SUFFIXES = (
    "ity", "ous", "al", "ally", "ly", "ies", "ied", "y", "ness", "ive", "ize", "ise", "ation",
    "ization", "ational", "ic", "ical", "ful", "ence", "ance", "ent", "ant", "ism", "iti", "eed",
    "li", "ator", "able", "ible",
)
_STEM_PREFIXES = ("gener", "commun", "arsen")
_STEM_EXCEPTIONS_TEXT = (
    "skis skies dying lying tying idly gently ugly early only singly sky news howe atlas cosmos "
    "bias andes inning outing canning herring earring proceed exceed succeed"
)
_STEM_EXCEPTIONS = frozenset(_STEM_EXCEPTIONS_TEXT.split())
# Two-letter words Snowball's porter changes (FTS5's porter leaves tokens under 3 characters
# alone), and what -ay/-oy... become; single letters are what the -s ones become.
_SHORT_STEMMED_TEXT = (
    "as bs cs ds es fs gs hs is js ks ls ms ns os ps qs rs ts us vs ws xs ys zs "
    "ay ey iy oy uy ai ei ii oi ui"
)
_SHORT_STEMMED = frozenset(_SHORT_STEMMED_TEXT.split())


def query_terms(query: str) -> tuple[str, ...]:
    """The query's terms as both stores read them: whitespace-separated, case-folded."""
    return tuple(t.casefold() for t in query.split())


def analysis_hints(terms: Iterable[str]) -> frozenset[str]:
    """Which text-analysis differences could explain a full-text difference for these terms.

    Returns a subset of {"stop_word", "stem", "tokenizer"}.
    """
    hints: set[str] = set()
    for term in terms:
        if term in PG_ENGLISH_STOP_WORDS:
            hints.add("stop_word")
        if not (term.isascii() and term.isalnum()):
            # punctuation (json.dumps, self-study, C++) or non-ASCII letters (café, 学習)
            hints.add("tokenizer")
            continue
        if term.isalpha() and len(term) > 3 and (
            term in _STEM_EXCEPTIONS
            or term.startswith(_STEM_PREFIXES)
            or term.endswith(_STEM_SUFFIXES)
        ):
            hints.add("stem")
        elif term.isalpha() and (len(term) == 1 or term in _SHORT_STEMMED) and (
            term not in PG_ENGLISH_STOP_WORDS  # those carry their own hint
        ):
            # FTS5's porter leaves tokens under 3 characters unstemmed, Snowball's does not:
            # `os` finds "I/O" (o) on PostgreSQL only, `us` finds "used" (us) on FTS5 only
            hints.add("stem")
    return frozenset(hints)


def _kinds(hits: Sequence[RankedHit]) -> dict[int, str]:
    return {h.question_id.int: str(h.match_kind) for h in hits}


def _in_tail(ids: Sequence[K], diff: Iterable[K], width: int) -> bool:
    rank = {x: i for i, x in enumerate(ids)}
    return all(rank[x] >= len(ids) - width for x in diff)


def classify(
    primary: Sequence[RankedHit], shadow: Sequence[RankedHit], ctx: CompareContext
) -> Comparison:
    """Grade two ranked lists and classify their difference (see the module docstring)."""
    a = tuple(h.question_id for h in primary)
    b = tuple(h.question_id for h in shadow)
    ka, kb = tuple([x.int for x in a]), tuple([x.int for x in b])  # see "figures" above
    if ka == kb and len(set(ka)) == len(ka):
        # the common case, and the runner's per-search cost: identical lists of distinct ids
        # have every figure at its maximum (what the functions below compute, without the
        # O(n²) tau or rbo's float noise)
        return Comparison(
            outcome=Outcome.MATCH, reason=None, primary_ids=a, shadow_ids=b, jaccard=1.0,
            overlap=1.0, rbo=1.0, top1=True, kendall_tau=1.0 if len(a) >= 2 else None,
            agreement=1.0,
        )
    uuids = dict(zip(ka, a, strict=True)) | dict(zip(kb, b, strict=True))
    only_ka, only_kb = only_in_each(ka, kb)
    jac, ovl, rb = jaccard_at_k(ka, kb), overlap_at_k(ka, kb), rbo(ka, kb)
    top1, tau = top1_agreement(ka, kb), kendall_tau(ka, kb)

    def result(
        outcome: Outcome, reason: Reason | None, hints: frozenset[str] = frozenset(),
        agreement: float = rb,
    ) -> Comparison:
        return Comparison(
            outcome=outcome, reason=reason, primary_ids=a, shadow_ids=b, jaccard=jac,
            overlap=ovl, rbo=rb, top1=top1, kendall_tau=tau, agreement=agreement,
            only_primary=tuple(uuids[x] for x in only_ka),
            only_shadow=tuple(uuids[x] for x in only_kb),
            detail=",".join(sorted(hints)), hints=hints,
        )

    if ka == kb:
        return result(Outcome.MATCH, None)

    rank_b = {x: i for i, x in enumerate(kb)}
    moved = {x for i, x in enumerate(ka) if x in rank_b and rank_b[x] != i}
    pending = {x.int for x in ctx.pending}
    if pending & (set(only_ka) | set(only_kb) | moved):
        return result(Outcome.MISMATCH, Reason.STALE_MIRROR)

    if not only_ka and not only_kb:
        return result(Outcome.MISMATCH, Reason.ORDER_ONLY)

    kinds_a, kinds_b = _kinds(primary), _kinds(shadow)
    if all(kinds_a[x] != "fts" for x in only_ka) and all(kinds_b[x] != "fts" for x in only_kb):
        full_text = rbo([x for x in ka if kinds_a[x] == "fts"],
                        [x for x in kb if kinds_b[x] == "fts"])
        return result(Outcome.MISMATCH, Reason.FUZZY_ONLY, agreement=full_text)

    width = max(1, math.ceil(ctx.limit / 4))
    if (
        (not only_ka or (len(b) >= ctx.limit and _in_tail(ka, only_ka, width)))
        and (not only_kb or (len(a) >= ctx.limit and _in_tail(kb, only_kb, width)))
    ):
        return result(Outcome.MISMATCH, Reason.K_BOUNDARY)

    hints = analysis_hints(query_terms(ctx.query))
    fts_differs = any(kinds_a[x] == "fts" for x in only_ka) or any(
        kinds_b[x] == "fts" for x in only_kb
    )
    if hints and fts_differs:
        return result(Outcome.MISMATCH, Reason.STEMMING_OR_STOPWORD, hints)

    return result(Outcome.MISMATCH, Reason.UNEXPLAINED, hints)
