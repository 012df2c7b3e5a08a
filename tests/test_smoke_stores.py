"""Every named operation on each store, and the same input stored the same way on both."""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal

import pytest

from proxy import NotFoundError, ValidationError


async def test_crud_round_trip(store) -> None:
    user = await store.create_user(name="Aiko", email="aiko@example.com")
    assert user.created_at.tzinfo is not None
    book = await store.create_study_book(user_id=user.id, title="Python")
    q = await store.create_question(study_book_id=book.id, language="en", category="python",
                                   difficulty="easy", question="What does json.dumps do?",
                                   answer="Serialize obj to a JSON formatted str.")
    log = await store.record_typing_log(user_id=user.id, question_id=q.id, wpm=60,
                                        accuracy=Decimal("97.50"), took_ms=1200)
    ev = await store.record_learning_event(user_id=str(user.id), app_id="app", action="view",
                                           score="12.5")
    assert await store.get_user(user.id) == user
    assert await store.get_question(q.id) == q
    assert (await store.get_typing_log(log.id)).accuracy == Decimal("97.50")
    assert (await store.get_learning_event(ev.id)).score == Decimal("12.50")
    assert [b.id for b in await store.list_study_books(user.id)] == [book.id]
    updated = await store.update_question(q.id, answer="Turns obj into JSON text.")
    assert updated.answer == "Turns obj into JSON text."
    assert updated.updated_at > q.updated_at
    hits = await store.search_questions("json dumps", user_id=user.id)
    assert [h.question_id for h in hits] == [q.id]
    assert "<mark>" in hits[0].highlight
    await store.delete_user(user.id)
    with pytest.raises(NotFoundError):
        await store.get_question(q.id)


async def test_validation(store) -> None:
    with pytest.raises(ValidationError, match="email"):
        await store.create_user(name="x", email="nope")
    with pytest.raises(NotFoundError):
        await store.create_study_book(user_id="8c2b1f5e-2f7b-4c39-9d7c-3f7c1d2a9b10", title="x")
    assert isinstance(datetime.now(), datetime)
