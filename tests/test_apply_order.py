"""Whatever order a mirror receives the primary's writes in, it ends equal to the primary.

A random history of writes over a handful of related rows (moves between parents, updates of
children, deletes and re-creates of parents with the same id) runs on the primary alone, each
write leaving its outbox entry. The entries then reach the mirror shuffled, in random batches,
through the same path the replay loop uses (`proxy.mirror.apply_following`), with failures
retried as the loop would: after that, 0 differences, compared before any repair. Reordering the
entries covers every interleaving of concurrent writers' mirror writes, other processes' ones
included, without relying on a race to happen.
"""

from __future__ import annotations

import contextlib
import random
import uuid
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from config import Settings
from metrics import Metrics
from proxy import NotFoundError, Repository, ValidationError
from proxy.mirror import apply_following
from proxy.stores.base import ApplyOutcome
from proxy.stores.postgres import PostgresStore
from proxy.stores.sqlite import SQLiteStore
from tests.convergence import differences

pytestmark = pytest.mark.slow  # see pyproject.toml's markers

SEEDS = range(12)


def _ids(prefix: int, n: int) -> list[uuid.UUID]:
    return [uuid.UUID(int=(prefix << 64) + i) for i in range(n)]


USERS, BOOKS, QUESTIONS, LOGS, EVENTS = (_ids(k, n) for k, n in
                                         ((1, 2), (2, 3), (3, 4), (4, 4), (5, 2)))


async def _one_write(repo: Repository, rng: random.Random, n: int) -> None:
    """One random write; a refused one (missing row or parent, taken id) is just skipped."""
    user, book, question = rng.choice(USERS), rng.choice(BOOKS), rng.choice(QUESTIONS)
    log, event = rng.choice(LOGS), rng.choice(EVENTS)
    writes: list[Any] = [
        lambda: repo.create_user(id=user, name=f"u{n}", email=f"{user.hex}@example.com"),
        lambda: repo.update_user(user, name=f"u{n}"),
        lambda: repo.delete_user(user),
        lambda: repo.create_study_book(id=book, user_id=user, title=f"b{n}"),
        lambda: repo.update_study_book(book, title=f"b{n}", user_id=user),
        lambda: repo.delete_study_book(book),
        lambda: repo.create_question(id=question, study_book_id=book, language="en",
                                     category="c", difficulty="easy", question=f"q{n}",
                                     answer="a"),
        lambda: repo.update_question(question, study_book_id=book),
        lambda: repo.update_question(question, answer=f"a{n}"),
        lambda: repo.delete_question(question),
        lambda: repo.record_typing_log(id=log, user_id=user, question_id=question, wpm=n,
                                       accuracy="50.00", took_ms=n),
        lambda: repo.update_typing_log(log, wpm=n, question_id=question),
        lambda: repo.update_typing_log(log, took_ms=n),
        lambda: repo.delete_typing_log(log),
        lambda: repo.record_learning_event(id=event, user_id=str(user), app_id="a",
                                           action=f"x{n}"),
        lambda: repo.delete_learning_event(event),
    ]
    with contextlib.suppress(NotFoundError, ValidationError):
        await rng.choice(writes)()


class InlineRefused:
    """A real store that refuses inline mirror writes: after the first, the repository tries no
    more (its breaker opens), so every mirror write waits in the primary's outbox."""

    def __init__(self, store: SQLiteStore | PostgresStore) -> None:
        self._store = store

    def __getattr__(self, name: str) -> Any:
        return getattr(self._store, name)

    async def apply_inline(self, mutations: Any) -> Any:
        raise ConnectionError("inline mirror writes refused")


async def _history_then_shuffled_mirror(
    primary: SQLiteStore | PostgresStore, mirror: SQLiteStore | PostgresStore,
    settings: Settings, seed: int,
) -> list[str]:
    rng = random.Random(seed)
    stores = {primary.backend: primary, mirror.backend: InlineRefused(mirror)}
    repo = Repository(settings, stores["sqlite"], stores["postgres"],  # type: ignore[arg-type]
                      metrics=Metrics(CollectorRegistry()))
    for n in range(120):
        await _one_write(repo, rng, n)
    pending = await primary.outbox_pending(mirror.backend, 10_000)
    assert pending, "the history wrote nothing"
    for _ in range(20):  # passes, as the replay loop makes them
        rng.shuffle(pending)
        failed = []
        while pending:
            size = rng.randint(1, 8)
            batch, pending = pending[:size], pending[size:]
            results = await apply_following(primary, mirror, [e.mutation for e in batch])
            failed += [e for e, r in zip(batch, results, strict=True)
                       if r.outcome is ApplyOutcome.FAILED]
        pending = failed
        if not pending:
            break
    assert not pending, f"seed {seed}: entries never applied: {pending[:3]}"
    return await differences(primary, mirror)


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("primary_name", ["sqlite", "postgres"])
async def test_any_order_of_the_primarys_writes_leaves_the_mirror_equal(
    sqlite_schema_path: Path, pg_schema_dsn: str, primary_name: str, seed: int,
) -> None:
    sqlite = SQLiteStore(sqlite_schema_path)
    postgres = PostgresStore(pg_schema_dsn)
    try:
        settings = Settings(sqlite_path=sqlite_schema_path, postgres_dsn=pg_schema_dsn,
                            read_primary=primary_name)  # type: ignore[arg-type]
        primary, mirror = (sqlite, postgres) if primary_name == "sqlite" else (postgres, sqlite)
        diffs = await _history_then_shuffled_mirror(primary, mirror, settings, seed)
        assert not diffs, f"seed {seed}: {len(diffs)} differences, first: {diffs[:3]}"
    finally:
        await sqlite.close()
        await postgres.close()
