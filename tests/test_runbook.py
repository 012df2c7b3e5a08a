"""The README's runbook, end to end, as one test on real databases.

legacy app.db -> `cutover schema init` (backup written) -> the repository under a write load with
dual writes on (SQLite primary) -> `cutover backfill` while that load runs -> `cutover verify` (0)
-> shadowed searches until the go/no-go verdict says go -> the flip to PostgreSQL -> a rollback
to SQLite -> `cutover verify` (0) -> the flip again and the last stage, DUAL_WRITE=off: writes
reach PostgreSQL alone, SQLite falls behind, and verify says so (exit 1), which is why a rollback
after that stage needs a backfill the other way.
"""

from __future__ import annotations

import asyncio
import json
import random
import sqlite3
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import structlog
from prometheus_client import CollectorRegistry
from typer.testing import CliRunner

from config import Settings
from proxy import NotFoundError, Repository, ValidationError, open_repository
from proxy.app.cli import app as cli_app
from proxy.app.sample_data import sample_questions
from proxy.legacy import legacy_uuid
from proxy.stores.sqlite_schema import LEGACY_SCHEMA

LEGACY_SCHEMA_FILES = [Path(__file__).resolve().parents[1] / "docs" / "legacy_schema.sql",
                       Path(__file__).resolve().parents[2] / "shared" / "legacy_schema.sql",
                       Path("/work/shared/legacy_schema.sql")]
TS = "2024-03-05T12:34:56Z"
LEGACY_USER = "legacy-user-7"  # not a UUID: both stores get uuid5(LEGACY_NAMESPACE, it)
N_QUESTIONS = 120


def legacy_schema() -> str:
    """legacy_schema.sql beside the checkout, else the project's copy of its tables."""
    for path in LEGACY_SCHEMA_FILES:
        if path.is_file():
            return path.read_text(encoding="utf-8")
    return LEGACY_SCHEMA


def make_legacy_db(path: Path) -> dict[str, list[str]]:
    """An app.db as the application keeps it today: real text, one non-UUID id, one orphan."""
    rng = random.Random(7)
    conn = sqlite3.connect(path)
    conn.executescript(legacy_schema())
    ids: dict[str, list[str]] = {"users": [], "books": [], "questions": []}
    with conn:
        for i, uid in enumerate([str(uuid.uuid4()), str(uuid.uuid4()), LEGACY_USER]):
            conn.execute("INSERT INTO users VALUES (?, ?, ?, ?, ?)",
                         (uid, f"Legacy {i}", f"legacy{i}@example.com", TS, TS))
            book = str(uuid.uuid4())
            conn.execute("INSERT INTO study_books VALUES (?, ?, ?, ?, ?, ?)",
                         (book, uid, "Python standard library", None, TS, TS))
            ids["users"].append(uid)
            ids["books"].append(book)
        for i, q in enumerate(sample_questions(N_QUESTIONS)):
            qid = str(uuid.uuid4())
            conn.execute("INSERT INTO questions VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                         (qid, ids["books"][i % 3], q.language, q.category, q.difficulty,
                          q.question, q.answer, TS, TS))
            conn.execute("INSERT INTO questions_fts (question_id, question, answer) "
                         "VALUES (?, ?, ?)", (qid, q.question, q.answer))
            ids["questions"].append(qid)
        for i in range(60):
            conn.execute("INSERT INTO typing_logs VALUES (?, ?, ?, ?, ?, ?, ?)",
                         (str(uuid.uuid4()), ids["users"][i % 3], rng.choice(ids["questions"]),
                          rng.randint(20, 120), round(rng.uniform(70, 100), 2),
                          rng.randint(1000, 60000), TS))
            conn.execute("INSERT INTO learning_events VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                         (str(uuid.uuid4()), ids["users"][i % 3], "quiz", "answered",
                          rng.choice(ids["questions"]), round(rng.uniform(0, 10), 2),
                          rng.randint(100, 9000), TS))
        # foreign keys were not enforced: a book whose user is gone (the backfill rejects it)
        conn.execute("INSERT INTO study_books VALUES (?, ?, ?, ?, ?, ?)",
                     ("orphan-book", "ghost-user", "Orphan", None, TS, TS))
    conn.close()
    return ids


class WriteLoad:
    """The application: writes (and searches) through the repository until stopped."""

    def __init__(self, repo: Repository, legacy: dict[str, list[str]]) -> None:
        self.repo = repo
        self.users = [self._uid(u) for u in legacy["users"]]
        self.questions = [uuid.UUID(q) for q in legacy["questions"]]
        self.created: list[uuid.UUID] = []
        self.rng = random.Random(11)
        self.writes = 0
        self.primaries: set[str] = set()
        self._running = asyncio.Event()
        self._idle = asyncio.Lock()
        self._stop = False
        self._task: asyncio.Task[None] | None = None
        #: writes that reference legacy rows wait until the backfill has copied those rows
        #: (see test_mirror_writes_to_rows_not_yet_backfilled_wait_for_the_backfill)
        self.legacy_rows_copied = False

    @staticmethod
    def _uid(legacy_id: str) -> uuid.UUID:
        try:
            return uuid.UUID(legacy_id)
        except ValueError:
            return legacy_uuid(legacy_id)

    def start(self) -> None:
        self._running.set()
        self._task = asyncio.create_task(self._loop())

    async def pause(self) -> None:
        """Stop writing and wait for the write in flight (the stores can then be compared)."""
        self._running.clear()
        async with self._idle:
            pass

    def resume(self) -> None:
        self._running.set()

    async def stop(self) -> None:
        self._stop = True
        self._running.set()
        assert self._task is not None
        await self._task

    async def _loop(self) -> None:
        while not self._stop:
            await self._running.wait()
            async with self._idle:
                if self._stop or not self._running.is_set():
                    continue
                try:
                    await self._one()
                    self.writes += 1
                    self.primaries.add(self.repo.read_primary)
                except (NotFoundError, ValidationError):
                    pass  # a row this load deleted a moment ago
            await asyncio.sleep(0.005)

    async def _one(self) -> None:
        repo, rng = self.repo, self.rng
        roll = rng.random()
        if not self.legacy_rows_copied:
            # new rows only: a user of its own, their books and questions
            user = await repo.create_user(name="New user", email=f"u{uuid.uuid4().hex}@ex.com")
            book = await repo.create_study_book(user_id=user.id, title="New book")
            q = await repo.create_question(
                study_book_id=book.id, language="en", category="runbook", difficulty="easy",
                question="What does the backfill copy?", answer="The rows written before it.")
            if roll < 0.3:
                await repo.update_question(q.id, difficulty="medium")
            self.created.append(q.id)
            return
        user = rng.choice(self.users)
        if roll < 0.25:
            book = await repo.create_study_book(user_id=user, title="New book")
            q = await repo.create_question(
                study_book_id=book.id, language="en", category="runbook", difficulty="easy",
                question=f"What happens at step {self.writes}?", answer="The cutover goes on.")
            self.created.append(q.id)
        elif roll < 0.50:
            # legacy rows change while the backfill copies them: the newer write must win
            await repo.update_question(rng.choice(self.questions),
                                       difficulty=rng.choice(("easy", "medium", "hard")))
        elif roll < 0.75:
            await repo.record_typing_log(user_id=user, question_id=rng.choice(self.questions),
                                         wpm=rng.randint(20, 120), accuracy="88.50",
                                         took_ms=rng.randint(1000, 9000))
        elif roll < 0.90:
            await repo.record_learning_event(user_id=str(user), app_id="quiz",
                                             action="answered", score="5.00")
        elif self.created:
            await repo.delete_question(self.created.pop(0))


async def flip_by_file(repo: Repository, target: str) -> None:
    """`cutover read-primary TARGET` as an operator runs it, then wait for the repository.

    `cutover status` first: the verdict and the outbox are what the command checks itself.
    `--force` then, because under live writes the outbox is never empty at the instant the
    command counts it (writes in flight, acknowledgements flushed in batches), so without it the
    command refuses for as long as the application writes (reported to the owner of
    proxy/app/ops_commands.py).
    """
    result = await cutover("status", "--json")
    assert result.exit_code == 0, result.output
    status = json.loads(result.stdout)
    if target == "postgres":
        assert status["verdict"]["go"], status["verdict"]["reasons"]
    assert status["outbox"][target]["dead_letters"] == 0
    assert status["outbox"][target]["oldest_age_s"] < 5.0  # in flight, not stuck
    result = await cutover("read-primary", target, "--force")
    assert result.exit_code == 0, result.output
    for _ in range(60):
        if repo.read_primary == target:
            return
        await asyncio.sleep(0.1)
    raise AssertionError(f"the repository did not follow READ_PRIMARY_FILE to {target}")


@pytest.fixture
def keep_structlog_config() -> Iterator[None]:
    """The CLI commands configure structlog for their process; put the session's back."""
    saved = structlog.get_config()
    yield
    structlog.configure(**saved)


async def cutover(*args: str) -> Any:
    """Run a `cutover` command as an operator would (in a thread: the application keeps going).

    The commands configure structlog for their own process; here that process is this one, so
    the configuration is put back for the application's loggers.
    """
    saved = structlog.get_config()
    try:
        return await asyncio.to_thread(CliRunner().invoke, cli_app, list(args))
    finally:
        structlog.configure(**saved)


@pytest.mark.slow
async def test_the_runbook_end_to_end(
    tmp_path: Path, pg_dsn: str, monkeypatch: pytest.MonkeyPatch, keep_structlog_config: None,
) -> None:
    app_db = tmp_path / "app.db"
    primary_file = tmp_path / "read_primary"
    rejects = tmp_path / "backfill-rejects.jsonl"
    legacy = make_legacy_db(app_db)
    for name, value in {"SQLITE_PATH": str(app_db), "POSTGRES_DSN": pg_dsn,
                        "READ_PRIMARY_FILE": str(primary_file), "DUAL_WRITE": "on",
                        "SHADOW_SAMPLE_RATE": "1.0"}.items():
        monkeypatch.setenv(name, value)
    for name in ("READ_PRIMARY", "METRICS_PORT", "API_TOKEN", "ADMIN_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    primary_file.write_text("sqlite\n")

    # 1. schema on both stores; the legacy file is upgraded in place after a backup
    result = await cutover("schema", "init")
    assert result.exit_code == 0, result.output
    backups = list(tmp_path.glob("app.db.bak-*"))
    assert len(backups) == 1 and "backup" in result.output
    backup = sqlite3.connect(backups[0])
    assert backup.execute("SELECT count(*) FROM questions").fetchone()[0] == N_QUESTIONS
    backup.close()

    # 2. dual writes on, SQLite primary: the application runs through the repository
    settings = Settings.from_env()
    registry = CollectorRegistry()
    async with open_repository(settings, registry=registry) as repo:
        assert repo.read_primary == "sqlite"
        load = WriteLoad(repo, legacy)
        load.start()
        try:
            await _dual_writes_backfill_verify_shadow_flip(
                repo, registry, load, legacy, app_db, rejects, primary_file)
        finally:
            await load.stop()
        pending = await repo.outbox_stats()
        assert all(s.pending == 0 for s in pending.values())
    assert load.writes > 100

    # 9. the last stage: DUAL_WRITE=off, writes reach the primary (PostgreSQL) alone
    monkeypatch.setenv("DUAL_WRITE", "off")
    final = Settings.from_env()
    async with open_repository(final, registry=CollectorRegistry()) as repo:
        assert repo.read_primary == "postgres"  # READ_PRIMARY_FILE is the authority
        user = await repo.create_user(name="After the cutover", email="after@example.com")
        assert (await repo.stores["postgres"].get_user(user.id)).name == "After the cutover"
        with pytest.raises(NotFoundError):
            await repo.stores["sqlite"].get_user(user.id)
        stats = await repo.outbox_stats()
        assert all(s.pending == 0 for s in stats.values())  # nothing queued for SQLite either
    # SQLite has fallen behind: verify says the stores differ, so a rollback from here needs a
    # backfill the other way (PostgreSQL -> SQLite) first
    result = await cutover("verify", "--json", "--sample-queries", "0")
    assert result.exit_code == 1, result.output
    assert json.loads(result.stdout)["totals"]["differences"] >= 1


async def _dual_writes_backfill_verify_shadow_flip(
    repo: Repository, registry: CollectorRegistry, load: WriteLoad,
    legacy: dict[str, list[str]], app_db: Path, rejects: Path, primary_file: Path,
) -> None:
    """Stages 3 to 8, with the application writing throughout."""
    await asyncio.sleep(0.5)
    # 3. the backfill copies the existing rows while the application writes
    before = load.writes
    result = await cutover("backfill", "--from", str(app_db), "--rejects", str(rejects),
                           "--quiet")
    assert result.exit_code == 0, result.output
    assert load.writes > before, "the write load did not run during the backfill"
    load.legacy_rows_copied = True
    reported = [json.loads(line) for line in rejects.read_text().splitlines() if line]
    assert any(r["table"] == "study_books" for r in reported), reported

    # 4. verify: 0 differences (the orphan is listed with the backfill's rejects)
    await asyncio.sleep(0.5)
    await load.pause()
    await repo.replay_once()
    result = await cutover("verify", "--json", "--sample-queries", "5")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["ok"] is True and report["totals"]["differences"] == 0
    load.resume()

    # 5. shadowed searches until the go/no-go verdict says go (`cutover status`)
    user_of = {uuid.UUID(q): load.users[i % 3] for i, q in enumerate(legacy["questions"])}
    names = [q.name for q in sample_questions(N_QUESTIONS)]
    for i in range(300):
        qid = load.questions[i % N_QUESTIONS]
        await repo.search_questions(names[i % N_QUESTIONS].replace(".", " "),
                                    user_id=user_of[qid], limit=10)
        await asyncio.sleep(0.003)  # an application's pace: the shadow keeps up
    assert repo.shadow is not None
    await repo.shadow.drain()  # the comparisons reach the file `cutover status` reads
    result = await cutover("status", "--json")
    assert result.exit_code == 0, result.output
    status = json.loads(result.stdout)
    assert status["verdict"]["go"], status["verdict"]["reasons"]
    assert status["read_primary"] == "sqlite"

    # 6. the flip to PostgreSQL (`cutover read-primary postgres`), under load: the running
    # repository follows READ_PRIMARY_FILE within 2 s
    await flip_by_file(repo, "postgres")
    assert registry.get_sample_value("cutover_read_primary", {"backend": "postgres"}) == 1
    writes_at_flip = load.writes
    await asyncio.sleep(1.0)
    assert load.writes > writes_at_flip and "postgres" in load.primaries
    assert (await repo.get_question(load.questions[0])).id == load.questions[0]

    # 7. the rollback: flip back, still under load
    await flip_by_file(repo, "sqlite")
    assert primary_file.read_text().strip() == "sqlite"
    await asyncio.sleep(0.5)

    # 8. verify again: 0 differences
    await load.pause()
    await repo.replay_once()
    result = await cutover("verify", "--json", "--sample-queries", "5")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["totals"]["differences"] == 0

    # the cutover for good (the API the admin endpoint uses, this time)
    await repo.set_read_primary("postgres")
    assert primary_file.read_text().strip() == "postgres"


@pytest.mark.slow
async def test_mirror_writes_to_rows_not_yet_backfilled_wait_for_the_backfill(
    tmp_path: Path, pg_dsn: str, monkeypatch: pytest.MonkeyPatch, keep_structlog_config: None,
) -> None:
    """Stage order is dual writes, then backfill: a write to a legacy row made before the
    backfill copied its parent must land once the backfill has run, however long it takes."""
    app_db = tmp_path / "app.db"
    legacy = make_legacy_db(app_db)
    monkeypatch.setenv("SQLITE_PATH", str(app_db))
    monkeypatch.setenv("POSTGRES_DSN", pg_dsn)
    for name in ("READ_PRIMARY", "READ_PRIMARY_FILE", "DUAL_WRITE", "METRICS_PORT"):
        monkeypatch.delenv(name, raising=False)
    assert (await cutover("schema", "init", "--no-backup")).exit_code == 0
    async with open_repository(Settings.from_env(), registry=CollectorRegistry()) as repo:
        question = uuid.UUID(legacy["questions"][0])
        await repo.update_question(question, difficulty="hard")  # its book is not in PG yet
        for _ in range(15):  # a long backfill: the replay loop retries many times meanwhile
            await repo.replay_once()
        result = await cutover("backfill", "--from", str(app_db), "--rejects",
                               str(tmp_path / "rejects.jsonl"), "--quiet")
        assert result.exit_code == 0, result.output
        for _ in range(3):
            await repo.replay_once()
        stats = await repo.outbox_stats()
        assert stats["postgres"].dead == 0 and stats["postgres"].pending == 0
        assert (await repo.stores["postgres"].get_question(question)).difficulty == "hard"


README = Path(__file__).resolve().parents[1] / "README.md"


def runbook_text() -> str:
    """The runbook as published in the README."""
    text = README.read_text(encoding="utf-8")
    assert "## The runbook" in text, "the README has no runbook section"
    return text


def test_the_runbook_names_real_panels_alerts_and_commands() -> None:
    import re

    import typer
    import yaml

    text = runbook_text()
    root = Path(__file__).resolve().parents[1]
    dashboards = [json.loads(p.read_text(encoding="utf-8"))
                  for p in (root / "config" / "grafana" / "dashboards").glob("*.json")]

    def titles(panels: list[dict[str, Any]]) -> set[str]:
        return {p.get("title", "") for p in panels} | {
            t for p in panels for t in titles(p.get("panels", []))}

    panels = set().union(*(titles(d["panels"]) for d in dashboards))
    watch = re.findall(r"^Watch: (.*?)(?:\n\n|\Z)", text, re.M | re.S)
    named = {" ".join(name.split())  # a name may wrap across lines
             for paragraph in watch for name in re.findall(r'"([^"]+)"', paragraph)}
    assert len(watch) >= 7 and len(named) >= 10
    assert named <= panels, f"not panels of the dashboard: {sorted(named - panels)}"

    rules = yaml.safe_load((root / "config" / "alerts.yml").read_text(encoding="utf-8"))
    alerts = {r["alert"] for g in rules["groups"] for r in g["rules"] if "alert" in r}
    mentioned = set(re.findall(r"`(Cutover[A-Za-z]+)`", text))
    assert mentioned <= alerts, sorted(mentioned - alerts)

    group = typer.main.get_command(cli_app)
    commands = re.findall(r"^\s*cutover ([^#\n]+)", "\n".join(
        re.findall(r"```sh\n(.*?)```", text, re.S)), re.M)
    assert len(commands) >= 8
    for line in commands:
        words = line.split()
        command: Any = group
        # typer vendors its own click: walk the groups by what they do, not by class
        while hasattr(command, "get_command") and words and not words[0].startswith("-"):
            sub = command.get_command(command.context_class(command), words.pop(0))
            assert sub is not None, f"`cutover {line.strip()}`: no such command"
            command = sub
        known = {o for p in command.params for o in (*p.opts, *p.secondary_opts)}
        for word in words:
            if word.startswith("--"):
                assert word in known, f"`cutover {line.strip()}`: no option {word}"
