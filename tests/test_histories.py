"""Randomized concurrent histories: both stores converge and keep every acknowledged write
(issue 22). What a history does: tests/histories.py. The same harness runs for minutes in
bench/soak.py.

Each history: two Repository objects (two "processes") on one SQLite file and one PostgreSQL
database, 12 shared writers racing on a handful of rows of all five tables and 3 private writers
whose last acknowledged values are modelled; then the outboxes are drained (replay only, never
reconcile) and the stores compared row by row, in 4 rounds. A failure names the seed and the first
differences.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from config.settings import Backend
from tests.histories import HistoryConfig, run_history

pytestmark = pytest.mark.slow  # see pyproject.toml's markers

SEEDS = [1, 2, 3]


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("primary", ["sqlite", "postgres"])
async def test_concurrent_history_converges(
    primary: Backend, seed: int, sqlite_path: Path, pg_dsn: str
) -> None:
    """The full history: parents deleted and re-created with the same id while their children
    are written, moved and deleted (the race that took a child with an old incarnation's delete
    on the mirror, docs/write-path.md)."""
    config = HistoryConfig(seed=seed, primary=primary, shared_ops=50)
    result = await run_history(config, sqlite_path, pg_dsn)
    assert result.ok, result.failure_message()
    assert result.acked > 400, result.summary()  # the load really ran
    assert result.private_rows_checked >= 7, result.summary()  # the model checked something


@pytest.mark.soak
@pytest.mark.parametrize("seed", range(101, 121))
@pytest.mark.parametrize("primary", ["sqlite", "postgres"])
async def test_longer_concurrent_history_converges(
    primary: Backend, seed: int, sqlite_path: Path, pg_dsn: str
) -> None:
    """The same at full length, 40 more histories (`pytest -m soak`); bench/soak.py runs the
    harness for minutes."""
    result = await run_history(HistoryConfig(seed=seed, primary=primary), sqlite_path, pg_dsn)
    assert result.ok, result.failure_message()
    assert result.acked > 1000, result.summary()


@pytest.mark.parametrize("primary", ["sqlite", "postgres"])
async def test_concurrent_history_with_flips_converges(
    primary: Backend, sqlite_path: Path, pg_dsn: str
) -> None:
    """The same, while the primary flips back and forth (every repository together, as a
    deployment does through READ_PRIMARY_FILE; a refused flip is rolled back and counted)."""
    config = HistoryConfig(seed=11, primary=primary, flips=True, shared_ops=60,
                           flip_every_s=0.04)
    result = await run_history(config, sqlite_path, pg_dsn)
    assert result.ok, result.failure_message()
    assert result.acked > 200, result.summary()
    assert result.flips + result.flips_refused >= 4, result.summary()
