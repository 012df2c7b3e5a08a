"""The contract's named methods (create_user, get_question, ...), shared by every face.

Each store and the repository mixes this in and provides five primitives; validation happens
here, before any primitive (and so any store) is called.
"""

from __future__ import annotations

import uuid
from datetime import datetime
from decimal import Decimal
from typing import Any, Protocol

from proxy.models import (
    LEARNING_EVENTS,
    QUESTIONS,
    STUDY_BOOKS,
    TYPING_LOGS,
    USERS,
    Entity,
    LearningEvent,
    Question,
    StudyBook,
    TypingLog,
    User,
)
from proxy.validation import check_create, check_page, check_update, check_value, parse_id

Id = uuid.UUID | str
Number = Decimal | int | float | str


class Primitives(Protocol):
    async def _create(self, entity: Entity, values: dict[str, Any]) -> Any: ...
    async def _update(self, entity: Entity, row_id: uuid.UUID, changes: dict[str, Any]) -> Any: ...
    async def _delete(self, entity: Entity, row_id: uuid.UUID) -> None: ...
    async def _get(self, entity: Entity, row_id: uuid.UUID) -> Any: ...
    async def _list(self, entity: Entity, owner: Any, limit: int, offset: int) -> list[Any]: ...


def _create_values(entity: Entity, given: dict[str, Any], row_id: Id | None) -> dict[str, Any]:
    values = check_create(entity, {k: v for k, v in given.items()})
    values["id"] = uuid.uuid4() if row_id is None else parse_id(row_id, "id")
    return values


def _owner(entity: Entity, owner: Any) -> Any:
    assert entity.owner is not None
    return check_value(entity.column(entity.owner), owner)


class EntityMethods:
    """create_*, get_*, list_*, update_*, delete_* for the five entities."""

    # -- users --
    async def create_user(self: Primitives, *, name: str, email: str, id: Id | None = None) -> User:
        values = _create_values(USERS, {"name": name, "email": email}, id)
        user: User = await self._create(USERS, values)
        return user

    async def get_user(self: Primitives, user_id: Id) -> User:
        row: User = await self._get(USERS, parse_id(user_id, "user_id"))
        return row

    async def list_users(self: Primitives, *, limit: int = 100, offset: int = 0) -> list[User]:
        check_page(limit, offset)
        return await self._list(USERS, None, limit, offset)

    async def update_user(self: Primitives, user_id: Id, **changes: Any) -> User:
        row: User = await self._update(USERS, parse_id(user_id, "user_id"),
                                       check_update(USERS, changes))
        return row

    async def delete_user(self: Primitives, user_id: Id) -> None:
        await self._delete(USERS, parse_id(user_id, "user_id"))

    # -- study books --
    async def create_study_book(
        self: Primitives, *, user_id: Id, title: str, description: str | None = None,
        id: Id | None = None,
    ) -> StudyBook:
        values = _create_values(
            STUDY_BOOKS, {"user_id": user_id, "title": title, "description": description}, id
        )
        row: StudyBook = await self._create(STUDY_BOOKS, values)
        return row

    async def get_study_book(self: Primitives, study_book_id: Id) -> StudyBook:
        row: StudyBook = await self._get(STUDY_BOOKS, parse_id(study_book_id, "study_book_id"))
        return row

    async def list_study_books(
        self: Primitives, user_id: Id, *, limit: int = 100, offset: int = 0
    ) -> list[StudyBook]:
        check_page(limit, offset)
        return await self._list(STUDY_BOOKS, _owner(STUDY_BOOKS, user_id), limit, offset)

    async def update_study_book(self: Primitives, study_book_id: Id, **changes: Any) -> StudyBook:
        row: StudyBook = await self._update(
            STUDY_BOOKS, parse_id(study_book_id, "study_book_id"),
            check_update(STUDY_BOOKS, changes),
        )
        return row

    async def delete_study_book(self: Primitives, study_book_id: Id) -> None:
        await self._delete(STUDY_BOOKS, parse_id(study_book_id, "study_book_id"))

    # -- questions --
    async def create_question(
        self: Primitives, *, study_book_id: Id, language: str, category: str, difficulty: str,
        question: str, answer: str, id: Id | None = None,
    ) -> Question:
        values = _create_values(QUESTIONS, {
            "study_book_id": study_book_id, "language": language, "category": category,
            "difficulty": difficulty, "question": question, "answer": answer,
        }, id)
        row: Question = await self._create(QUESTIONS, values)
        return row

    async def get_question(self: Primitives, question_id: Id) -> Question:
        row: Question = await self._get(QUESTIONS, parse_id(question_id, "question_id"))
        return row

    async def list_questions(
        self: Primitives, study_book_id: Id, *, limit: int = 100, offset: int = 0
    ) -> list[Question]:
        check_page(limit, offset)
        return await self._list(QUESTIONS, _owner(QUESTIONS, study_book_id), limit, offset)

    async def update_question(self: Primitives, question_id: Id, **changes: Any) -> Question:
        row: Question = await self._update(
            QUESTIONS, parse_id(question_id, "question_id"), check_update(QUESTIONS, changes)
        )
        return row

    async def delete_question(self: Primitives, question_id: Id) -> None:
        await self._delete(QUESTIONS, parse_id(question_id, "question_id"))

    # -- typing logs --
    async def record_typing_log(
        self: Primitives, *, user_id: Id, wpm: int, accuracy: Number, took_ms: int,
        question_id: Id | None = None, id: Id | None = None,
    ) -> TypingLog:
        values = _create_values(TYPING_LOGS, {
            "user_id": user_id, "question_id": question_id, "wpm": wpm, "accuracy": accuracy,
            "took_ms": took_ms,
        }, id)
        row: TypingLog = await self._create(TYPING_LOGS, values)
        return row

    create_typing_log = record_typing_log

    async def get_typing_log(self: Primitives, typing_log_id: Id) -> TypingLog:
        row: TypingLog = await self._get(TYPING_LOGS, parse_id(typing_log_id, "typing_log_id"))
        return row

    async def list_typing_logs(
        self: Primitives, user_id: Id, *, limit: int = 100, offset: int = 0
    ) -> list[TypingLog]:
        check_page(limit, offset)
        return await self._list(TYPING_LOGS, _owner(TYPING_LOGS, user_id), limit, offset)

    async def update_typing_log(self: Primitives, typing_log_id: Id, **changes: Any) -> TypingLog:
        row: TypingLog = await self._update(
            TYPING_LOGS, parse_id(typing_log_id, "typing_log_id"),
            check_update(TYPING_LOGS, changes),
        )
        return row

    async def delete_typing_log(self: Primitives, typing_log_id: Id) -> None:
        await self._delete(TYPING_LOGS, parse_id(typing_log_id, "typing_log_id"))

    # -- learning events --
    async def record_learning_event(
        self: Primitives, *, user_id: str, app_id: str, action: str,
        object_id: str | None = None, score: Number | None = None,
        duration_ms: int | None = None, id: Id | None = None,
    ) -> LearningEvent:
        values = _create_values(LEARNING_EVENTS, {
            "user_id": user_id, "app_id": app_id, "action": action, "object_id": object_id,
            "score": score, "duration_ms": duration_ms,
        }, id)
        row: LearningEvent = await self._create(LEARNING_EVENTS, values)
        return row

    create_learning_event = record_learning_event

    async def get_learning_event(self: Primitives, learning_event_id: Id) -> LearningEvent:
        row: LearningEvent = await self._get(
            LEARNING_EVENTS, parse_id(learning_event_id, "learning_event_id")
        )
        return row

    async def list_learning_events(
        self: Primitives, user_id: str, *, limit: int = 100, offset: int = 0
    ) -> list[LearningEvent]:
        check_page(limit, offset)
        return await self._list(LEARNING_EVENTS, _owner(LEARNING_EVENTS, user_id), limit, offset)

    async def update_learning_event(
        self: Primitives, learning_event_id: Id, **changes: Any
    ) -> LearningEvent:
        row: LearningEvent = await self._update(
            LEARNING_EVENTS, parse_id(learning_event_id, "learning_event_id"),
            check_update(LEARNING_EVENTS, changes),
        )
        return row

    async def delete_learning_event(self: Primitives, learning_event_id: Id) -> None:
        await self._delete(LEARNING_EVENTS, parse_id(learning_event_id, "learning_event_id"))


def stamp_create(entity: Entity, values: dict[str, Any], now: datetime) -> dict[str, Any]:
    """Fix a new row's timestamps (once, so both stores hold the same values)."""
    for name in entity.timestamp_columns:
        values[name] = now
    return values


def stamp_update(entity: Entity, changes: dict[str, Any], now: datetime) -> dict[str, Any]:
    if entity.has_updated_at:
        changes["updated_at"] = now
    return changes


