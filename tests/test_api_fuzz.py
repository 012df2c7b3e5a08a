"""A fuzz campaign over the Python API (issue 24): hypothesis calls every public method of the
repository (the five entities' create/get/list/update/delete and search_questions) with hostile
arguments (wrong types, huge and tiny numbers, Decimal specials, NaN and infinities, lone
surrogates, NUL, 10 kB strings, ids in every shape). Only ValidationError and NotFoundError may
come out, and a refused call leaves both stores as they were."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry

from config import Settings
from proxy import NotFoundError, ValidationError, open_repository
from proxy.repository import Repository
from tests.convergence import all_rows

SPECIAL_NUMBERS: list[Any] = [
    0, -1, 2**31 - 1, 2**31, -(2**31) - 1, 2**63, 10**40, -(10**40), 10**400,
    0.5, -0.0, 1e-320, 1e308, float("nan"), float("inf"), float("-inf"),
    Decimal("NaN"), Decimal("sNaN"), Decimal("Infinity"), Decimal("-Infinity"), Decimal("1e30"),
    Decimal("1e-30"), Decimal("100.001"), Decimal("99.999"), Decimal("-0.00"), Decimal("1E+2"),
    Decimal("9" * 60), True, False,
]
SPECIAL_TEXT: list[Any] = [
    "", " ", "\t\n", "1e30", "-1e30", "1e999999999", "1e-999999999", "NaN", "sNaN", "-inf",
    "Infinity", "0x10", "1_000", " 12 ", "\ud800", "a\udfffb", "a\x00b", "\x00", "x" * 10_000,
    "é" * 256, "a@b", "@", "a@@b", "@a", "a@", "a b@c", "😀" * 300, "\u202e", "٣", "<b>&amp;",
]
special = st.sampled_from(SPECIAL_NUMBERS + SPECIAL_TEXT)
hostile: st.SearchStrategy[Any] = st.one_of(
    special, st.none(), st.integers(), st.floats(), st.decimals(), st.text(max_size=40),
    st.text(st.characters(categories=("Cs", "Cc", "Zs", "Mn")), max_size=10),
    st.binary(max_size=8), st.lists(st.integers(), max_size=2), st.uuids(),
    st.datetimes(), st.datetimes(timezones=st.just(UTC)), st.dictionaries(st.text(max_size=3),
                                                                          st.integers(),
                                                                          max_size=2),
)


NUMERIC = {"wpm", "took_ms", "duration_ms", "accuracy", "score"}
#: what a field gets most often: the special values of its kind
numeric_special = st.sampled_from(SPECIAL_NUMBERS + [t for t in SPECIAL_TEXT if t[:1] in "-1NsI0 "])
text_special = st.sampled_from(SPECIAL_TEXT)


def for_field(key: str) -> st.SearchStrategy[Any]:
    own = numeric_special if key in NUMERIC else text_special
    return st.one_of(own, own, hostile)


def id_shapes(real: uuid.UUID) -> st.SearchStrategy[Any]:
    """An id, real or not, in every shape a caller might pass."""
    base = st.one_of(st.just(real), st.uuids())
    return st.one_of(
        base, base.map(str), base.map(lambda u: str(u).upper()), base.map(lambda u: u.hex),
        base.map(lambda u: "{" + str(u) + "}"), base.map(lambda u: u.urn),
        base.map(lambda u: u.int), base.map(lambda u: u.bytes),
        base.map(lambda u: " " + str(u)), hostile,
    )


class World:
    """One repository on its own event loop for the whole campaign, with a row of each entity."""

    def __init__(self, settings: Settings) -> None:
        self.loop = asyncio.new_event_loop()
        self._cm = open_repository(settings, registry=CollectorRegistry())
        self.repo: Repository = self.run(self._cm.__aenter__())
        self.ids: dict[str, uuid.UUID] = self.run(self._seed())

    def run(self, coro: Any) -> Any:
        return self.loop.run_until_complete(coro)

    async def _seed(self) -> dict[str, uuid.UUID]:
        r = self.repo
        user = await r.create_user(name="Aiko", email="aiko@example.com")
        book = await r.create_study_book(user_id=user.id, title="Python")
        q = await r.create_question(study_book_id=book.id, language="en", category="python",
                                    difficulty="easy", question="What does json.dumps do?",
                                    answer="Serialize obj to a JSON formatted str.")
        log = await r.record_typing_log(user_id=user.id, question_id=q.id, wpm=60,
                                        accuracy=Decimal("95.50"), took_ms=1000)
        event = await r.record_learning_event(user_id=str(user.id), app_id="quiz",
                                              action="answered", score=Decimal("1.25"))
        return {"user": user.id, "study_book": book.id, "question": q.id, "typing_log": log.id,
                "learning_event": event.id}

    async def snapshot(self) -> list[Any]:
        await self.repo.replay_once()
        return [await all_rows(s) for s in self.repo.stores.values()]

    def close(self) -> None:
        self.run(self._cm.__aexit__(None, None, None))
        self.loop.close()


@pytest.fixture
def world(sqlite_path: Path, pg_dsn: str) -> Iterator[World]:
    w = World(Settings(sqlite_path=sqlite_path, postgres_dsn=pg_dsn, shadow_sample_rate=0.0))
    try:
        yield w
    finally:
        w.close()


# each entity: its create method, the valid values a call starts from (ids filled in later)
ENTITIES: dict[str, tuple[str, dict[str, Any]]] = {
    "user": ("create_user", {"name": "N", "email": "n@example.com"}),
    "study_book": ("create_study_book", {"user_id": "user", "title": "T", "description": "D"}),
    "question": ("create_question", {"study_book_id": "study_book", "language": "en",
                                     "category": "c", "difficulty": "d", "question": "Q",
                                     "answer": "A"}),
    "typing_log": ("record_typing_log", {"user_id": "user", "question_id": "question", "wpm": 1,
                                         "accuracy": Decimal("50"), "took_ms": 1}),
    "learning_event": ("record_learning_event", {"user_id": "user", "app_id": "a",
                                                 "action": "x", "object_id": "o",
                                                 "score": Decimal("1"), "duration_ms": 1}),
}
PLURAL = {"user": "users", "study_book": "study_books", "question": "questions",
          "typing_log": "typing_logs", "learning_event": "learning_events"}
OWNER = {"study_book": "user", "question": "study_book", "typing_log": "user",
         "learning_event": "user"}
REFS = {"user_id", "study_book_id", "question_id"}


@st.composite
def calls(draw: st.DrawFn, ids: dict[str, uuid.UUID]) -> tuple[str, tuple[Any, ...],
                                                                 dict[str, Any]]:
    entity = draw(st.sampled_from([*ENTITIES, "search"]), label="entity")
    if entity == "search":
        kwargs: dict[str, Any] = {"user_id": draw(id_shapes(ids["user"]))}
        if draw(st.booleans()):
            kwargs["limit"] = draw(st.one_of(hostile, st.integers(-5, 105)))
        query = draw(st.one_of(hostile, st.text(max_size=600), st.just("json dumps"),
                               st.just("jsno dumsp")))
        return "search_questions", (query,), kwargs
    op = draw(st.sampled_from(["create", "get", "list", "update", "delete"]), label="op")
    create, base = ENTITIES[entity]
    values = {k: (str(ids[v]) if entity == "learning_event" else ids[v])
              if k in REFS else v for k, v in base.items()}
    # one to three fields hostile (an id field in any shape), the rest valid
    for key in draw(st.lists(st.sampled_from(sorted(values)), min_size=1, max_size=3,
                             unique=True)):
        values[key] = draw(id_shapes(ids[base[key]]) if key in REFS and entity != "learning_event"
                           else for_field(key), label=key)
    if op == "create":
        if draw(st.booleans()):
            values["id"] = draw(id_shapes(ids[entity]))
        return create, (), values
    if op == "get":
        return f"get_{entity}", (draw(id_shapes(ids[entity])),), {}
    if op == "delete":  # never a real row: the campaign keeps its rows
        return f"delete_{entity}", (draw(st.one_of(st.uuids(), hostile)),), {}
    if op == "list":
        args = (draw(id_shapes(ids[OWNER[entity]])),) if entity in OWNER else ()
        page = draw(st.dictionaries(st.sampled_from(["limit", "offset"]),
                                    st.one_of(hostile, st.integers(-3, 2000))))
        return f"list_{PLURAL[entity]}", args, page
    keys = draw(st.lists(st.sampled_from([*values, "id", "created_at", "bogus"]), max_size=3,
                         unique=True))
    changes = {k: draw(for_field(k)) for k in keys}
    return f"update_{entity}", (draw(id_shapes(ids[entity])),), changes


@pytest.mark.slow
def test_only_validation_and_not_found_errors_come_out(world: World) -> None:
    outcomes: dict[str, int] = {}

    @settings(max_examples=1000, deadline=None, database=None, derandomize=True,
              suppress_health_check=list(HealthCheck))
    @given(call=calls(world.ids))
    def campaign(call: tuple[str, tuple[Any, ...], dict[str, Any]]) -> None:
        name, args, kwargs = call
        before = world.run(world.snapshot())
        try:
            world.run(getattr(world.repo, name)(*args, **kwargs))
        except (ValidationError, NotFoundError) as exc:
            outcomes[type(exc).__name__] = outcomes.get(type(exc).__name__, 0) + 1
            after = world.run(world.snapshot())
            assert after == before, f"{name}{args}{kwargs} was refused but changed a store"
        else:
            outcomes["ok"] = outcomes.get("ok", 0) + 1

    campaign()
    print(f"API fuzz outcomes: {outcomes}")
    assert outcomes.get("ValidationError", 0) > 100
    # and the stores still agree
    sqlite_rows, pg_rows = world.run(world.snapshot())
    assert sqlite_rows == pg_rows


def test_odd_values_the_red_team_found() -> None:
    """The two from the issue, without a database: both refused by validation itself."""
    from proxy.models import LEARNING_EVENTS, TYPING_LOGS, USERS
    from proxy.validation import check_value

    for value in ("1e30", Decimal("1e30"), 10**40, "1e999999999", Decimal("9" * 60)):
        with pytest.raises(ValidationError):
            check_value(TYPING_LOGS.column("accuracy"), value)
        with pytest.raises(ValidationError):
            check_value(LEARNING_EVENTS.column("score"), value)
    for text in ("\ud800", "a\udfffb"):
        with pytest.raises(ValidationError):
            check_value(USERS.column("name"), text)
    assert datetime.now(UTC)  # (datetime is used by the strategies above)
