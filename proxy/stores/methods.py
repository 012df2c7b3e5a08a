"""The contract's named methods on one store alone (no mirror, no outbox)."""

from __future__ import annotations

import uuid
from typing import Any

from proxy.clock import next_version
from proxy.codec import now_utc
from proxy.entity_methods import EntityMethods, stamp_create, stamp_update
from proxy.errors import NotFoundError
from proxy.models import Entity, SearchResult
from proxy.stores.base import Store
from proxy.stores.searchtext import DEFAULT_LIMIT, check_limit
from proxy.validation import parse_id


class StoreMethods(EntityMethods):
    """Mixed into each store: validated named methods over the store's primitives."""

    async def _create(self: Store, entity: Entity, values: dict[str, Any]) -> Any:
        written = await self.insert_row(entity, stamp_create(entity, values, now_utc()),
                                        clock=next_version())
        assert written.row is not None
        return entity.make(written.row)

    async def _update(
        self: Store, entity: Entity, row_id: uuid.UUID, changes: dict[str, Any]
    ) -> Any:
        written = await self.update_row(entity, row_id,
                                        stamp_update(entity, changes, now_utc()),
                                        clock=next_version())
        assert written.row is not None
        return entity.make(written.row)

    async def _delete(self: Store, entity: Entity, row_id: uuid.UUID) -> None:
        await self.delete_row(entity, row_id, clock=next_version())

    async def _get(self: Store, entity: Entity, row_id: uuid.UUID) -> Any:
        row = await self.get_row(entity, row_id)
        if row is None:
            raise NotFoundError(entity.name, row_id)
        return entity.make(row)

    async def _list(self: Store, entity: Entity, owner: Any, limit: int,
                    offset: int) -> list[Any]:
        return [entity.make(r) for r in await self.list_rows(entity, owner, limit=limit,
                                                             offset=offset)]

    async def search_questions(
        self: Store, query: str, *, user_id: uuid.UUID | str, limit: int = DEFAULT_LIMIT
    ) -> list[SearchResult]:
        """Search one user's questions (the contract's semantics)."""
        check_limit(limit)
        uid = parse_id(user_id, "user_id")
        return await self.search(query, uid, limit)
