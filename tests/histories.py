"""Seeded, randomized concurrent histories over a handful of shared rows (issue 22).

One history: two `Repository` objects (two "processes": each its own SQLite connections and
writer thread, its own PostgreSQL pool, mirror pipelines and replay loop) on the same SQLite file
and the same PostgreSQL database. Concurrent writers hammer a few rows of all five tables:

- shared writers: partial updates, deletes, re-creates with the same id, rows moved between
  parents (a question to another book, a typing log to another question, a book to another
  user), and racing pairs issued at once (a child's update beside its parent's delete, a
  question's move beside the delete of its old book, two partial updates of one row through the
  two repositories);
- private writers: each owns a small family of rows (a user, two books, two questions, a typing
  log, a learning event) that it alone writes, one call at a time, through either repository.
  Their last acknowledged values are modelled (including the cascades and SET NULLs of their own
  deletes), so the check is exact: both stores must hold them after the load.

Expected errors (a row or parent another writer deleted, a duplicate id) are not acknowledged
writes and are only counted. After the load the outboxes are drained with `replay_once` (never
`reconcile`), then the two stores are compared row by row.

Seeds fix every writer's sequence of calls, not the event loop's interleaving: a seed is a
strong hint for reproducing a failure, not a guarantee.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import asyncpg
from prometheus_client import CollectorRegistry

from config import Settings
from config.settings import Backend
from metrics import Metrics
from proxy.errors import FlipRefused, NotFoundError, StoreUnavailable, ValidationError
from proxy.models import LEARNING_EVENTS, QUESTIONS, STUDY_BOOKS, TYPING_LOGS, USERS
from proxy.models import Entity as EntitySpec
from proxy.repository import Repository
from proxy.stores.postgres import PostgresStore
from proxy.stores.sqlite import SQLiteStore
from tests.convergence import differences

Row = dict[str, Any]


@dataclass(frozen=True)
class HistoryConfig:
    seed: int
    primary: Backend = "sqlite"
    repositories: int = 2
    main_share: float = 0.8  # share of the calls that go through the first repository
    shared_writers: int = 12
    shared_ops: int = 80  # calls per shared writer (a racing pair counts as one)
    private_writers: int = 3
    private_ops: int = 40
    race_rate: float = 0.4  # share of a shared writer's calls that are racing pairs
    users: int = 2  # the shared id pools: few ids, so writes collide
    books: int = 3
    questions: int = 3
    logs: int = 3
    events: int = 2
    rounds: int = 4  # the load in rounds, each drained and compared
    flips: bool = False
    # re-create deleted parents (users, books, questions) with the same id, racing their
    # children's writes; without, parents die out as the history goes on
    recreate_parents: bool = True
    flip_every_s: float = 0.15
    mirror_timeout_ms: int = 2000
    drain_timeout_s: float = 30.0


@dataclass
class HistoryResult:
    config: HistoryConfig
    acked: int = 0  # acknowledged writes (calls that returned)
    expected_errors: Counter[str] = field(default_factory=Counter)
    unavailable: list[str] = field(default_factory=list)  # StoreUnavailable (outcome unknown)
    unexpected: list[str] = field(default_factory=list)
    # a deadlock or serialization failure the driver raised as is (rolled back: nothing
    # changed); counted, not failed on, as it is not what these tests are about
    transient: list[str] = field(default_factory=list)
    differences: list[str] = field(default_factory=list)
    lost: list[str] = field(default_factory=list)  # private rows not at their last ack'd value
    private_rows_checked: int = 0
    tainted_writers: int = 0
    dead_letters: int = 0
    undrained: str = ""
    flips: int = 0
    flips_refused: int = 0
    seconds: float = 0.0
    rounds: int = 0  # rounds run (the last one is the failing one when not ok)

    @property
    def ok(self) -> bool:
        return not (self.differences or self.lost or self.unexpected or self.dead_letters
                    or self.undrained)

    def summary(self) -> str:
        c = self.config
        return (f"seed={c.seed} primary={c.primary} flips={c.flips}: {self.acked} acknowledged "
                f"writes, expected errors {dict(self.expected_errors)}, "
                f"{len(self.unavailable)} unavailable, {len(self.transient)} transient, "
                f"{len(self.unexpected)} unexpected, "
                f"{len(self.differences)} differences, {len(self.lost)} lost private writes "
                f"(of {self.private_rows_checked} private rows checked), "
                f"{self.dead_letters} dead letters, flips {self.flips} "
                f"(refused {self.flips_refused}), after round {self.rounds} of {c.rounds}, "
                f"{self.seconds:.1f} s")

    def failure_message(self, first: int = 4) -> str:
        parts = [self.summary()]
        if self.undrained:
            parts.append(f"outbox did not drain: {self.undrained}")
        if self.unexpected:
            parts.append(f"first unexpected errors: {self.unexpected[:first]}")
        if self.lost:
            parts.append(f"first lost private writes: {self.lost[:first]}")
        if self.differences:
            parts.append(f"first differences (sqlite != postgres): {self.differences[:first]}")
        return "\n".join(parts)


class _Gate:
    """Harness-level reader/writer gate: every call holds it shared; a coordinated flip of all
    the repositories (a deployment flipping its processes together) holds it alone, so no two
    processes ever write with different primaries."""

    def __init__(self) -> None:
        self._users = 0
        self._idle = asyncio.Event()
        self._idle.set()
        self._open = asyncio.Event()
        self._open.set()

    @contextlib.asynccontextmanager
    async def shared(self) -> AsyncIterator[None]:
        await self._open.wait()
        self._users += 1
        self._idle.clear()
        try:
            yield
        finally:
            self._users -= 1
            if self._users == 0:
                self._idle.set()

    @contextlib.asynccontextmanager
    async def exclusive(self) -> AsyncIterator[None]:
        self._open.clear()
        try:
            await self._idle.wait()
            yield
        finally:
            self._open.set()


def _text(rng: random.Random, label: str) -> str:
    return f"{label} {rng.randrange(10**6)}"


def _accuracy(rng: random.Random) -> str:
    return f"{rng.randrange(0, 100)}.{rng.randrange(0, 100):02d}"


class History:
    """One randomized history (see the module docstring); `run` returns its result."""

    def __init__(self, config: HistoryConfig, repos: list[Repository],
                 sqlite: SQLiteStore, postgres: PostgresStore) -> None:
        self.config = config
        self.repos = repos
        self.sqlite = sqlite
        self.postgres = postgres
        self.result = HistoryResult(config)
        self.gate = _Gate()
        rng = random.Random(f"{config.seed}:pools")
        self.users = [uuid.UUID(int=rng.getrandbits(128)) for _ in range(config.users)]
        self.books = [uuid.UUID(int=rng.getrandbits(128)) for _ in range(config.books)]
        self.questions = [uuid.UUID(int=rng.getrandbits(128)) for _ in range(config.questions)]
        self.logs = [uuid.UUID(int=rng.getrandbits(128)) for _ in range(config.logs)]
        self.events = [uuid.UUID(int=rng.getrandbits(128)) for _ in range(config.events)]
        self._emails = 0
        self._running = True
        self.created: set[uuid.UUID] = set()  # parents created (see recreate_parents)

    # -- outcomes --
    async def call(self, label: str, fn: Callable[[], Awaitable[Any]]) -> Any:
        """Run one call under the gate; None (and the error counted) when it raised."""
        async with self.gate.shared():
            try:
                value = await fn()
            except Exception as exc:
                self.record_error(label, exc)
                return None
        self.result.acked += 1
        return value if value is not None else True

    def record_error(self, label: str, exc: BaseException) -> None:
        if isinstance(exc, NotFoundError):
            self.result.expected_errors["not found"] += 1
        elif isinstance(exc, ValidationError) and exc.field == "id":
            self.result.expected_errors["duplicate id"] += 1
        elif isinstance(exc, StoreUnavailable):
            self.result.unavailable.append(f"{label}: {type(exc).__name__}: {exc}")
        elif isinstance(exc, asyncpg.TransactionRollbackError):
            self.result.transient.append(f"{label}: {type(exc).__name__}"[:200])
        else:
            self.result.unexpected.append(f"{label}: {type(exc).__name__}: {exc}"[:400])

    def email(self, row_id: uuid.UUID) -> str:
        self._emails += 1
        return f"{row_id.hex[:12]}-{self._emails}@example.com"

    def pick(self, rng: random.Random) -> Repository:
        """The repository a call goes through: the first (the service) takes most calls, the
        others (a CLI, a second worker) the rest."""
        if len(self.repos) == 1 or rng.random() < self.config.main_share:
            return self.repos[0]
        return rng.choice(self.repos[1:])

    # -- shared rows --
    async def create(self, repo: Repository, entity: str, row_id: uuid.UUID,
                     rng: random.Random) -> Any:
        if entity == "user":
            return await repo.create_user(name=_text(rng, "user"), email=self.email(row_id),
                                          id=row_id)
        if entity == "study_book":
            return await repo.create_study_book(
                user_id=rng.choice(self.users), title=_text(rng, "book"),
                description=rng.choice([None, _text(rng, "about")]), id=row_id)
        if entity == "question":
            return await repo.create_question(
                study_book_id=rng.choice(self.books), language="en", category="c",
                difficulty=rng.choice(["easy", "hard"]), question=_text(rng, "q"),
                answer=_text(rng, "a"), id=row_id)
        if entity == "typing_log":
            return await repo.record_typing_log(
                user_id=rng.choice(self.users), question_id=rng.choice([*self.questions, None]),
                wpm=rng.randrange(1000), accuracy=_accuracy(rng), took_ms=rng.randrange(10**5),
                id=row_id)
        return await repo.record_learning_event(
            user_id=str(rng.choice(self.users)), app_id="app", action=_text(rng, "act"),
            object_id=rng.choice([None, "obj"]), score=_accuracy(rng),
            duration_ms=rng.randrange(10**5), id=row_id)

    def changes(self, entity: str, row_id: uuid.UUID, rng: random.Random) -> dict[str, Any]:
        """A partial update: one or two of the row's writable columns (moves included)."""
        options: dict[str, Callable[[], Any]]
        if entity == "user":
            options = {"name": lambda: _text(rng, "user"), "email": lambda: self.email(row_id)}
        elif entity == "study_book":
            options = {"title": lambda: _text(rng, "book"),
                       "description": lambda: rng.choice([None, _text(rng, "about")]),
                       "user_id": lambda: rng.choice(self.users)}
        elif entity == "question":
            options = {"question": lambda: _text(rng, "q"), "answer": lambda: _text(rng, "a"),
                       "difficulty": lambda: rng.choice(["easy", "hard", "medium"]),
                       "study_book_id": lambda: rng.choice(self.books)}
        elif entity == "typing_log":
            options = {"wpm": lambda: rng.randrange(1000), "accuracy": lambda: _accuracy(rng),
                       "took_ms": lambda: rng.randrange(10**5),
                       "question_id": lambda: rng.choice([*self.questions, None])}
        else:
            options = {"action": lambda: _text(rng, "act"), "score": lambda: _accuracy(rng),
                       "duration_ms": lambda: rng.randrange(10**5),
                       "object_id": lambda: rng.choice([None, "obj", "other"])}
        names = rng.sample(sorted(options), rng.choice([1, 1, 2]))
        return {n: options[n]() for n in names}

    def pool(self, entity: str) -> list[uuid.UUID]:
        return {"user": self.users, "study_book": self.books, "question": self.questions,
                "typing_log": self.logs, "learning_event": self.events}[entity]

    async def update(self, repo: Repository, entity: str, row_id: uuid.UUID,
                     changes: dict[str, Any]) -> Any:
        method: Callable[..., Awaitable[Any]] = getattr(repo, f"update_{entity}")
        return await method(row_id, **changes)

    async def delete(self, repo: Repository, entity: str, row_id: uuid.UUID) -> Any:
        method: Callable[..., Awaitable[Any]] = getattr(repo, f"delete_{entity}")
        return await method(row_id)

    async def shared_writer(self, index: int, round_: int, ops: int) -> None:
        rng = random.Random(f"{self.config.seed}:shared:{index}:{round_}")
        entities = ["user", "study_book", "question", "typing_log", "learning_event"]
        weights = [1, 3, 4, 4, 1]
        for _ in range(ops):
            if rng.random() < self.config.race_rate:
                await self.race(rng)
                continue
            entity = rng.choices(entities, weights)[0]
            row_id = rng.choice(self.pool(entity))
            repo = self.pick(rng)
            roll = rng.random()
            delete_share = 0.04 if entity == "user" else 0.2
            if roll < delete_share:
                await self.call(f"delete {entity}", partial(self.delete, repo, entity, row_id))
            elif roll < delete_share + 0.1:
                await self.recreate(repo, entity, row_id, rng)
            else:
                changes = self.changes(entity, row_id, rng)
                done = await self.call(f"update {entity}",
                                       partial(self.update, repo, entity, row_id, changes))
                if done is None:  # gone (or its new parent is): bring it back, same id
                    await self.recreate(repo, entity, row_id, rng)

    async def recreate(self, repo: Repository, entity: str, row_id: uuid.UUID,
                       rng: random.Random, depth: int = 0) -> None:
        """Create the row with this id; if its parent is missing, the parent first."""
        parent = entity in ("user", "study_book", "question")
        if not self.config.recreate_parents and parent and row_id in self.created:
            return  # created once; once gone, gone
        error: list[BaseException] = []

        async def create() -> Any:
            try:
                return await self.create(repo, entity, row_id, random.Random(rng.random()))
            except NotFoundError as exc:
                error.append(exc)
                raise

        done = await self.call(f"create {entity}", create)
        if done is not None and parent:
            self.created.add(row_id)
        if done is None and error and depth < 3:
            missing = error[0]
            assert isinstance(missing, NotFoundError)
            if missing.field is not None and isinstance(missing.row_id, uuid.UUID):
                await self.recreate(repo, missing.entity, missing.row_id, rng, depth + 1)
                await self.call(f"create {entity}", lambda: self.create(
                    repo, entity, row_id, random.Random(rng.random())))

    async def race(self, rng: random.Random) -> None:
        """Two calls issued at once, mostly through one repository (one mirror pipeline, where
        the delete may join a batch before the update that committed first)."""
        a = self.pick(rng)
        b = a if rng.random() < 0.6 else self.pick(rng)
        kind = rng.choice(["log-vs-question", "log-vs-question", "question-vs-book",
                           "question-vs-book", "book-vs-user", "same-row"])
        calls: list[tuple[str, Callable[[], Awaitable[Any]]]]
        if kind == "log-vs-question":
            # the log must name a live question for the race to matter: make it so first
            log_id, qid = rng.choice(self.logs), rng.choice(self.questions)
            if await self.current(a, QUESTIONS, qid) is None:
                await self.recreate(a, "question", qid, rng)
            current = await self.current(a, TYPING_LOGS, log_id)
            if current is None:
                await self.recreate(a, "typing_log", log_id, rng)
            if current is None or current["question_id"] != qid:
                await self.call("update typing_log (before race)", lambda: self.update(
                    a, "typing_log", log_id, {"question_id": qid}))
            changes: dict[str, Any] = {"wpm": rng.randrange(1000)}
            if rng.random() < 0.3:
                changes["question_id"] = qid
            calls = [("update typing_log (race)",
                      lambda: self.update(a, "typing_log", log_id, changes)),
                     ("delete question (race)", lambda: self.delete(b, "question", qid))]
        elif kind == "question-vs-book":
            qid, old, new = rng.choice(self.questions), *rng.sample(self.books, 2)
            for book in (old, new):
                if await self.current(a, STUDY_BOOKS, book) is None:
                    await self.recreate(a, "study_book", book, rng)
            current = await self.current(a, QUESTIONS, qid)
            if current is None:
                await self.recreate(a, "question", qid, rng)
            if current is None or current["study_book_id"] != old:
                await self.call("move question (before race)", lambda: self.update(
                    a, "question", qid, {"study_book_id": old}))
            calls = [("move question (race)", lambda: self.update(
                         a, "question", qid, {"study_book_id": new, "answer": _text(rng, "a")})),
                     ("delete old book (race)", lambda: self.delete(b, "study_book", old))]
        elif kind == "book-vs-user":
            book = rng.choice(self.books)
            current = await self.current(a, STUDY_BOOKS, book)
            owner = (current or {}).get("user_id") or rng.choice(self.users)
            calls = [("update book (race)", lambda: self.update(
                         a, "study_book", book, {"title": _text(rng, "book")})),
                     ("delete user (race)", lambda: self.delete(b, "user", owner))]
        else:
            entity = rng.choice(["study_book", "question", "typing_log", "learning_event"])
            row_id = rng.choice(self.pool(entity))
            one, two = self.changes(entity, row_id, rng), self.changes(entity, row_id, rng)
            calls = [(f"update {entity} (race 1)",
                      lambda: self.update(a, entity, row_id, one)),
                     (f"update {entity} (race 2)",
                      lambda: self.update(b, entity, row_id, two))]
        if rng.random() < 0.25:  # mostly the child's write first: the order that bites
            calls.reverse()
        await asyncio.gather(*(self.call(label, fn) for label, fn in calls))

    async def current(self, repo: Repository, entity: EntitySpec, row_id: uuid.UUID
                      ) -> Row | None:
        with contextlib.suppress(Exception):
            return await repo.stores[repo.read_primary].get_row(entity, row_id)
        return None

    # -- the run --
    async def seed_rows(self) -> None:
        repo = self.repos[0]
        rng = random.Random(f"{self.config.seed}:seed")
        for entity in ("user", "study_book", "question", "typing_log", "learning_event"):
            for row_id in self.pool(entity):
                await self.call(f"seed {entity}", partial(self.create, repo, entity, row_id, rng))

    async def flipper(self) -> None:
        rng = random.Random(f"{self.config.seed}:flips")
        while self._running:
            await asyncio.sleep(self.config.flip_every_s * (0.5 + rng.random()))
            if not self._running:
                return
            current = self.repos[0].read_primary
            target: Backend = "postgres" if current == "sqlite" else "sqlite"
            async with self.gate.exclusive():
                flipped: list[Repository] = []
                try:
                    for repo in self.repos:
                        await repo.set_read_primary(target)
                        flipped.append(repo)
                    self.result.flips += 1
                except FlipRefused:
                    self.result.flips_refused += 1
                    for repo in flipped:  # all the processes back on one primary
                        try:
                            await repo.set_read_primary(current)
                        except FlipRefused:
                            await repo.set_read_primary(current, force=True)

    async def run(self, private: list[PrivateWriter]) -> HistoryResult:
        """The load in `rounds`; after each, drain and compare (the writes that end a burst of
        concurrent ones are where order goes wrong, so each round is one more chance)."""
        began = time.monotonic()
        await self.seed_rows()
        for writer in private:
            await writer.setup()
        rounds = self.config.rounds
        for n in range(rounds):
            self._running = True
            flipper = asyncio.create_task(self.flipper()) if self.config.flips else None
            try:
                await asyncio.gather(
                    *(self.shared_writer(i, n, self.config.shared_ops // rounds)
                      for i in range(self.config.shared_writers)),
                    *(w.run(self.config.private_ops // rounds) for w in private))
            finally:
                self._running = False
                if flipper is not None:
                    await flipper
            await self.drain()
            self.result.rounds = n + 1
            self.result.differences = sorted(await differences(self.sqlite, self.postgres))
            self.result.lost, self.result.private_rows_checked = [], 0
            self.result.tainted_writers = 0
            for writer in private:
                await writer.check()
            if not self.result.ok:
                break
        self.result.seconds = time.monotonic() - began
        return self.result

    async def drain(self) -> None:
        deadline = time.monotonic() + self.config.drain_timeout_s
        while True:
            for repo in self.repos:
                await repo.replay_once()
            stats = await self.repos[0].outbox_stats()
            self.result.dead_letters = sum(s.dead for s in stats.values())
            if all(s.pending == 0 for s in stats.values()):
                return
            if time.monotonic() > deadline:
                self.result.undrained = str(stats)[:400] + await self._stuck_entries()
                return
            await asyncio.sleep(0.1)

    async def _stuck_entries(self) -> str:
        """The entries that would not drain, and why each last failed."""
        lines = []
        for source, target in ((self.sqlite, "postgres"), (self.postgres, "sqlite")):
            for e in await source.outbox_pending(target, 5):
                m = e.mutation
                lines.append(f"\n  to {target}: {m.entity} {m.op} {m.row_id} v{m.version}, "
                             f"{e.attempts} attempts, last error: {(e.last_error or '')[:200]}")
        return "".join(lines)


class PrivateWriter:
    """A writer with rows of its own (one call at a time): its last acknowledged values are
    known, and must be what both stores hold at the end."""

    def __init__(self, history: History, index: int) -> None:
        self.h = history
        self.rng = random.Random(f"{history.config.seed}:private:{index}")
        self.tag = f"p{index}"

        def new_id() -> uuid.UUID:
            return uuid.UUID(int=self.rng.getrandbits(128))

        self.user, self.log, self.event = new_id(), new_id(), new_id()
        self.books = [new_id(), new_id()]
        self.questions = [new_id(), new_id()]
        self.model: dict[uuid.UUID, Row | None] = {}
        self.entity_of: dict[uuid.UUID, EntitySpec] = {
            self.user: USERS, self.log: TYPING_LOGS, self.event: LEARNING_EVENTS,
            **{b: STUDY_BOOKS for b in self.books}, **{q: QUESTIONS for q in self.questions}}
        self.tainted = False

    def repo(self) -> Repository:
        return self.h.pick(self.rng)

    def exists(self, row_id: uuid.UUID) -> bool:
        return self.model.get(row_id) is not None

    async def write(self, label: str, row_id: uuid.UUID,
                    fn: Callable[[], Awaitable[Any]]) -> bool:
        """One call; its acknowledged row (None for a delete) becomes the model's."""
        async with self.h.gate.shared():
            try:
                value = await fn()
            except Exception as exc:
                self.h.record_error(f"private {label}", exc)
                if isinstance(exc, asyncpg.TransactionRollbackError):
                    return False  # rolled back: the model still holds
                if not isinstance(exc, StoreUnavailable):
                    # an expected error here means the model is wrong: the rows are ours alone
                    self.h.result.unexpected.append(
                        f"private {label} {row_id} failed: {type(exc).__name__}: {exc}"[:400])
                self.tainted = True  # outcome unknown: stop checking this family
                return False
        self.h.result.acked += 1
        if value is None:  # a delete: the cascades and SET NULLs of our own rows
            self.deleted(row_id)
        else:
            self.model[row_id] = {c: getattr(value, c) for c in
                                  self.entity_of[row_id].column_names}
        return True

    def deleted(self, row_id: uuid.UUID) -> None:
        self.model[row_id] = None
        if row_id in self.books:
            for q in self.questions:
                row = self.model.get(q)
                if row is not None and row["study_book_id"] == row_id:
                    self.deleted(q)
        if row_id in self.questions:
            log = self.model.get(self.log)
            if log is not None and log["question_id"] == row_id:
                log["question_id"] = None

    async def setup(self) -> None:
        repo = self.h.repos[0]
        await self.write("create user", self.user, lambda: repo.create_user(
            name=self.tag, email=f"{self.user.hex}@example.com", id=self.user))
        for b in self.books:
            await self.create_book(repo, b)
        for q in self.questions:
            await self.create_question(repo, q)
        await self.create_log(repo)
        await self.create_event(repo)

    async def create_book(self, repo: Repository, b: uuid.UUID) -> None:
        await self.write("create book", b, lambda: repo.create_study_book(
            user_id=self.user, title=_text(self.rng, "pbook"), id=b))

    async def create_question(self, repo: Repository, q: uuid.UUID) -> None:
        books = [b for b in self.books if self.exists(b)]
        if not books:
            return
        book = self.rng.choice(books)
        await self.write("create question", q, lambda: repo.create_question(
            study_book_id=book, language="en", category="c", difficulty="easy",
            question=_text(self.rng, "pq"), answer=_text(self.rng, "pa"), id=q))

    async def create_log(self, repo: Repository) -> None:
        question = self.rng.choice([*(q for q in self.questions if self.exists(q)), None])
        await self.write("create typing_log", self.log, lambda: repo.record_typing_log(
            user_id=self.user, question_id=question, wpm=self.rng.randrange(1000),
            accuracy=_accuracy(self.rng), took_ms=self.rng.randrange(10**5), id=self.log))

    async def create_event(self, repo: Repository) -> None:
        await self.write("create learning_event", self.event, lambda: repo.record_learning_event(
            user_id=str(self.user), app_id="app", action=_text(self.rng, "pact"),
            score=_accuracy(self.rng), duration_ms=self.rng.randrange(10**5), id=self.event))

    async def step(self) -> None:
        rng, repo = self.rng, self.repo()
        roll = rng.random()
        if roll < 0.08:
            await self.write("update user", self.user,
                             lambda: repo.update_user(self.user, name=_text(rng, "pu")))
        elif roll < 0.28:
            b = rng.choice(self.books)
            if not self.exists(b):
                await self.create_book(repo, b)
            elif rng.random() < 0.15:
                await self.write("delete book", b, lambda: repo.delete_study_book(b))
            else:
                await self.write("update book", b, lambda: repo.update_study_book(
                    b, title=_text(rng, "pbook"), description=rng.choice([None, "d"])))
        elif roll < 0.55:
            q = rng.choice(self.questions)
            row = self.model.get(q)
            if row is None:
                await self.create_question(repo, q)
            elif rng.random() < 0.2:
                await self.write("delete question", q, lambda: repo.delete_question(q))
            else:
                changes: dict[str, Any] = {"answer": _text(rng, "pa")}
                others = [b for b in self.books if self.exists(b)
                          and b != row["study_book_id"]]
                if others and rng.random() < 0.5:
                    changes["study_book_id"] = rng.choice(others)
                await self.write("update question", q,
                                 lambda: repo.update_question(q, **changes))
        elif roll < 0.85:
            if not self.exists(self.log):
                await self.create_log(repo)
            elif rng.random() < 0.1:
                await self.write("delete typing_log", self.log,
                                 lambda: repo.delete_typing_log(self.log))
            else:
                changes = {"wpm": rng.randrange(1000), "accuracy": _accuracy(rng)}
                if rng.random() < 0.5:
                    changes["question_id"] = rng.choice(
                        [*(q for q in self.questions if self.exists(q)), None])
                await self.write("update typing_log", self.log,
                                 lambda: repo.update_typing_log(self.log, **changes))
        else:
            if not self.exists(self.event):
                await self.create_event(repo)
            elif rng.random() < 0.1:
                await self.write("delete learning_event", self.event,
                                 lambda: repo.delete_learning_event(self.event))
            else:
                await self.write("update learning_event", self.event,
                                 lambda: repo.update_learning_event(
                                     self.event, score=_accuracy(rng),
                                     duration_ms=rng.randrange(10**5)))

    async def run(self, ops: int) -> None:
        for _ in range(ops):
            if self.tainted:
                return
            await self.step()

    async def check(self) -> None:
        if self.tainted:
            self.h.result.tainted_writers += 1
            return
        for row_id, expected in self.model.items():
            entity = self.entity_of[row_id]
            self.h.result.private_rows_checked += 1
            for store in (self.h.sqlite, self.h.postgres):
                held = await store.get_row(entity, row_id)
                if not _same(held, expected):
                    self.h.result.lost.append(
                        f"{store.backend} {entity.table} {row_id} (writer {self.tag}): holds "
                        f"{_short(held)}, last acknowledged {_short(expected)}")


def _same(held: Row | None, expected: Row | None) -> bool:
    if held is None or expected is None:
        return held is None and expected is None
    return all(held[c] == v for c, v in expected.items())


def _short(row: Row | None) -> str:
    if row is None:
        return "no row"
    return str({k: v for k, v in row.items() if not k.endswith("_at")})


@contextlib.asynccontextmanager
async def repositories(
    sqlite_path: Path, dsn: str, primary: Backend, count: int, *, mirror_timeout_ms: int = 2000,
    start: bool = True,
) -> AsyncIterator[tuple[list[Repository], SQLiteStore, PostgresStore]]:
    """`count` repositories on one SQLite file and one PostgreSQL database, each with its own
    stores (as separate processes would have), plus a pair of stores for checking."""
    settings = Settings(sqlite_path=sqlite_path, postgres_dsn=dsn, read_primary=primary,
                       shadow_sample_rate=0.0, mirror_timeout_ms=mirror_timeout_ms)
    check_sqlite, check_pg = SQLiteStore(sqlite_path), PostgresStore(dsn)
    await check_sqlite.init_schema()
    await check_pg.init_schema()
    stores: list[SQLiteStore | PostgresStore] = [check_sqlite, check_pg]
    repos: list[Repository] = []
    try:
        for _ in range(count):
            sqlite, postgres = SQLiteStore(sqlite_path), PostgresStore(dsn)
            stores += [sqlite, postgres]
            repo = Repository(settings, sqlite, postgres, metrics=Metrics(CollectorRegistry()))
            repos.append(repo)
            if start:  # as `open_repository` does: fenced from the first flip
                await repo.bootstrap()
                repo.start()
        yield repos, check_sqlite, check_pg
    finally:
        for repo in repos:
            await repo.aclose()
        for store in stores:
            await store.close()


async def run_history(config: HistoryConfig, sqlite_path: Path, dsn: str) -> HistoryResult:
    """One history on a fresh SQLite file and a fresh PostgreSQL database."""
    async with repositories(sqlite_path, dsn, config.primary, config.repositories,
                            mirror_timeout_ms=config.mirror_timeout_ms) as (repos, lite, pg):
        history = History(config, repos, lite, pg)
        private = [PrivateWriter(history, i) for i in range(config.private_writers)]
        return await history.run(private)

