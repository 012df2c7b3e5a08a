"""A write that loses PostgreSQL's multixact race (XX000 "new multixact has more than one
updating member", see proxy.stores.postgres.MULTIXACT_RACE) changed nothing and is run again.

The race itself needs a backend stopped between its abort reaching pg_xact and its leaving the
ProcArray (a debugger: bench/multixact_race.py); here a trigger raises the same error, once (a
sequence: its value survives the rollback), in the statement or transaction under test."""

from __future__ import annotations

import asyncpg
import pytest

from proxy import NotFoundError, PostgresStore
from proxy.models import USERS
from proxy.stores.base import Mutation
from proxy.stores.postgres import MULTIXACT_RACE

_ONCE = f"""
CREATE SEQUENCE race_once;
CREATE FUNCTION race_once() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF nextval('race_once') = 1 THEN
        RAISE EXCEPTION '{MULTIXACT_RACE}: 0 3[1 (nokeyupd), 2 (keysh), 3 (nokeyupd)]'
            USING ERRCODE = 'XX000';
    END IF;
    RETURN NULL;
END $$;
"""


async def _lose_the_race_once(dsn: str, table: str, event: str) -> None:
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute(_ONCE + f"CREATE TRIGGER race_once AFTER {event} ON {table} "
                           "FOR EACH ROW EXECUTE FUNCTION race_once()")
    finally:
        await conn.close()


async def _raced(dsn: str) -> int:
    conn = await asyncpg.connect(dsn)
    try:
        return int(await conn.fetchval("SELECT last_value FROM race_once"))
    finally:
        await conn.close()


async def test_a_primary_update_that_lost_the_race_is_run_again(
    pg_store: PostgresStore, pg_schema_dsn: str
) -> None:
    user = await pg_store.create_user(name="Aiko", email="aiko@example.com")
    book = await pg_store.create_study_book(user_id=user.id, title="Python")
    other = await pg_store.create_study_book(user_id=user.id, title="Other")
    q = await pg_store.create_question(study_book_id=book.id, language="en", category="c",
                                       difficulty="d", question="moved?", answer="yes")
    await _lose_the_race_once(pg_schema_dsn, "questions", "UPDATE")
    moved = await pg_store.update_question(q.id, study_book_id=other.id)
    assert moved.study_book_id == other.id
    assert (await pg_store.get_question(q.id)).study_book_id == other.id
    assert await _raced(pg_schema_dsn) == 2  # the first attempt raised, the second did not


async def test_a_primary_delete_with_its_cascade_that_lost_the_race_is_run_again(
    pg_store: PostgresStore, pg_schema_dsn: str
) -> None:
    user = await pg_store.create_user(name="Aiko", email="aiko@example.com")
    book = await pg_store.create_study_book(user_id=user.id, title="Python")
    q = await pg_store.create_question(study_book_id=book.id, language="en", category="c",
                                       difficulty="d", question="gone?", answer="yes")
    log = await pg_store.record_typing_log(user_id=user.id, question_id=q.id, wpm=1,
                                           accuracy=1, took_ms=1)
    await _lose_the_race_once(pg_schema_dsn, "typing_logs", "UPDATE")  # the SET NULL
    await pg_store.delete_study_book(book.id)
    with pytest.raises(NotFoundError):
        await pg_store.get_question(q.id)
    assert (await pg_store.get_typing_log(log.id)).question_id is None
    assert await _raced(pg_schema_dsn) == 2


async def test_a_mirror_batch_that_lost_the_race_is_run_again(
    pg_store: PostgresStore, pg_schema_dsn: str
) -> None:
    user = await pg_store.create_user(name="Aiko", email="aiko@example.com")
    await _lose_the_race_once(pg_schema_dsn, "users", "UPDATE")
    row = {"id": user.id, "name": "Renamed", "email": user.email,
           "created_at": user.created_at, "updated_at": user.updated_at}
    (_, version), = (await pg_store.get_versioned(USERS, [user.id])).values()
    await pg_store.apply([Mutation("user", "update", user.id, version + 1, row)])
    assert (await pg_store.get_user(user.id)).name == "Renamed"
    assert await _raced(pg_schema_dsn) == 2
