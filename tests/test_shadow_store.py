"""shadow/store.py: capped, durable, private, and readable from another process."""

from __future__ import annotations

import sqlite3
import stat
import subprocess
import sys
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from shadow import (
    Comparison,
    ComparisonRecord,
    Outcome,
    Reason,
    ShadowStore,
    classify,
    fingerprint,
)
from shadow.compare import CompareContext, Hit

A, B, X = (uuid.UUID(int=i + 1) for i in range(3))

ROOT = Path(__file__).resolve().parent.parent


def record(c: Comparison, ts: float = 1000.0, query: str = "python list") -> ComparisonRecord:
    return ComparisonRecord(
        ts=ts, comparison=c, fingerprint=fingerprint(query, b"s"), query=query,
        user_id=str(uuid.UUID(int=42)), limit=20, primary_backend="sqlite",
        shadow_backend="postgres", shadow_ms=3.5,
    )


def match() -> Comparison:
    return classify([Hit(A, "fts")], [Hit(A, "fts")], CompareContext("q", 20))


def mismatch(reason_query: str = "python list") -> Comparison:
    return classify(
        [Hit(A, "fts"), Hit(B, "fts")], [Hit(A, "fts"), Hit(X, "fts")],
        CompareContext(reason_query, 20),
    )


@pytest.fixture
def store(tmp_path: Path) -> Iterator[ShadowStore]:
    s = ShadowStore(tmp_path / "data" / "shadow.db", max_comparisons=50, max_mismatches=10)
    yield s
    s.close()


def test_rows_round_trip(store: ShadowStore) -> None:
    store.add([record(match()), record(mismatch()), record(
        Comparison.failed((A, B), Outcome.TIMEOUT), query="slow one")])
    assert store.counts() == (3, 2)
    timeout, unexplained = store.recent_mismatches()
    assert timeout.outcome is Outcome.TIMEOUT and timeout.reason is Reason.SHADOW_TIMEOUT
    assert timeout.query == "slow one" and timeout.jaccard is None and timeout.shadow_ids == ()
    assert unexplained.reason is Reason.UNEXPLAINED
    assert (unexplained.primary_ids, unexplained.shadow_ids) == ((A, B), (A, X))
    assert unexplained.jaccard == pytest.approx(1 / 3)
    assert store.get_mismatch(unexplained.id) == unexplained
    assert store.get_mismatch(10_000) is None
    assert [r.reason for r in store.recent_mismatches(reason="shadow_timeout")] == [
        Reason.SHADOW_TIMEOUT
    ]


def test_both_tables_are_capped_to_the_newest_rows(store: ShadowStore) -> None:
    for i in range(8):
        store.add([record(mismatch(), ts=float(i)) for _ in range(10)])
    assert store.counts() == (50, 10)
    assert min(r.ts for r in store.recent_mismatches(100)) == 7.0
    assert store.summary(window_s=10**9, now=10.0).total == 50


def test_summary_aggregates_only_the_window(store: ShadowStore) -> None:
    store.add([record(mismatch(), ts=100.0)])  # outside the window
    store.add([record(match(), ts=1000.0), record(match(), ts=1001.0),
               record(mismatch(), ts=1002.0),
               record(Comparison.failed((A,), Outcome.ERROR), ts=1003.0)])
    s = store.summary(window_s=60.0, now=1010.0)
    assert (s.total, s.matches, s.mismatches, s.errors, s.timeouts) == (4, 2, 1, 1, 0)
    assert s.completed == 3
    assert s.mean_rbo == pytest.approx((1.0 + 1.0 + mismatch().rbo) / 3)  # type: ignore[operator]
    assert s.mean_jaccard == pytest.approx((1 + 1 + 1 / 3) / 3)
    assert s.top1_rate == pytest.approx(1.0)
    assert dict(s.by_reason) == {"unexplained": 1, "shadow_error": 1}
    assert s.unexplained == 1
    empty = store.summary(window_s=1.0, now=5000.0)
    assert (empty.total, empty.mean_rbo, empty.unexplained) == (0, None, 0)


def test_the_summary_averages_agreement_which_spares_fuzzy_only_guesses(
        store: ShadowStore) -> None:
    typo = classify([], [Hit(X, "fuzzy")], CompareContext("pyhton", 20))  # FTS5 finds nothing
    assert (typo.reason, typo.rbo, typo.agreement) == (Reason.FUZZY_ONLY, 0.0, 1.0)
    store.add([record(match(), ts=1000.0), record(typo, ts=1001.0)])
    assert store.summary(window_s=60.0, now=1010.0).mean_rbo == 1.0
    [stored] = store.recent_mismatches(10)
    assert stored.rbo == 0.0  # what `shadow list` shows is the lists' own overlap


def test_a_file_from_before_agreement_is_upgraded_and_its_rows_still_count(
        tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    old = sqlite3.connect(path)
    old.executescript(
        "CREATE TABLE comparisons (id INTEGER PRIMARY KEY, ts REAL NOT NULL, outcome TEXT NOT "
        "NULL, reason TEXT, jaccard REAL, rbo REAL, top1 INTEGER, fingerprint TEXT NOT NULL, "
        "primary_backend TEXT NOT NULL, shadow_ms REAL);"
        "INSERT INTO comparisons (ts, outcome, reason, jaccard, rbo, top1, fingerprint,"
        " primary_backend) VALUES (1000.0, 'mismatch', 'order_only', 1.0, 0.5, 0, 'f', 'sqlite')")
    old.close()
    with ShadowStore(path) as s:
        s.add([record(match(), ts=1001.0)])
        assert s.summary(window_s=60.0, now=1010.0).mean_rbo == pytest.approx(0.75)
    with ShadowStore(path) as again:  # a second open finds the column there
        assert again.summary(window_s=60.0, now=1010.0).total == 2


def test_the_file_is_private_and_in_wal_mode(store: ShadowStore) -> None:
    mode = stat.S_IMODE(store.path.stat().st_mode)
    assert mode & 0o077 == 0, oct(mode)
    with sqlite3.connect(store.path) as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    conn.close()


def test_workers_opening_a_new_file_together_all_open_it(tmp_path: Path) -> None:
    """Each opener switches a new file to WAL; SQLite refuses simultaneous switches at once."""
    for n in range(20):
        path = tmp_path / f"shadow{n}.db"
        together = threading.Barrier(6)
        errors: list[BaseException] = []

        def open_it(path: Path = path, together: threading.Barrier = together,
                    errors: list[BaseException] = errors) -> None:
            together.wait(5)
            try:
                ShadowStore(path).close()
            except sqlite3.Error as exc:
                errors.append(exc)

        threads = [threading.Thread(target=open_it) for _ in range(6)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert errors == []


def test_the_salt_persists_across_opens(tmp_path: Path) -> None:
    with ShadowStore(tmp_path / "s.db") as first:
        salt = first.salt
    with ShadowStore(tmp_path / "s.db") as second:
        assert second.salt == salt and len(salt) == 16
    with ShadowStore(tmp_path / "other.db") as third:
        assert third.salt != salt


def test_another_process_reads_what_this_one_wrote(store: ShadowStore) -> None:
    store.add([record(mismatch(), query="json dumps")])
    code = (
        "import sys\n"
        "from shadow import ShadowStore\n"
        "with ShadowStore(sys.argv[1]) as s:\n"
        "    [m] = s.recent_mismatches()\n"
        "    print(m.reason.value, m.query, s.counts()[0])\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code, str(store.path)],
        capture_output=True, text=True, check=True, timeout=60, cwd=ROOT,
    )
    assert out.stdout.split() == ["unexplained", "json", "dumps", "1"]


def test_caps_must_be_positive(tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        ShadowStore(tmp_path / "s.db", max_comparisons=0)


def test_a_shadow_store_whose_file_cannot_be_in_wal_mode_opens_or_fails_never_spins(
        tmp_path: Path) -> None:
    """`PRAGMA journal_mode=WAL` on an in-memory database answers `memory`, without an error.
    ShadowStore._use_wal retries only on an error, so its loop never ends (one core at 100%;
    before 0ac6aa7 the store opened). Run in a child with a time limit: the suite must not hang."""
    code = ("from shadow.store import ShadowStore\n"
            "try:\n"
            "    ShadowStore(':memory:').close()\n"
            "    print('opened')\n"
            "except Exception as exc:\n"
            "    print('raised', type(exc).__name__, exc)\n")
    try:
        done = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, timeout=20,
                              capture_output=True, text=True, env={"PYTHONPATH": str(ROOT)})
    except subprocess.TimeoutExpired:
        raise AssertionError("ShadowStore(':memory:') still opening after 20 s "
                             "(shadow/store.py ShadowStore._use_wal)") from None
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith(("opened", "raised OperationalError")), done.stdout
