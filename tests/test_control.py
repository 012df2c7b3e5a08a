"""The control record's rules (proxy/control.py): how READ_PRIMARY, READ_PRIMARY_FILE and
DUAL_WRITE act on the one primary a fleet shares, and the fence every primary write passes."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import replace
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from config import Settings
from config.settings import Backend, ConfigError
from proxy import FlipRefused, Repository, open_repository
from proxy.control import Control
from proxy.errors import Fenced, StoreUnavailable
from proxy.models import USERS
from proxy.stores.postgres import PostgresStore
from proxy.stores.sqlite import SQLiteStore
from tests.pgcontrol import PrivateServer


def _settings(sqlite_path: Path, pg_dsn: str, **kw: object) -> Settings:
    return Settings(sqlite_path=sqlite_path, postgres_dsn=pg_dsn, shadow_sample_rate=0.0,
                    **kw)  # type: ignore[arg-type]


async def _until(check: object, timeout_s: float = 1.0) -> float:
    """Seconds until `check()` holds; fails after `timeout_s`."""
    loop = asyncio.get_running_loop()
    start = loop.time()
    while not check():  # type: ignore[operator]
        assert loop.time() - start < timeout_s, "not within the time"
        await asyncio.sleep(0.01)
    return loop.time() - start


@pytest.mark.slow
async def test_a_rolling_restart_with_a_new_read_primary_flips_the_fleet_once(
    sqlite_path: Path, pg_dsn: str
) -> None:
    old = _settings(sqlite_path, pg_dsn, read_primary="sqlite")
    new = replace(old, read_primary="postgres")
    registry = CollectorRegistry
    async with open_repository(old, registry=registry()) as first:
        assert first.read_primary == "sqlite"
        async with open_repository(new, registry=registry()) as restarted:
            assert restarted.read_primary == "postgres"
            await _until(lambda: first.read_primary == "postgres")  # within a second
            # a process of the old deployment restarting late changes nothing
            async with open_repository(old, registry=registry()) as late:
                assert late.read_primary == "postgres"
                await asyncio.sleep(0.6)
                assert first.read_primary == restarted.read_primary == "postgres"
                # a command run without READ_PRIMARY asks for nothing either
                quiet = replace(old, read_primary_given=False)
                async with open_repository(quiet, registry=registry()) as command:
                    assert command.read_primary == "postgres"


@pytest.mark.slow
async def test_a_write_of_a_process_that_has_not_followed_is_fenced_and_retried(
    sqlite_path: Path, pg_dsn: str
) -> None:
    settings = _settings(sqlite_path, pg_dsn)
    async with open_repository(settings, registry=CollectorRegistry()) as a, \
            open_repository(settings, registry=CollectorRegistry()) as b:
        for task in b._tasks:  # b stops following: only its fenced write can tell it
            if task.get_name() == "cutover-follow":
                task.cancel()
        await a.set_read_primary("postgres", force=True)
        assert b.read_primary == "sqlite"
        user = await b.create_user(name="late", email="late@example.com")
        assert b.last_write == ("postgres", a.epoch)  # written where the record says
        assert b.read_primary == "postgres"
        for store in a.stores.values():
            assert await store.get_row(USERS, user.id) is not None or store.backend == "sqlite"


def _second_drain_fails(
    monkeypatch: pytest.MonkeyPatch, repo: Repository,
    meanwhile: Callable[[Backend], Awaitable[None]] | None = None,
) -> list[int]:
    """Make a flip's last replay (the second, after the fence) fail, once `meanwhile` ran;
    returns the count of replays so far, in a list."""
    drains = [0]
    drain = repo._drain_to

    async def replay(target: Backend) -> None:
        drains[0] += 1
        if drains[0] == 2:
            if meanwhile is not None:
                await meanwhile(target)
            raise FlipRefused(f"{target} went down")
        await drain(target)

    monkeypatch.setattr(repo, "_drain_to", replay)
    return drains


@pytest.mark.slow
async def test_a_flip_failing_after_the_fence_hands_the_primary_back_and_writes_go_on(
    sqlite_path: Path, pg_dsn: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The old primary is fenced, then the last replay fails (the target went down, say): the
    flip is refused and the primary handed back with a newer epoch, on both copies, so every
    process writes again. (The hand-back once looked for the fence on the target, which never
    held it: the rollback was refused too, and both stores refused every write.)"""
    settings = _settings(sqlite_path, pg_dsn)
    async with open_repository(settings, registry=CollectorRegistry()) as a, \
            open_repository(settings, registry=CollectorRegistry()) as b:
        before = a.epoch
        assert before is not None
        drains = _second_drain_fails(monkeypatch, a)
        with pytest.raises(FlipRefused, match="went down"):
            await a.set_read_primary("postgres")
        assert drains == [2]
        back = Control("sqlite", before + 2, True, frozenset({"sqlite"}))
        for store in a.stores.values():
            assert await store.read_control() == back
        assert (a.read_primary, a.epoch) == ("sqlite", before + 2)
        user = await a.create_user(name="after", email="after@example.com")
        assert a.last_write == ("sqlite", before + 2)
        late = await b.create_user(name="late", email="late@example.com")  # not followed yet
        assert b.last_write == ("sqlite", before + 2)
        for row in (user, late):
            assert await a.stores["sqlite"].get_row(USERS, row.id) is not None


@pytest.mark.slow
async def test_a_flip_the_fleet_finished_while_its_process_stalled_is_not_handed_back(
    sqlite_path: Path, pg_dsn: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The flipping process stalls in its last replay past the fleet's patience: another
    process finishes the flip (`_catch_up`) and the target takes writes. The stalled process's
    replay then fails; handing the primary back now would leave those writes behind, so the
    flip stands."""
    settings = _settings(sqlite_path, pg_dsn)
    async with open_repository(settings, registry=CollectorRegistry()) as a:
        before = a.epoch
        assert before is not None
        new = Control("postgres", before + 1, True, frozenset({"sqlite"}))
        drain = a._drain_to

        async def finished_meanwhile(target: Backend) -> None:
            # what the fleet's `_catch_up` does, once this one stalled
            await drain(target)
            await a.stores["postgres"].advance_control(new)

        _second_drain_fails(monkeypatch, a, finished_meanwhile)
        await a.set_read_primary("postgres")
        assert (a.read_primary, a.epoch) == ("postgres", before + 1)
        for store in a.stores.values():
            assert await store.read_control() == new


@pytest.mark.slow
async def test_a_flip_whose_target_cannot_take_its_record_is_handed_back(
    sqlite_path: Path, pg_dsn: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The last step of a flip, the target's copy of the record, fails (the target went down):
    without it the target refuses every write, so the primary is handed back (it was adopted
    regardless, and the fleet wrote nowhere)."""
    settings = _settings(sqlite_path, pg_dsn)
    async with open_repository(settings, registry=CollectorRegistry()) as a:
        before = a.epoch
        assert before is not None
        postgres = a.stores["postgres"]
        advance = postgres.advance_control

        async def down(control: Control) -> Control:
            if control.primary == "postgres":
                raise StoreUnavailable("postgres", "went down")
            return await advance(control)

        monkeypatch.setattr(postgres, "advance_control", down)
        with pytest.raises(FlipRefused, match="went down"):
            await a.set_read_primary("postgres")
        back = Control("sqlite", before + 2, True, frozenset({"sqlite"}))
        for store in a.stores.values():
            assert await store.read_control() == back
        await a.create_user(name="after", email="after@example.com")
        assert a.last_write == ("sqlite", before + 2)


@pytest.mark.slow
async def test_a_copy_of_the_record_left_behind_catches_up_without_a_restart(
    tmp_path: Path,
) -> None:
    """PostgreSQL down when the fleet started gets its copy once it is back, from the follow
    loop (before, only a process starting did that; mirror writes had no record to hold)."""
    server = PrivateServer(tmp_path / "pg")
    try:
        for store in (PostgresStore(server.dsn), SQLiteStore(tmp_path / "app.db")):
            await store.init_schema()
            await store.close()
        server.stop()
        settings = _settings(tmp_path / "app.db", server.dsn)
        async with open_repository(settings, registry=CollectorRegistry(),
                                   init_schema=False) as repo:
            server.start()
            found: list[Control | None] = [None]

            async def copied() -> bool:
                found[0] = await repo.stores["postgres"].read_control()
                return found[0] is not None

            for _ in range(300):
                if await copied():
                    break
                await asyncio.sleep(0.01)
            assert found[0] == await repo.stores["sqlite"].read_control()
    finally:
        server.cleanup()


@pytest.mark.slow
async def test_a_flip_its_process_left_unfinished_is_finished_by_the_fleet(
    sqlite_path: Path, pg_dsn: str
) -> None:
    """The flipping process stopped between fencing the old primary and writing the target's
    copy: every process then writes nowhere. Past the time a flip has for its last replay,
    a process of the fleet finishes it as the flip would: the last replay, then the copy.
    Not before it: the target must not take writes while one may still be on its way."""
    settings = _settings(sqlite_path, pg_dsn)
    async with open_repository(settings, registry=CollectorRegistry()) as repo:
        repo.drain_timeout_s = 0.5
        before = repo.epoch
        assert before is not None
        lite = repo.stores["sqlite"]
        from proxy.codec import now_utc

        now = now_utc()
        owed = {"id": uuid.uuid4(), "name": "owed", "email": "owed@example.com",
                "created_at": now, "updated_at": now}
        # the old primary's last write, not yet mirrored, then the fence: the flip stops here
        await lite.insert_row(USERS, owed, clock=1, outbox_targets=["postgres"], epoch=before)
        flip = Control("postgres", before + 1, True, frozenset({"sqlite"}))
        assert await lite.fence_control(flip, expect_epoch=before)
        await asyncio.sleep(0.3)
        assert (await repo.stores["postgres"].read_control() or flip).epoch == before
        for _ in range(300):
            if await repo.stores["postgres"].read_control() == flip:
                break
            await asyncio.sleep(0.01)
        assert await repo.stores["postgres"].read_control() == flip
        assert await repo.stores["postgres"].get_row(USERS, owed["id"]) is not None
        await repo.create_user(name="after", email="after@example.com")
        assert repo.last_write == ("postgres", before + 1)


async def test_a_store_refuses_a_write_with_another_epoch(
    store: SQLiteStore | PostgresStore,
) -> None:
    await store.advance_control(Control("sqlite", 7))
    row = {"id": uuid.uuid4(), "name": "x", "email": "x@example.com",
           "created_at": None, "updated_at": None}
    from proxy.codec import now_utc

    row["created_at"] = row["updated_at"] = now_utc()
    with pytest.raises(Fenced):
        await store.insert_row(USERS, row, clock=1, epoch=6)
    assert await store.get_row(USERS, row["id"]) is None
    written = await store.insert_row(USERS, row, clock=1, epoch=7)
    with pytest.raises(Fenced):
        await store.update_row(USERS, row["id"], {"name": "y"}, clock=1, epoch=8)
    with pytest.raises(Fenced):
        await store.delete_row(USERS, row["id"], clock=1, epoch=6)
    assert written.row is not None
    assert await store.get_row(USERS, row["id"]) == written.row
    assert not await store.fence_control(Control("postgres", 8), expect_epoch=6)
    assert await store.fence_control(Control("postgres", 8), expect_epoch=7)
    assert (await store.read_control()) == Control("postgres", 8)


@pytest.mark.slow
async def test_dual_writes_off_is_recorded_for_all_and_blocks_a_rollback_unless_forced(
    sqlite_path: Path, pg_dsn: str
) -> None:
    on = _settings(sqlite_path, pg_dsn, read_primary="postgres")
    async with open_repository(on, registry=CollectorRegistry()) as running:
        assert running.dual_write
        async with open_repository(replace(on, dual_write=False),
                                   registry=CollectorRegistry()) as last_stage:
            assert not last_stage.dual_write
            await _until(lambda: not running.dual_write)
            with pytest.raises(FlipRefused, match="dual writes are off"):
                await running.set_read_primary("sqlite")
            assert running.read_primary == "postgres"
            await running.set_read_primary("sqlite", force=True)
            assert running.read_primary == "sqlite"


@pytest.mark.slow
async def test_the_primary_file_fails_closed(
    sqlite_path: Path, pg_dsn: str, tmp_path: Path
) -> None:
    flag = tmp_path / "primary"
    flag.write_text("postgers\n")
    settings = _settings(sqlite_path, pg_dsn, read_primary_file=flag)
    with pytest.raises(ConfigError, match="READ_PRIMARY_FILE"):
        async with open_repository(settings, registry=CollectorRegistry()):
            pass
    flag.write_text("sqlite\n")
    registry = CollectorRegistry()
    async with open_repository(settings, registry=registry) as repo:
        flag.write_text("nonsense\n")
        await asyncio.sleep(1.2)
        assert repo.read_primary == "sqlite"  # kept, never READ_PRIMARY's default by surprise
        assert registry.get_sample_value("cutover_primary_source_error") == 1
        flag.write_text("postgres\n")  # a new word: a request to flip
        await _until(lambda: repo.read_primary == "postgres", 3.0)
        assert registry.get_sample_value("cutover_primary_source_error") == 0
