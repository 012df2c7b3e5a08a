"""shadow/'s public face, and replaying a stored mismatch."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from pathlib import Path

import pytest

import shadow
from proxy.models import SearchResult
from shadow import ComparisonRecord, Outcome, Reason, ShadowStore, classify, replay_mismatch
from shadow.compare import CompareContext, Hit

A, B, X = (uuid.UUID(int=i + 1) for i in range(3))

ROOT = Path(__file__).resolve().parent.parent


def test_all_is_complete_and_sorted() -> None:
    # the submodules
    modules = {"compare", "experiment", "recorder", "replay", "store", "verdict", "worker"}
    public = {n for n in dir(shadow) if not n.startswith("_")} - modules
    assert set(shadow.__all__) == public
    assert list(shadow.__all__) == sorted(shadow.__all__, key=lambda s: (not s.isupper(), s))


def test_shadow_imports_nothing_of_the_stores_or_the_repository() -> None:
    import subprocess
    import sys

    code = (
        "import sys, shadow\n"
        "bad = [m for m in sys.modules if m.startswith('proxy') and m != 'proxy.models']\n"
        "print(','.join(bad))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, timeout=60, cwd=ROOT)
    assert out.stdout.strip() == ""


def _stored(tmp_path: Path, query: str | None) -> tuple[ShadowStore, int]:
    store = ShadowStore(tmp_path / "shadow.db")
    c = classify([Hit(A, "fts"), Hit(B, "fts")], [Hit(A, "fts"), Hit(X, "fts")],
                CompareContext("python list", 20))
    store.add([ComparisonRecord(ts=1.0, comparison=c, fingerprint="f", query=query,
                                user_id=str(uuid.UUID(int=9)), limit=5,
                                primary_backend="sqlite", shadow_backend="postgres")])
    [record] = store.recent_mismatches()
    return store, record.id


async def test_replay_searches_both_stores_with_the_stored_query(tmp_path: Path) -> None:
    store, mid = _stored(tmp_path, "python list")
    record = store.get_mismatch(mid)
    store.close()
    assert record is not None and record.reason is Reason.UNEXPLAINED
    calls: list[tuple[str, str, str, int]] = []

    async def search(backend: str, query: str, user_id: str, limit: int
                     ) -> Sequence[SearchResult]:
        calls.append((backend, query, user_id, limit))
        ids = (A, B) if backend == "sqlite" else (B, A)
        return [SearchResult(i, "q", "a", "q", 1.0, "fts") for i in ids]

    again = await replay_mismatch(record, search)
    assert sorted(calls) == [("postgres", "python list", str(uuid.UUID(int=9)), 5),
                             ("sqlite", "python list", str(uuid.UUID(int=9)), 5)]
    assert (again.outcome, again.reason) == (Outcome.MISMATCH, Reason.ORDER_ONLY)
    assert again.primary_ids == (A, B)
    flipped = await replay_mismatch(record, search, primary_backend="postgres")
    assert flipped.primary_ids == (B, A)


async def test_replay_needs_the_stored_query(tmp_path: Path) -> None:
    store, mid = _stored(tmp_path, None)
    record = store.get_mismatch(mid)
    store.close()
    assert record is not None

    async def search(*args: object) -> Sequence[SearchResult]:
        raise AssertionError("must not search")

    with pytest.raises(ValueError, match="no stored query text"):
        await replay_mismatch(record, search)
