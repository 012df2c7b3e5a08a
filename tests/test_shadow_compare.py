"""shadow/compare.py: figures against hand-computed values, and one constructed case per reason."""

from __future__ import annotations

import uuid

import pytest
from hypothesis import given
from hypothesis import strategies as st

from metrics import DISCREPANCY_REASONS
from proxy.models import SearchResult
from shadow.compare import (
    CompareContext,
    Comparison,
    Outcome,
    Reason,
    analysis_hints,
    classify,
    freeze,
    jaccard_at_k,
    kendall_tau,
    only_in_each,
    overlap_at_k,
    query_terms,
    rbo,
    snapshot,
    top1_agreement,
)

A, B, C, D, E, F, G, H, X, Y = (uuid.UUID(int=i + 1) for i in range(10))


def hits(*spec: uuid.UUID | tuple[uuid.UUID, str]) -> list[SearchResult]:
    """Search results in rank order; an id alone is an fts match."""
    out = []
    for i, item in enumerate(spec):
        qid, kind = item if isinstance(item, tuple) else (item, "fts")
        out.append(SearchResult(qid, f"q{i}", f"a{i}", f"q{i}", 10.0 - i, kind))  # type: ignore[arg-type]
    return out


def ctx(query: str = "python list", limit: int = 20, pending: set[uuid.UUID] | None = None
        ) -> CompareContext:
    return CompareContext(query, limit, frozenset(pending or ()))


# -- figures -----------------------------------------------------------------------------------


def test_rbo_of_a_swapped_top_pair_is_hand_computed() -> None:
    # X1=0, X2=2, X3=3: (0.1/0.9)(0 + 1·0.81 + 1·0.729) + 1·0.729 = 0.171 + 0.729
    assert rbo([A, B, C], [B, A, C]) == pytest.approx(0.9)


def test_rbo_of_even_lists_with_partial_overlap_is_hand_computed() -> None:
    # X = 1, 1, 2, 2 at d = 1..4
    weighted = 1 * 0.9 + 1 / 2 * 0.81 + 2 / 3 * 0.729 + 2 / 4 * 0.6561
    expected = 0.1 / 0.9 * weighted + 2 / 4 * 0.6561
    assert expected == pytest.approx(0.5635)
    assert rbo([A, B, C, D], [A, X, C, Y]) == pytest.approx(expected)


def test_rbo_of_uneven_lists_uses_the_extrapolation_of_equation_32() -> None:
    # L=[A,B,C,D], S=[A,C]: X = 1,1,2,2; X_s = 1; extrapolated terms at d=3,4: 1/6, 1/4
    weighted = 0.9 + 0.405 + 0.486 + 0.32805
    extrapolated = 1 / 6 * 0.729 + 1 / 4 * 0.6561
    tail = ((2 - 1) / 4 + 1 / 2) * 0.6561
    expected = 0.1 / 0.9 * (weighted + extrapolated) + tail
    assert expected == pytest.approx(0.75925)
    assert rbo([A, B, C, D], [A, C]) == pytest.approx(expected)
    assert rbo([A, C], [A, B, C, D]) == pytest.approx(expected)


def test_rbo_limits() -> None:
    assert rbo([A, B, C], [A, B, C]) == 1.0
    assert rbo([A, B], [A, B, C, D]) == 1.0  # a prefix agrees wherever both were seen
    assert rbo([A, B], [C, D]) == 0.0
    assert rbo([], []) == 1.0
    assert rbo([A], []) == 0.0
    with pytest.raises(ValueError):
        rbo([A], [A], p=1.0)


def test_rbo_weights_the_top() -> None:
    # the same swap costs more at the top than at the bottom
    assert rbo([A, B, C, D], [B, A, C, D]) < rbo([A, B, C, D], [A, B, D, C])


id_lists = st.lists(st.integers(0, 30), unique=True, max_size=25).map(
    lambda xs: [uuid.UUID(int=x) for x in xs]
)


@given(id_lists, id_lists)
def test_rbo_is_symmetric_and_bounded(a: list[uuid.UUID], b: list[uuid.UUID]) -> None:
    value = rbo(a, b)
    assert 0.0 <= value <= 1.0
    assert value == pytest.approx(rbo(b, a))
    if a and b and not set(a) & set(b):
        assert value == 0.0


@given(id_lists)
def test_rbo_and_jaccard_of_a_list_with_itself_are_one(a: list[uuid.UUID]) -> None:
    assert rbo(a, list(a)) == pytest.approx(1.0)
    assert jaccard_at_k(a, list(a)) == 1.0


def test_jaccard_and_overlap_at_k() -> None:
    assert jaccard_at_k([A, B, C, D], [A, B, X, Y]) == pytest.approx(2 / 6)
    assert jaccard_at_k([A, B, C, D], [A, B, X, Y], k=2) == 1.0
    assert jaccard_at_k([], []) == 1.0
    assert overlap_at_k([A, B, C, D], [A, B, X, Y]) == 0.5
    assert overlap_at_k([A, B, C], [C, B, A], k=20) == pytest.approx(3 / 20)
    assert overlap_at_k([], []) == 1.0


def test_top1_kendall_and_one_side_only() -> None:
    assert top1_agreement([A, B], [A, C])
    assert not top1_agreement([A, B], [B, A])
    assert top1_agreement([], [])
    assert kendall_tau([A, B, C], [A, B, C]) == 1.0
    assert kendall_tau([A, B, C], [C, B, A]) == -1.0
    assert kendall_tau([A, B, C], [B, A, C]) == pytest.approx(1 / 3)
    assert kendall_tau([A, B, X], [Y, B, A]) == -1.0  # only A and B are shared
    assert kendall_tau([A, X], [A, Y]) is None  # one shared item has no order
    assert only_in_each([A, B, C, D], [D, X, B, Y]) == ((A, C), (X, Y))


# -- classification ------------------------------------------------------------------------------


def test_identical_lists_match_without_a_reason() -> None:
    c = classify(hits(A, B, C), hits(A, B, C), ctx())
    assert (c.outcome, c.reason) == (Outcome.MATCH, None)
    assert (c.jaccard, c.rbo, c.top1, c.kendall_tau) == (1.0, 1.0, True, 1.0)
    assert classify([], [], ctx()).outcome is Outcome.MATCH


def test_identical_lists_have_the_figures_the_functions_compute() -> None:
    for n in (0, 1, 2, 3, 20, 30):
        same = [uuid.UUID(int=i + 100) for i in range(n)]
        c = classify(hits(*same), hits(*same), ctx())
        assert c.outcome is Outcome.MATCH and c.reason is None and not c.hints
        assert c.jaccard == jaccard_at_k(same, same)
        assert c.overlap == overlap_at_k(same, same)
        assert c.rbo == pytest.approx(rbo(same, same)) and c.rbo == 1.0
        assert (c.top1, c.kendall_tau) == (top1_agreement(same, same), kendall_tau(same, same))
        assert c.only_primary == c.only_shadow == ()
    # a list repeating an id is not a set: its figures are computed, not assumed
    c = classify(hits(A, A, B), hits(A, A, B), ctx())
    assert c.outcome is Outcome.MATCH
    assert c.overlap == overlap_at_k([A, A, B], [A, A, B]) < 1.0
    assert c.kendall_tau == kendall_tau([A, A, B], [A, A, B])


def test_order_only() -> None:
    c = classify(hits(A, B, C), hits(B, A, C), ctx())
    assert (c.outcome, c.reason) == (Outcome.MISMATCH, Reason.ORDER_ONLY)
    assert c.jaccard == 1.0 and c.rbo == pytest.approx(0.9) and c.top1 is False
    assert c.only_primary == c.only_shadow == ()


def test_stale_mirror_when_a_differing_id_has_a_pending_write() -> None:
    c = classify(hits(A, B, C), hits(A, B, X), ctx(pending={C}))
    assert c.reason is Reason.STALE_MIRROR
    # a row that moved because its pending update changed its text counts too
    assert classify(hits(A, B, C), hits(B, A, C), ctx(pending={A})).reason is Reason.STALE_MIRROR
    # a pending write on a row ranked the same on both sides explains nothing
    assert classify(hits(A, B, C), hits(B, A, C), ctx(pending={C})).reason is Reason.ORDER_ONLY


def test_fuzzy_only_when_every_one_side_id_is_a_fuzzy_or_substring_match() -> None:
    c = classify(
        hits(A, B, (C, "fuzzy")), hits(A, B, (X, "substring"), (Y, "fuzzy")), ctx(limit=20)
    )
    assert c.reason is Reason.FUZZY_ONLY
    assert c.only_primary == (C,) and c.only_shadow == (X, Y)
    # the verdict's figure: the full-text matches (A, B on both sides) agree
    assert c.rbo < 0.9 and c.agreement == 1.0


def test_a_fuzzy_only_comparison_agrees_as_far_as_its_full_text_matches_do() -> None:
    # a typo: FTS5 finds nothing, PostgreSQL's guesses; nothing to disagree on
    typo = classify(hits(), hits((X, "fuzzy"), (Y, "fuzzy")), ctx())
    assert typo.reason is Reason.FUZZY_ONLY and (typo.rbo, typo.agreement) == (0.0, 1.0)
    # full-text matches in another order, and a fuzzy extra: the order still counts
    moved = classify(hits(A, B, C), hits(C, B, A, (X, "fuzzy")), ctx())
    assert moved.reason is Reason.FUZZY_ONLY
    assert moved.agreement == pytest.approx(rbo((A, B, C), (C, B, A))) and moved.agreement < 1
    # a shared id that only one side matched by full text
    half = classify(hits(A, B), hits(A, (B, "fuzzy"), (X, "fuzzy")), ctx())
    assert half.reason is Reason.FUZZY_ONLY and half.agreement == pytest.approx(rbo((A, B), (A,)))
    # every other reason's agreement is its rbo
    other = classify(hits(A, B, C), hits(A, C, B), ctx())
    assert other.reason is Reason.ORDER_ONLY and other.agreement == other.rbo
    assert classify(hits(A, B), hits(A, B), ctx()).agreement == 1.0


def test_k_boundary_when_full_lists_differ_only_in_their_tails() -> None:
    # limit 8 -> tail width 2; both lists full, different last items
    primary = hits(A, B, C, D, E, F, G, H)
    shadow = hits(A, B, C, D, E, F, H, X)
    c = classify(primary, shadow, ctx(limit=8))
    assert c.reason is Reason.K_BOUNDARY
    assert c.only_primary == (G,) and c.only_shadow == (X,)


def test_not_k_boundary_when_the_other_side_was_not_truncated() -> None:
    # the shadow found only 6: G and H were not cut off there, it missed them
    c = classify(hits(A, B, C, D, E, F, G, H), hits(A, B, C, D, E, F), ctx(limit=8))
    assert c.reason is Reason.UNEXPLAINED


def test_not_k_boundary_when_a_difference_is_near_the_top() -> None:
    c = classify(hits(A, B, C, D, E, F, G, H), hits(X, A, B, C, D, E, F, G), ctx(limit=8))
    assert c.reason is Reason.UNEXPLAINED


@pytest.mark.parametrize(
    ("query", "hint"),
    [
        ("what is a decorator", "stop_word"),
        ("the", "stop_word"),
        ("json.dumps", "tokenizer"),
        ("self-study", "tokenizer"),
        ("機械学習", "tokenizer"),
        ("general relativity", "stem"),
        ("news", "stem"),
    ],
)
def test_stemming_or_stopword_when_fts_differs_and_the_query_has_a_hint(
    query: str, hint: str
) -> None:
    # SQLite found C as a full-text match; PostgreSQL (shadow) did not
    c = classify(hits(A, C, B), hits(A, B), ctx(query=query))
    assert c.reason is Reason.STEMMING_OR_STOPWORD
    assert hint in c.hints and hint in c.detail


def test_unexplained_when_fts_differs_for_plain_terms() -> None:
    c = classify(hits(A, C, B), hits(A, B), ctx(query="python dict"))
    assert (c.outcome, c.reason) == (Outcome.MISMATCH, Reason.UNEXPLAINED)
    assert c.hints == frozenset()


def test_precedence_stale_mirror_beats_every_other_explanation() -> None:
    # fuzzy-only and stop words would fit too; the pending write is the most specific cause
    c = classify(hits(A, (C, "fuzzy")), hits(A), ctx(query="the", pending={C}))
    assert c.reason is Reason.STALE_MIRROR


def test_failed_comparisons_carry_the_shadow_reasons() -> None:
    t = Comparison.failed((A, B), Outcome.TIMEOUT)
    e = Comparison.failed((A,), Outcome.ERROR, "OperationalError")
    assert (t.reason, t.rbo, t.primary_ids) == (Reason.SHADOW_TIMEOUT, None, (A, B))
    assert (e.reason, e.detail) == (Reason.SHADOW_ERROR, "OperationalError")
    with pytest.raises(ValueError):
        Comparison.failed((A,), Outcome.MATCH)


def test_snapshot_is_frozen_against_later_changes_to_the_callers_list() -> None:
    results = hits(A, B)
    frozen = snapshot(results)
    results.reverse()
    results.append(hits(X)[0])
    assert [h.question_id for h in frozen] == [A, B]
    assert isinstance(frozen, tuple)


def test_freeze_keeps_frozen_results_as_they_are_and_snapshots_the_rest() -> None:
    class Mutable:  # a RankedHit whose fields can be rebound after the caller returned
        def __init__(self, question_id: uuid.UUID) -> None:
            self.question_id, self.match_kind = question_id, "fts"

    results = hits(A, B)
    frozen = freeze(results)
    results.reverse()
    assert frozen == (hits(A, B)[0], hits(A, B)[1]) and isinstance(frozen, tuple)
    assert all(type(r) is SearchResult for r in frozen)  # nothing copied: they cannot change
    mutable = [Mutable(A), Mutable(B)]
    copied = freeze(mutable)
    mutable[0].question_id = X
    assert [h.question_id for h in copied] == [A, B]
    assert [h.question_id for h in freeze([*hits(A), Mutable(B)])] == [A, B]


def test_query_terms_and_hints() -> None:
    assert query_terms("  JSON   Dumps ") == ("json", "dumps")
    assert analysis_hints(("python", "dict")) == frozenset()
    assert analysis_hints(("python", "is")) == {"stop_word"}
    assert analysis_hints(("c++",)) == {"tokenizer"}


def test_reason_values_are_exactly_the_metric_label_set() -> None:
    assert tuple(r.value for r in Reason) == DISCREPANCY_REASONS
    assert {r for r in Reason if not r.benign} == {
        Reason.SHADOW_ERROR, Reason.SHADOW_TIMEOUT, Reason.UNEXPLAINED,
    }
