"""Every named operation on each store, the same input stored the same way on both, and the
contract's validation rules (raised before a store is touched: both stores stay unchanged)."""

from __future__ import annotations

import math
import sqlite3
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import fields
from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from proxy import (
    LearningEvent,
    NotFoundError,
    PostgresStore,
    Question,
    SQLiteStore,
    StudyBook,
    TypingLog,
    User,
    ValidationError,
)
from proxy.models import (
    ENTITIES,
    LEARNING_EVENTS,
    QUESTIONS,
    STUDY_BOOKS,
    TYPING_LOGS,
    USERS,
    Entity,
)
from tests.databases import copy_sqlite, fresh_database

TABLES = [e.table for e in ENTITIES]
MISSING = uuid.UUID("8c2b1f5e-2f7b-4c39-9d7c-3f7c1d2a9b10")
AnyStore = SQLiteStore | PostgresStore


async def _seed(store: AnyStore) -> tuple[User, StudyBook, Question]:
    user = await store.create_user(name="Aiko", email="aiko@example.com")
    book = await store.create_study_book(user_id=user.id, title="Python")
    q = await store.create_question(
        study_book_id=book.id, language="en", category="python", difficulty="easy",
        question="What does json.dumps do?", answer="Serialize obj to a JSON formatted str.",
    )
    return user, book, q


def _assert_row_types(row: Any) -> None:
    """Ids are UUIDs, timestamps aware, accuracy and score Decimals at 2 places."""
    for f in fields(row):
        value = getattr(row, f.name)
        text_ids = ("user_id", "object_id", "app_id")
        if f.name == "id" or (f.name.endswith("_id") and f.name not in text_ids):
            assert value is None or isinstance(value, uuid.UUID), (f.name, value)
        if f.name.endswith("_at"):
            assert isinstance(value, datetime) and value.utcoffset() is not None, (f.name, value)
        if f.name in ("accuracy", "score") and value is not None:
            assert isinstance(value, Decimal) and value.as_tuple().exponent == -2, (f.name, value)
    if isinstance(row, StudyBook | TypingLog):
        assert isinstance(row.user_id, uuid.UUID)
    if isinstance(row, LearningEvent):
        assert isinstance(row.user_id, str)


# -- every operation, on each store --

async def test_users_crud(store: AnyStore) -> None:
    user = await store.create_user(name="Aiko", email="aiko@example.com")
    _assert_row_types(user)
    assert (user.name, user.email) == ("Aiko", "aiko@example.com")
    assert user.created_at == user.updated_at
    assert await store.get_user(user.id) == user
    assert await store.get_user(str(user.id)) == user  # ids as text are accepted
    other = await store.create_user(name="Ben", email="ben@example.com")
    assert [u.id for u in await store.list_users()] == [user.id, other.id]  # by created_at
    assert [u.id for u in await store.list_users(limit=1, offset=1)] == [other.id]

    renamed = await store.update_user(user.id, name="Aiko T.")
    assert renamed.name == "Aiko T."
    assert renamed.email == user.email and renamed.created_at == user.created_at
    assert renamed.updated_at > user.updated_at
    assert await store.get_user(user.id) == renamed

    await store.delete_user(user.id)
    with pytest.raises(NotFoundError):
        await store.get_user(user.id)
    with pytest.raises(NotFoundError):
        await store.delete_user(user.id)
    with pytest.raises(NotFoundError):
        await store.update_user(user.id, name="ghost")
    assert [u.id for u in await store.list_users()] == [other.id]


async def test_duplicate_email_is_a_validation_error(store: AnyStore) -> None:
    await store.create_user(name="Aiko", email="aiko@example.com")
    with pytest.raises(ValidationError) as info:
        await store.create_user(name="Other", email="aiko@example.com")
    assert info.value.field == "email"
    assert len(await store.list_users()) == 1


async def test_study_books_crud_with_optional_description(store: AnyStore) -> None:
    user = await store.create_user(name="Aiko", email="aiko@example.com")
    plain = await store.create_study_book(user_id=user.id, title="Python")
    assert plain.description is None  # optional, omitted
    described = await store.create_study_book(user_id=user.id, title="SQL",
                                               description="Joins and indexes")
    _assert_row_types(described)
    assert await store.get_study_book(described.id) == described
    assert [b.id for b in await store.list_study_books(user.id)] == [plain.id, described.id]
    stranger = await store.create_user(name="Ben", email="ben@example.com")
    assert await store.list_study_books(stranger.id) == []

    updated = await store.update_study_book(plain.id, description="now described")
    assert updated.description == "now described"
    assert updated.title == "Python" and updated.user_id == user.id
    assert updated.updated_at > plain.updated_at and updated.created_at == plain.created_at
    cleared = await store.update_study_book(plain.id, description=None)
    assert cleared.description is None

    await store.delete_study_book(described.id)
    with pytest.raises(NotFoundError):
        await store.get_study_book(described.id)
    assert [b.id for b in await store.list_study_books(user.id)] == [plain.id]


async def test_questions_crud(store: AnyStore) -> None:
    _, book, q = await _seed(store)
    _assert_row_types(q)
    assert await store.get_question(q.id) == q
    q2 = await store.create_question(study_book_id=book.id, language="ja", category="ml",
                                     difficulty="hard", question="機械学習の基礎",
                                     answer="データから学ぶ")
    assert (await store.get_question(q2.id)).question == "機械学習の基礎"
    assert [x.id for x in await store.list_questions(book.id)] == [q.id, q2.id]

    updated = await store.update_question(q.id, answer="Turns obj into JSON text.",
                                          difficulty="medium")
    before, after = vars_of(q), vars_of(updated)
    changed = {k for k in before if before[k] != after[k]}
    assert changed == {"answer", "difficulty", "updated_at"}
    assert updated.updated_at > q.updated_at
    assert await store.get_question(q.id) == updated

    await store.delete_question(q2.id)
    with pytest.raises(NotFoundError):
        await store.get_question(q2.id)
    with pytest.raises(NotFoundError):
        await store.delete_question(q2.id)


def vars_of(row: Any) -> dict[str, Any]:
    return {f.name: getattr(row, f.name) for f in fields(row)}


async def test_typing_logs_crud_with_optional_question(store: AnyStore) -> None:
    user, _, q = await _seed(store)
    linked = await store.record_typing_log(user_id=user.id, question_id=q.id, wpm=60,
                                           accuracy=Decimal("97.5"), took_ms=1200)
    free = await store.record_typing_log(user_id=user.id, wpm=0, accuracy=0, took_ms=0)
    _assert_row_types(linked)
    assert linked.accuracy == Decimal("97.50") and str(linked.accuracy) == "97.50"
    assert free.question_id is None and free.accuracy == Decimal("0.00")
    assert await store.get_typing_log(linked.id) == linked
    assert [t.id for t in await store.list_typing_logs(user.id)] == [linked.id, free.id]

    updated = await store.update_typing_log(free.id, accuracy="100")
    assert updated.accuracy == Decimal("100.00")
    # no updated_at on typing_logs: only the given field changes
    assert {k for k, v in vars_of(updated).items() if vars_of(free)[k] != v} == {"accuracy"}

    await store.delete_typing_log(free.id)
    with pytest.raises(NotFoundError):
        await store.get_typing_log(free.id)


async def test_learning_events_crud_with_optional_fields(store: AnyStore) -> None:
    bare = await store.record_learning_event(user_id="legacy-user-7", app_id="typing",
                                             action="view")
    assert (bare.object_id, bare.score, bare.duration_ms) == (None, None, None)
    full = await store.record_learning_event(user_id="legacy-user-7", app_id="typing",
                                             action="answer", object_id="q-1", score=12.5,
                                             duration_ms=3400)
    _assert_row_types(full)
    assert full.score == Decimal("12.50") and full.duration_ms == 3400
    assert await store.get_learning_event(full.id) == full
    assert [e.id for e in await store.list_learning_events("legacy-user-7")] == [bare.id, full.id]
    assert await store.list_learning_events("someone-else") == []

    updated = await store.update_learning_event(bare.id, score=Decimal("-3.25"))
    assert updated.score == Decimal("-3.25")
    assert {k for k, v in vars_of(updated).items() if vars_of(bare)[k] != v} == {"score"}

    await store.delete_learning_event(bare.id)
    with pytest.raises(NotFoundError):
        await store.get_learning_event(bare.id)


async def test_user_delete_cascades_per_the_seed(store: AnyStore) -> None:
    user, book, q = await _seed(store)
    log = await store.record_typing_log(user_id=user.id, question_id=q.id, wpm=50,
                                        accuracy=90, took_ms=900)
    event = await store.record_learning_event(user_id=str(user.id), app_id="a", action="b")
    keeper = await store.create_user(name="Ben", email="ben@example.com")
    kept_book = await store.create_study_book(user_id=keeper.id, title="Kept")

    await store.delete_user(user.id)
    for get, row_id in ((store.get_study_book, book.id), (store.get_question, q.id),
                        (store.get_typing_log, log.id)):
        with pytest.raises(NotFoundError):
            await get(row_id)
    # learning_events.user_id is text with no foreign key in the seed: the event stays
    assert await store.get_learning_event(event.id) == event
    assert await store.get_study_book(kept_book.id) == kept_book


async def test_question_delete_sets_typing_log_question_null(store: AnyStore) -> None:
    user, book, q = await _seed(store)
    log = await store.record_typing_log(user_id=user.id, question_id=q.id, wpm=50,
                                        accuracy=90, took_ms=900)
    await store.delete_question(q.id)
    after = await store.get_typing_log(log.id)
    assert after.question_id is None
    assert {k for k, v in vars_of(after).items() if vars_of(log)[k] != v} == {"question_id"}
    assert await store.get_study_book(book.id) == book


async def test_study_book_delete_removes_its_questions_only(store: AnyStore) -> None:
    user, book, q = await _seed(store)
    other = await store.create_study_book(user_id=user.id, title="Other")
    kept = await store.create_question(study_book_id=other.id, language="en", category="c",
                                       difficulty="d", question="kept?", answer="yes")
    log = await store.record_typing_log(user_id=user.id, question_id=q.id, wpm=1, accuracy=1,
                                        took_ms=1)
    await store.delete_study_book(book.id)
    with pytest.raises(NotFoundError):
        await store.get_question(q.id)
    assert await store.get_question(kept.id) == kept
    assert (await store.get_typing_log(log.id)).question_id is None
    assert await store.get_user(user.id) == user


async def test_varchar_limits_are_characters_not_bytes(store: AnyStore) -> None:
    user = await store.create_user(name="é" * 255, email="ü" * 243 + "@example.com")
    assert len(user.name) == 255 and len(user.email) == 255
    book = await store.create_study_book(user_id=user.id, title="学" * 500)
    await store.create_question(study_book_id=book.id, language="語" * 50, category="類" * 100,
                                difficulty="難" * 50, question="q", answer="a")
    await store.record_learning_event(user_id="u" * 255, app_id="a" * 100, action="b" * 100,
                                      object_id="o" * 255, score=Decimal("99999999.99"))
    assert (await store.get_user(user.id)).name == "é" * 255


# -- the same input gives the same stored value on both stores --

JST = timezone(timedelta(hours=9))
T0 = datetime(2024, 3, 1, 12, 30, 45, 123456, tzinfo=JST)
T1 = datetime(2024, 3, 2, 1, 2, 3, 999999, tzinfo=UTC)
U_ID = uuid.UUID("11111111-1111-4111-8111-111111111111")
B_ID = uuid.UUID("22222222-2222-4222-8222-222222222222")
Q_ID = uuid.UUID("33333333-3333-4333-8333-333333333333")
FIXED_ROWS: list[tuple[Entity, dict[str, Any]]] = [
    (USERS, {"id": U_ID, "name": "Åsa 東京", "email": "asa@example.com",
             "created_at": T0, "updated_at": T1}),
    (STUDY_BOOKS, {"id": B_ID, "user_id": U_ID, "title": "Bücher", "description": None,
                   "created_at": T0, "updated_at": T0}),
    (QUESTIONS, {"id": Q_ID, "study_book_id": B_ID, "language": "en", "category": "python",
                 "difficulty": "easy", "question": "What does json.dumps do? 'quotes' \"too\"",
                 "answer": "Serialize obj\nto a JSON\tstr. 😀", "created_at": T0,
                 "updated_at": T1}),
    *[(TYPING_LOGS, {"id": uuid.UUID(int=0x44 << 120 | i), "user_id": U_ID,
                     "question_id": Q_ID if i % 2 else None, "wpm": 2**31 - 1 if i == 3 else i,
                     "accuracy": acc, "took_ms": i * 1000, "created_at": T0 + timedelta(
                         microseconds=i)})
      for i, acc in enumerate([Decimal("0.00"), Decimal("0.01"), Decimal("33.33"),
                               Decimal("99.99"), Decimal("100.00"), Decimal("57.10"),
                               Decimal("0.10"), Decimal("70.07")])],
    *[(LEARNING_EVENTS, {"id": uuid.UUID(int=0x55 << 120 | i), "user_id": "user-9",
                         "app_id": "typing", "action": "answer",
                         "object_id": None if i == 0 else f"obj-{i}", "score": score,
                         "duration_ms": None if i == 0 else i, "occurred_at": T1})
      for i, score in enumerate([None, Decimal("99999999.99"), Decimal("-99999999.99"),
                                 Decimal("0.30"), Decimal("12345678.91"), Decimal("0.07")])],
]


async def test_same_input_is_stored_identically_on_both(
    sqlite_store: SQLiteStore, pg_store: PostgresStore
) -> None:
    for entity, values in FIXED_ROWS:
        for s in (sqlite_store, pg_store):
            await s.insert_row(entity, dict(values), clock=1_700_000_000_000_000)
    for entity, values in FIXED_ROWS:
        a = await sqlite_store.get_row(entity, values["id"])
        b = await pg_store.get_row(entity, values["id"])
        assert a is not None and b is not None
        assert set(a) == set(b) == set(entity.column_names)
        for name in entity.column_names:
            x, y = a[name], b[name]
            if isinstance(x, uuid.UUID):  # asyncpg hands back its own uuid.UUID subclass
                assert isinstance(y, uuid.UUID), (entity.table, name, x, y)
            else:
                assert type(x) is type(y), (entity.table, name, x, y)
            assert x == y, (entity.table, name, x, y)
            assert x == values[name], (entity.table, name, x, values[name])
            if isinstance(x, datetime):
                assert x.utcoffset() is not None and y.utcoffset() is not None
                assert x.microsecond == y.microsecond == values[name].astimezone(UTC).microsecond
            if isinstance(x, Decimal):
                assert x.as_tuple() == y.as_tuple(), (name, x.as_tuple(), y.as_tuple())
                assert x.as_tuple().exponent == -2
        row_a, row_b = entity.make(a), entity.make(b)
        assert row_a == row_b
    # the named methods read them back the same way too
    assert await sqlite_store.get_question(Q_ID) == await pg_store.get_question(Q_ID)
    assert await sqlite_store.list_typing_logs(U_ID) == await pg_store.list_typing_logs(U_ID)


async def test_named_writes_store_identically_on_both(
    sqlite_store: SQLiteStore, pg_store: PostgresStore
) -> None:
    """The same create with the same id stores the same values, decimals included."""
    for s in (sqlite_store, pg_store):
        await s.create_user(id=U_ID, name="A", email="a@example.com")
        given: list[Any] = ["0.3", 33.33, Decimal("99.9"), 100, "0.07"]
        for i, acc in enumerate(given):
            await s.record_typing_log(id=uuid.UUID(int=i + 1), user_id=U_ID, wpm=i,
                                      accuracy=acc, took_ms=i)
    a = await sqlite_store.list_typing_logs(U_ID)
    b = await pg_store.list_typing_logs(U_ID)
    assert [(t.id, t.accuracy) for t in a] == [(t.id, t.accuracy) for t in b]
    assert sorted(t.accuracy for t in a) == sorted(
        Decimal(x) for x in ["0.30", "33.33", "99.90", "100.00", "0.07"])


# -- validation: the field is named, and both stores are unchanged --

class Both:
    """A SQLite and a PostgreSQL store seeded with one user, book and question."""

    def __init__(self, sqlite: SQLiteStore, pg: PostgresStore, path: Path, dsn: str) -> None:
        self.stores = (sqlite, pg)
        self.path = path
        self.dsn = dsn
        self.user_id = U_ID
        self.book_id = B_ID
        self.question_id = Q_ID

    async def counts(self) -> dict[str, tuple[int, int]]:
        conn = sqlite3.connect(self.path)
        try:
            lite = {t: conn.execute(f"SELECT count(*) FROM {t}").fetchone()[0] for t in TABLES}
        finally:
            conn.close()
        pg = await asyncpg.connect(self.dsn)
        try:
            big = {t: await pg.fetchval(f"SELECT count(*) FROM {t}") for t in TABLES}
        finally:
            await pg.close()
        return {t: (lite[t], big[t]) for t in TABLES}


@pytest.fixture(scope="module")
async def both(
    pg_server_dsn: str, pg_template: str, sqlite_template: Path,
    tmp_path_factory: pytest.TempPathFactory,
) -> AsyncIterator[Both]:
    path = tmp_path_factory.mktemp("both") / "app.db"
    copy_sqlite(sqlite_template, path)
    async with fresh_database(pg_server_dsn, template=pg_template) as dsn:
        sqlite, pg = SQLiteStore(path), PostgresStore(dsn)
        try:
            for s in (sqlite, pg):
                await s.create_user(id=U_ID, name="Aiko", email="aiko@example.com")
                await s.create_study_book(id=B_ID, user_id=U_ID, title="Python")
                await s.create_question(id=Q_ID, study_book_id=B_ID, language="en",
                                        category="c", difficulty="d", question="q?",
                                        answer="a.")
                await s.record_typing_log(user_id=U_ID, question_id=Q_ID, wpm=1, accuracy=1,
                                          took_ms=1)
            yield Both(sqlite, pg, path, dsn)
        finally:
            await sqlite.close()
            await pg.close()


Call = Callable[[AnyStore], Awaitable[Any]]


def _user(**kw: Any) -> Call:
    values = {"name": "Ben", "email": "ben@example.com", **kw}
    return lambda s: s.create_user(**values)


def _book(**kw: Any) -> Call:
    values = {"user_id": U_ID, "title": "T", **kw}
    return lambda s: s.create_study_book(**values)


def _question(**kw: Any) -> Call:
    values = {"study_book_id": B_ID, "language": "en", "category": "c", "difficulty": "d",
              "question": "q", "answer": "a", **kw}
    return lambda s: s.create_question(**values)


def _log(**kw: Any) -> Call:
    values = {"user_id": U_ID, "wpm": 10, "accuracy": Decimal("50"), "took_ms": 10, **kw}
    return lambda s: s.record_typing_log(**values)


def _event(**kw: Any) -> Call:
    values = {"user_id": "u", "app_id": "a", "action": "b", **kw}
    return lambda s: s.record_learning_event(**values)


INVALID: list[tuple[str, str, Call]] = [
    # malformed ids
    ("get_user id", "user_id", lambda s: s.get_user("not-a-uuid")),
    ("update_user id", "user_id", lambda s: s.update_user("123", name="x")),
    ("delete_question id", "question_id", lambda s: s.delete_question("q-1")),
    ("get_typing_log id", "typing_log_id", lambda s: s.get_typing_log(42)),  # type: ignore[arg-type]
    ("book user_id", "user_id", _book(user_id="nope")),
    ("question book id", "study_book_id", _question(study_book_id="")),
    ("log question_id", "question_id", _log(question_id="zzz")),
    ("explicit id", "id", _user(id="not-a-uuid")),
    ("list_study_books owner", "user_id", lambda s: s.list_study_books("bad")),
    # blank where NOT NULL
    ("blank name", "name", _user(name="   ")),
    ("blank title", "title", _book(title="")),
    ("blank language", "language", _question(language=" ")),
    ("blank category", "category", _question(category="\t")),
    ("blank difficulty", "difficulty", _question(difficulty="")),
    ("blank question", "question", _question(question=" \n ")),
    ("blank answer", "answer", _question(answer="")),
    ("blank event user", "user_id", _event(user_id=" ")),
    ("blank app_id", "app_id", _event(app_id="")),
    ("blank action", "action", _event(action="  ")),
    ("update to blank", "title", lambda s: s.update_study_book(B_ID, title="")),
    ("missing required", "name", lambda s: s.create_user(name=None, email="x@example.com")),  # type: ignore[arg-type]
    # over the seed's VARCHAR limits
    ("name 256", "name", _user(name="n" * 256)),
    ("email 256", "email", _user(email="e" * 244 + "@example.com")),
    ("title 501", "title", _book(title="t" * 501)),
    ("language 51", "language", _question(language="l" * 51)),
    ("category 101", "category", _question(category="c" * 101)),
    ("difficulty 51", "difficulty", _question(difficulty="d" * 51)),
    ("event user 256", "user_id", _event(user_id="u" * 256)),
    ("app_id 101", "app_id", _event(app_id="a" * 101)),
    ("action 101", "action", _event(action="b" * 101)),
    ("object_id 256", "object_id", _event(object_id="o" * 256)),
    ("update over limit", "name", lambda s: s.update_user(U_ID, name="n" * 256)),
    # email
    ("email without @", "email", _user(email="nope")),
    ("email two @", "email", _user(email="a@b@example.com")),
    ("email leading @", "email", _user(email="@example.com")),
    ("email trailing @", "email", _user(email="ben@")),
    ("email with space", "email", _user(email="ben smith@example.com")),
    # numbers
    ("negative wpm", "wpm", _log(wpm=-1)),
    ("negative took_ms", "took_ms", _log(took_ms=-5)),
    ("negative duration", "duration_ms", _event(duration_ms=-1)),
    ("wpm not int", "wpm", _log(wpm="fast")),
    ("wpm bool", "wpm", _log(wpm=True)),
    ("wpm too big", "wpm", _log(wpm=2**31)),
    ("accuracy below 0", "accuracy", _log(accuracy=Decimal("-0.01"))),
    ("accuracy above 100", "accuracy", _log(accuracy=Decimal("100.01"))),
    ("accuracy 150 int", "accuracy", _log(accuracy=150)),
    ("accuracy NaN float", "accuracy", _log(accuracy=math.nan)),
    ("accuracy inf", "accuracy", _log(accuracy=math.inf)),
    ("accuracy Decimal NaN", "accuracy", _log(accuracy=Decimal("NaN"))),
    ("accuracy text Infinity", "accuracy", _log(accuracy="Infinity")),
    ("accuracy 3 places", "accuracy", _log(accuracy=Decimal("12.345"))),
    ("accuracy float 3 places", "accuracy", _log(accuracy=12.345)),
    ("accuracy not a number", "accuracy", _log(accuracy="high")),
    ("score NaN", "score", _event(score=float("nan"))),
    ("score -inf", "score", _event(score=-math.inf)),
    ("score 3 places", "score", _event(score=Decimal("1.005"))),
    ("score too large", "score", _event(score=Decimal("100000000.00"))),
    ("update accuracy", "accuracy", lambda s: s.update_typing_log(MISSING, accuracy=101)),
    # unknown or read-only fields
    ("unknown field", "nickname", lambda s: s.update_user(U_ID, nickname="x")),
    ("id not updatable", "id", lambda s: s.update_user(U_ID, id=MISSING)),
    ("nothing to update", "user", lambda s: s.update_user(U_ID)),
    # paging
    ("limit 0", "limit", lambda s: s.list_users(limit=0)),
    ("offset -1", "offset", lambda s: s.list_users(offset=-1)),
]


@pytest.mark.parametrize(("field", "call"), [(f, c) for _, f, c in INVALID],
                         ids=[name for name, _, _ in INVALID])
async def test_invalid_input_names_the_field_and_changes_nothing(
    both: Both, field: str, call: Call
) -> None:
    before = await both.counts()
    for s in both.stores:
        with pytest.raises(ValidationError) as info:
            await call(s)
        assert info.value.field == field, (s.backend, str(info.value))
        assert field in str(info.value)
        assert isinstance(info.value, ValueError)
    assert await both.counts() == before


MISSING_PARENTS: list[tuple[str, str, Call]] = [
    ("book of a missing user", "user", _book(user_id=MISSING)),
    ("question of a missing book", "study_book", _question(study_book_id=MISSING)),
    ("log of a missing user", "user", _log(user_id=MISSING)),
    ("log of a missing question", "question", _log(question_id=MISSING)),
    ("move a book to a missing user", "user",
     lambda s: s.update_study_book(B_ID, user_id=MISSING)),
]


@pytest.mark.parametrize(("entity", "call"), [(e, c) for _, e, c in MISSING_PARENTS],
                         ids=[name for name, _, _ in MISSING_PARENTS])
async def test_missing_parent_is_not_found_and_changes_nothing(
    both: Both, entity: str, call: Call
) -> None:
    before = await both.counts()
    for s in both.stores:
        with pytest.raises(NotFoundError) as info:
            await call(s)
        assert info.value.entity == entity, (s.backend, str(info.value))
        assert isinstance(info.value, LookupError)
    assert await both.counts() == before


@pytest.mark.parametrize("call", [
    lambda s: s.get_user(MISSING), lambda s: s.update_question(MISSING, answer="x"),
    lambda s: s.delete_study_book(MISSING), lambda s: s.delete_learning_event(MISSING),
], ids=["get", "update", "delete book", "delete event"])
async def test_missing_row_is_not_found_and_changes_nothing(both: Both, call: Call) -> None:
    before = await both.counts()
    for s in both.stores:
        with pytest.raises(NotFoundError):
            await call(s)
    assert await both.counts() == before


async def test_duplicate_id_changes_nothing(both: Both) -> None:
    before = await both.counts()
    for s in both.stores:
        with pytest.raises(ValidationError) as info:
            await s.create_user(id=U_ID, name="Again", email="again@example.com")
        assert info.value.field == "id"
    assert await both.counts() == before
    for s in both.stores:
        assert (await s.get_user(U_ID)).name == "Aiko"
