"""The one `Store` protocol both databases satisfy, and the values that cross it.

A store knows one database. It never imports the repository or the shadow: the repository
decides which store is primary and what goes to the outbox; the store only does what it is told,
atomically.

Writes carry a `version` (microseconds from the repository's clock). The primary takes the write
as given; a mirror applies a `Mutation` only when its version is newer than what it holds and no
tombstone of a newer delete exists, so replays are idempotent and a late replay never overwrites
newer data or brings a deleted row back.
"""

from __future__ import annotations

import uuid
from collections.abc import Generator, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from enum import Enum
from typing import Any, Literal, Protocol

from proxy.models import Entity, SearchResult

Op = Literal["insert", "update", "delete"]


@dataclass(frozen=True, slots=True)
class Mutation:
    """One write as the mirror must replay it: the full row image after the write, or a delete."""

    entity: str  # Entity.name
    op: Op
    row_id: uuid.UUID
    version: int
    row: dict[str, Any] | None = None  # None for a delete

    def to_json(self) -> dict[str, Any]:
        from proxy.codec import encode_row

        return {
            "entity": self.entity,
            "op": self.op,
            "row_id": str(self.row_id),
            "version": self.version,
            "row": None if self.row is None else encode_row(self.entity, self.row),
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Mutation:
        from proxy.codec import decode_row

        row = data.get("row")
        return cls(
            entity=data["entity"],
            op=data["op"],
            row_id=uuid.UUID(data["row_id"]),
            version=int(data["version"]),
            row=None if row is None else decode_row(data["entity"], row),
        )


class ApplyOutcome(Enum):
    """What a mirror did with one mutation."""

    APPLIED = "applied"
    SUPERSEDED = "superseded"  # the store already held a newer version or a newer delete
    FAILED = "failed"  # could not apply now (retry later)


@dataclass(frozen=True, slots=True)
class ApplyResult:
    outcome: ApplyOutcome
    error: str | None = None
    permanent: bool = False  # a constraint only this store enforces: retrying will not help


@dataclass(frozen=True, slots=True)
class OutboxEntry:
    """A mirror write recorded in the primary's transaction, waiting to reach `target`."""

    seq: int
    target: str
    mutation: Mutation
    created_at: datetime
    attempts: int = 0
    last_error: str | None = None
    dead: bool = False


@dataclass(frozen=True, slots=True)
class OutboxStats:
    pending: int = 0
    oldest_created_at: datetime | None = None
    dead: int = 0
    by_row: frozenset[uuid.UUID] = field(default_factory=frozenset)


class Confirmed(Protocol):
    """Whether each primary write of a batch committed: awaitable (more than once), and
    `settled` once every answer is known."""

    @property
    def settled(self) -> bool: ...

    def __await__(self) -> Generator[Any, None, Sequence[bool]]: ...


class Store(Protocol):
    """One database. Every method is safe to call concurrently."""

    backend: Literal["sqlite", "postgres"]

    async def init_schema(self) -> None:
        """Create (or upgrade in place) the schema; safe to run again."""

    async def ping(self) -> None:
        """Raise `StoreUnavailable` when the database cannot be reached."""

    async def close(self) -> None: ...

    # -- writes as the primary: the row and its outbox entries in one transaction --
    async def insert_row(
        self, entity: Entity, values: dict[str, Any], *, version: int,
        outbox_targets: Sequence[str] = (),
    ) -> tuple[dict[str, Any], int | None]:
        """Insert; return the stored row and the outbox seq (None when no target)."""

    async def update_row(
        self, entity: Entity, row_id: uuid.UUID, changes: dict[str, Any], *, version: int,
        outbox_targets: Sequence[str] = (),
    ) -> tuple[dict[str, Any], int | None]:
        """Partial update; return the whole row after it. `NotFoundError` if absent."""

    async def delete_row(
        self, entity: Entity, row_id: uuid.UUID, *, version: int,
        outbox_targets: Sequence[str] = (),
    ) -> int | None:
        """Delete (children follow the seed's ON DELETE rules). `NotFoundError` if absent."""

    # -- reads --
    async def get_row(self, entity: Entity, row_id: uuid.UUID) -> dict[str, Any] | None: ...

    async def list_rows(
        self, entity: Entity, owner: Any | None, *, limit: int, offset: int
    ) -> list[dict[str, Any]]: ...

    async def search(
        self, query: str, user_id: uuid.UUID, limit: int, *, highlights: bool = True
    ) -> list[SearchResult]: ...

    # -- as a mirror --
    async def apply(self, mutations: Sequence[Mutation]) -> list[ApplyResult]:
        """Apply each mutation if newer than what is held; idempotent, in the order given."""

    async def apply_when(
        self, mutations: Sequence[Mutation], confirmed: Confirmed
    ) -> list[ApplyResult | None]:
        """Apply mutations whose primary writes run now; only those `confirmed` (True) stay
        applied (None for the others). A store may overlap its work with the primaries'."""

    async def flush_wal(self) -> None:
        """Make every commit so far durable, the asynchronous ones of `apply_when` included."""

    # -- the outbox kept in this store for writes that must reach `target` --
    async def outbox_pending(self, target: str, limit: int) -> list[OutboxEntry]:
        """Oldest first, dead letters excluded."""

    async def outbox_ack(self, seqs: Sequence[int]) -> None: ...

    async def outbox_retry(self, seq: int, error: str, *, dead: bool) -> None: ...

    async def outbox_stats(self, target: str) -> OutboxStats: ...

    async def outbox_dead(self, target: str, limit: int) -> list[OutboxEntry]: ...

    async def outbox_requeue_dead(self, target: str) -> int:
        """Put the dead letters for `target` back in the queue (attempts 0, last error kept);
        return how many."""
