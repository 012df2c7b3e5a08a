"""Dead letters (issue 22, item 3): one policy decides when a failing mirror write is set aside,
for the repository's replay and `cutover reconcile` alike."""

from __future__ import annotations

import asyncio
import json
import uuid
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from config import Settings
from proxy import deadletters, open_repository
from proxy.codec import iso, now_utc
from proxy.deadletters import MISSING_PARENT_GRACE_S, is_dead
from proxy.migrate.reconcile import drain_outboxes
from proxy.migrate.verify import run_verify
from proxy.models import STUDY_BOOKS, USERS
from proxy.stores.base import ApplyOutcome, ApplyResult, Mutation, OutboxEntry
from proxy.stores.postgres import PostgresStore
from proxy.stores.sqlite import SQLiteStore
from tests.test_verify import both, lite_exec, pg_exec

__all__ = ["both"]  # the fixture, shared with test_verify

NO_BOB = "ALTER TABLE users ADD CONSTRAINT no_bob CHECK (name <> 'bob')"


def _stamp() -> dict[str, Any]:
    return {"created_at": now_utc(), "updated_at": now_utc()}


async def user_for_postgres(store: SQLiteStore, name: str, *, version: int = 10) -> uuid.UUID:
    """A user written on SQLite whose mirror write to PostgreSQL waits in SQLite's outbox."""
    uid = uuid.uuid4()
    await store.insert_row(USERS, {"id": uid, "name": name, "email": f"{uid.hex}@example.com",
                                   **_stamp()}, clock=version, outbox_targets=["postgres"])
    return uid


def test_the_policy() -> None:
    now = now_utc()
    entry = OutboxEntry(1, "postgres", Mutation("user", "delete", uuid.uuid4(), 1), now,
                        attempts=deadletters.MAX_ATTEMPTS - 2)
    permanent = ApplyResult(ApplyOutcome.FAILED, "check", permanent=True)
    missing_parent = ApplyResult(ApplyOutcome.FAILED, "foreign key")
    assert not is_dead(entry, permanent, now=now)
    tired = OutboxEntry(1, "postgres", entry.mutation, now, attempts=deadletters.MAX_ATTEMPTS - 1)
    assert is_dead(tired, permanent, now=now)
    # a missing parent: retried however often until the grace is over
    assert not is_dead(tired, missing_parent, now=now)
    later = now + timedelta(seconds=MISSING_PARENT_GRACE_S + 1)
    assert is_dead(entry, missing_parent, now=later)


@pytest.mark.slow
async def test_reconcile_and_the_repository_read_the_same_limit(
        sqlite_store: SQLiteStore, pg_store: PostgresStore, pg_schema_dsn: str, sqlite_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(deadletters, "MAX_ATTEMPTS", 3)
    await pg_exec(pg_schema_dsn, NO_BOB)
    # reconcile: a constraint only PostgreSQL enforces is retried, not given up at once
    await user_for_postgres(sqlite_store, "bob")
    outcomes = []
    for _ in range(3):
        report = await drain_outboxes(sqlite_store, pg_store)
        outcomes.append({k: v for k, v in report["sqlite->postgres"].items() if v})
    assert outcomes == [{"failed": 1}, {"failed": 1}, {"dead": 1}]
    [dead] = await sqlite_store.outbox_dead("postgres", 10)
    assert dead.attempts == 3 and "no_bob" in (dead.last_error or "")
    await sqlite_store.outbox_ack([dead.seq])

    # the repository's replay: the same limit
    settings = Settings(sqlite_path=sqlite_path, postgres_dsn=pg_schema_dsn)
    async with open_repository(settings) as repo:
        bob = await repo.create_user(name="bob", email="bob@example.com")
        for _ in range(20):
            await repo.replay_once()
            if (await repo.outbox_stats())["postgres"].dead:
                break
        [dead] = await repo.stores["sqlite"].outbox_dead("postgres", 10)
        # given up after 3 tries, not 10 (the background loop's passes may overlap these,
        # and two passes reading the same entry both count a try)
        assert dead.mutation.row_id == bob.id and 3 <= dead.attempts < 10


@pytest.mark.slow
async def test_reconcile_waits_out_the_grace_for_a_missing_parent(
        sqlite_store: SQLiteStore, pg_store: PostgresStore, sqlite_path: Path) -> None:
    user = await sqlite_store.create_user(name="A", email="a@example.com")  # never mirrored
    await sqlite_store.insert_row(
        STUDY_BOOKS, {"id": uuid.uuid4(), "user_id": user.id, "title": "T",
                      "description": None, **_stamp()},
        clock=12, outbox_targets=["postgres"])
    for _ in range(deadletters.MAX_ATTEMPTS + 1):  # the backfill may still bring the parent
        report = await drain_outboxes(sqlite_store, pg_store)
        assert report["sqlite->postgres"]["failed"] == 1, report
    old = iso(now_utc() - timedelta(seconds=MISSING_PARENT_GRACE_S + 60))
    lite_exec(sqlite_path, "UPDATE cutover_outbox SET created_at = ?", old)
    report = await drain_outboxes(sqlite_store, pg_store)
    assert report["sqlite->postgres"]["dead"] == 1
    [dead] = await sqlite_store.outbox_dead("postgres", 10)
    assert "foreign key" in (dead.last_error or "").lower()




async def dead_letter_for_postgres(store: SQLiteStore) -> uuid.UUID:
    """A user on SQLite only, its mirror write to PostgreSQL set aside as a dead letter."""
    uid = uuid.uuid4()
    seq = (await store.insert_row(
        USERS, {"id": uid, "name": "bob", "email": f"{uid.hex}@example.com", **_stamp()},
        clock=10, outbox_targets=["postgres"])).seq
    assert seq is not None
    await store.outbox_retry(seq, "CheckViolationError: violates check constraint \"no_bob\"",
                             dead=True)
    return uid


# -- the flip -------------------------------------------------------------------------------


async def test_the_library_refuses_a_flip_to_a_store_with_dead_letters(
        sqlite_store: SQLiteStore, sqlite_path: Path, pg_dsn: str) -> None:
    from proxy import FlipRefused

    uid = await dead_letter_for_postgres(sqlite_store)
    settings = Settings(sqlite_path=sqlite_path, postgres_dsn=pg_dsn)
    async with open_repository(settings) as repo:
        assert await repo.stores["postgres"].get_row(USERS, uid) is None
        with pytest.raises(FlipRefused) as refused:
            await repo.set_read_primary("postgres")
        assert "1 dead letter for postgres" in str(refused.value)
        assert "cutover reconcile --retry-dead" in str(refused.value)
        assert repo.read_primary == "sqlite"
        await repo.set_read_primary("postgres", force=True)
        assert repo.read_primary == "postgres"


def test_the_cli_refuses_a_flip_to_a_store_with_dead_letters(
        sqlite_schema_path: Path, pg_schema_dsn: str, tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from proxy.app.cli import app

    async def setup() -> None:
        store = SQLiteStore(sqlite_schema_path)
        try:
            for _ in range(3):
                await dead_letter_for_postgres(store)
        finally:
            await store.close()

    asyncio.run(setup())
    flag = tmp_path / "primary"
    env = {"SQLITE_PATH": str(sqlite_schema_path), "POSTGRES_DSN": pg_schema_dsn,
           "READ_PRIMARY_FILE": str(flag)}
    refused = CliRunner().invoke(app, ["read-primary", "postgres"], env=env)
    assert refused.exit_code == 4  # refused, not bad usage (2)
    assert "3 dead letters for postgres" in refused.output
    assert "cutover reconcile --retry-dead" in refused.output
    assert not flag.exists()
    forced = CliRunner().invoke(app, ["read-primary", "postgres", "--force"], env=env)
    assert forced.exit_code == 0, forced.output
    assert flag.read_text().strip() == "postgres"


@pytest.mark.slow
async def test_the_http_endpoint_refuses_a_flip_to_a_store_with_dead_letters(
        sqlite_store: SQLiteStore, sqlite_path: Path, pg_dsn: str) -> None:
    from tests.test_service import ADMIN, bearer, client_for

    await dead_letter_for_postgres(sqlite_store)
    settings = Settings(sqlite_path=sqlite_path, postgres_dsn=pg_dsn, admin_token=ADMIN)
    async with client_for(settings) as (client, repo):
        r = await client.put("/admin/read-primary", json={"read_primary": "postgres"},
                             headers=bearer(ADMIN))
        assert r.status_code == 409
        assert "1 dead letter for postgres" in r.json()["error"]
        assert "--retry-dead" in r.json()["error"]
        assert repo.read_primary == "sqlite"
        r = await client.put("/admin/read-primary",
                             json={"read_primary": "postgres", "force": True},
                             headers=bearer(ADMIN))
        assert r.status_code == 200 and repo.read_primary == "postgres"


# -- verify ---------------------------------------------------------------------------------


async def test_verify_counts_dead_letters_as_differences(
        both: Any, sqlite_path: Path, pg_dsn: str) -> None:
    sqlite_store, _ = both
    uid = await dead_letter_for_postgres(sqlite_store)
    report = await run_verify(sqlite_path, pg_dsn, queries=0)
    assert not report.ok
    assert report.totals["dead_letters"] == 1
    [dead] = report.to_json()["dead_letters"]
    assert (dead["target"], dead["entity"], dead["id"]) == ("postgres", "user", str(uid))
    assert "no_bob" in dead["last_error"]


@pytest.mark.slow
def test_the_verify_command_exits_1_and_lists_dead_letters(
        both: Any, sqlite_path: Path, pg_dsn: str) -> None:
    from typer.testing import CliRunner

    from proxy.app.cli import app

    sqlite_store, _ = both
    uid = asyncio.run(dead_letter_for_postgres(sqlite_store))
    env = {"POSTGRES_DSN": pg_dsn, "SQLITE_PATH": str(sqlite_path)}
    as_json = CliRunner().invoke(app, ["verify", "--json", "--sample-queries", "0"], env=env)
    assert as_json.exit_code == 1, as_json.output
    doc = json.loads(as_json.stdout)
    assert doc["ok"] is False and doc["totals"]["dead_letters"] == 1
    assert [d["id"] for d in doc["dead_letters"]] == [str(uid)]
    text = CliRunner().invoke(app, ["verify", "--sample-queries", "0"], env=env)
    assert text.exit_code == 1
    assert "dead letters (1" in text.stdout and str(uid) in text.stdout
    assert "no_bob" in text.stdout and "the stores differ" in text.stdout


# -- requeueing -----------------------------------------------------------------------------


async def test_a_store_requeues_its_dead_letters(store: SQLiteStore | PostgresStore) -> None:
    target = "postgres" if store.backend == "sqlite" else "sqlite"
    uid = uuid.uuid4()
    seq = (await store.insert_row(
        USERS, {"id": uid, "name": "A", "email": "a@example.com", **_stamp()}, clock=10,
        outbox_targets=[target])).seq
    assert seq is not None
    await store.outbox_retry(seq, "first", dead=False)
    await store.outbox_retry(seq, "given up", dead=True)
    assert await store.outbox_pending(target, 10) == []
    assert await store.outbox_requeue_dead(target) == 1
    [entry] = await store.outbox_pending(target, 10)
    assert (entry.seq, entry.dead, entry.attempts, entry.last_error) == (seq, False, 0,
                                                                         "given up")
    assert await store.outbox_dead(target, 10) == []
    assert (await store.outbox_stats(target)).dead == 0
    assert await store.outbox_requeue_dead(target) == 0


@pytest.mark.slow
async def test_reconcile_retry_dead_requeues_and_the_stores_converge(
        both: Any, sqlite_path: Path, pg_dsn: str) -> None:
    from typer.testing import CliRunner

    from proxy.app.cli import app

    def cutover(*args: str) -> Any:  # in a thread: the command runs its own event loop
        env = {"POSTGRES_DSN": pg_dsn, "SQLITE_PATH": str(sqlite_path)}
        return asyncio.to_thread(CliRunner().invoke, app, list(args), env=env)

    sqlite_store, pg_store = both
    await pg_exec(pg_dsn, NO_BOB)
    bob = await dead_letter_for_postgres(sqlite_store)
    pat = uuid.uuid4()
    seq = (await pg_store.insert_row(
        USERS, {"id": pat, "name": "P", "email": "p@example.com", **_stamp()}, clock=11,
        outbox_targets=["sqlite"])).seq
    assert seq is not None
    await pg_store.outbox_retry(seq, "sqlite was locked", dead=True)
    # a plain reconcile leaves dead letters alone, and says the stores still differ
    plain = await cutover("reconcile", "--json")
    assert plain.exit_code == 1, plain.output
    doc = json.loads(plain.stdout)
    assert doc["verify"]["totals"]["dead_letters"] == 2 and doc["requeued"] == {}
    # the cause is fixed; the dead letters are replayed
    await pg_exec(pg_dsn, "ALTER TABLE users DROP CONSTRAINT no_bob")
    retried = await cutover("reconcile", "--retry-dead", "--json")
    assert retried.exit_code == 0, retried.output
    doc = json.loads(retried.stdout)
    assert doc["requeued"] == {"sqlite->postgres": 1, "postgres->sqlite": 1}
    assert doc["drained"]["sqlite->postgres"]["applied"] == 1
    assert doc["drained"]["postgres->sqlite"]["applied"] == 1
    assert doc["ok"] is True and doc["verify"]["totals"]["dead_letters"] == 0
    verified = await cutover("verify", "--sample-queries", "0")
    assert verified.exit_code == 0, verified.output
    on_pg = await pg_store.get_row(USERS, bob)
    on_lite = await sqlite_store.get_row(USERS, pat)
    assert on_pg is not None and on_pg["name"] == "bob"
    assert on_lite is not None and on_lite["name"] == "P"
