"""The one `Store` protocol both databases satisfy, and the values that cross it.

A store knows one database. It never imports the repository or the shadow: the repository
decides which store is primary and what goes to the outbox; the store only does what it is told,
atomically.

A row's version is chosen by the primary, inside the transaction that writes it: one more than
the version it replaces (the row's, or for a re-created row its tombstone's), and at least the
caller's clock reading. So versions follow the primary's commit order for each row, whatever the
clocks of the processes writing it. A mirror applies a `Mutation` only when its version is newer
than what it holds and no tombstone of a newer delete exists, so replays are idempotent and a
late replay never overwrites newer data or brings a deleted row back.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from enum import Enum
from typing import Any, Literal, NamedTuple, Protocol

from proxy.control import Control
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
    #: a row this one references is not here: not yet arrived, or deleted meanwhile (the
    #: repository asks the primary which, see `Repository._resolve_missing_parents`)
    missing_parent: bool = False


#: a parent's delete on a mirror while rows there still reference the row (`delete_parents`)
WAITS = ApplyResult(ApplyOutcome.FAILED, "rows on this store still reference the deleted row: "
                    "the delete waits for their writes")


class Written(NamedTuple):
    """What a primary write committed: the row after it (None for a delete), the outbox seq
    of its mirror write (None without a target), the version the primary gave it, and for a
    delete the writes its ON DELETE rules made (children deleted or set to NULL, each with an
    outbox entry of its own)."""

    row: dict[str, Any] | None
    seq: int | None
    version: int
    cascaded: tuple[Mutation, ...] = ()


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


class Store(Protocol):
    """One database. Every method is safe to call concurrently."""

    backend: Literal["sqlite", "postgres"]

    async def init_schema(self) -> None:
        """Bring the schema to the newest revision (creating or upgrading it in place); safe
        to run again."""

    async def schema_revision(self) -> str | None:
        """The schema revision the database records (None before revisions were recorded)."""

    async def ping(self) -> None:
        """Raise `StoreUnavailable` when the database cannot be reached."""

    async def close(self) -> None: ...

    # -- writes as the primary: the row, its version and its outbox entries in one transaction
    # (`clock`: the least version the write may take, see the module docstring; `epoch`: the
    # control record's epoch the writer acts on, `Fenced` if the store's is another) --
    async def insert_row(
        self, entity: Entity, values: dict[str, Any], *, clock: int,
        outbox_targets: Sequence[str] = (), epoch: int | None = None,
    ) -> Written:
        """Insert; return the stored row, the outbox seq and the version."""

    async def update_row(
        self, entity: Entity, row_id: uuid.UUID, changes: dict[str, Any], *, clock: int,
        outbox_targets: Sequence[str] = (), epoch: int | None = None,
    ) -> Written:
        """Partial update; return the whole row after it. `NotFoundError` if absent."""

    async def delete_row(
        self, entity: Entity, row_id: uuid.UUID, *, clock: int,
        outbox_targets: Sequence[str] = (), epoch: int | None = None,
    ) -> Written:
        """Delete; children follow the seed's ON DELETE rules, carried out as writes of their
        own (a version and an outbox entry each). `NotFoundError` if absent."""

    # -- reads --
    async def get_row(self, entity: Entity, row_id: uuid.UUID) -> dict[str, Any] | None: ...

    async def get_versioned(
        self, entity: Entity, row_ids: Sequence[uuid.UUID]
    ) -> dict[uuid.UUID, tuple[dict[str, Any], int]]:
        """The rows among `row_ids` as they are now, each with its version (absent: left out)."""

    async def list_rows(
        self, entity: Entity, owner: Any | None, *, limit: int, offset: int
    ) -> list[dict[str, Any]]: ...

    async def search(
        self, query: str, user_id: uuid.UUID, limit: int, *, highlights: bool = True
    ) -> list[SearchResult]: ...

    # -- the control record (proxy.control) --
    async def read_control(self) -> Control | None: ...

    async def advance_control(self, control: Control) -> Control:
        """Store `control` if its epoch is higher than the stored one's; return the stored."""

    async def fence_control(self, control: Control, *, expect_epoch: int) -> bool:
        """Store `control` only if the stored epoch is still `expect_epoch`, once the writes
        under way with the old epoch have committed."""

    # -- as a mirror --
    async def apply(self, mutations: Sequence[Mutation]) -> list[ApplyResult]:
        """Apply each mutation if newer than what is held; idempotent, in the order given."""

    async def delete_parents(self, deletes: Sequence[Mutation]) -> list[ApplyResult]:
        """Apply deletes of rows others may reference, in the order given, each only if newer
        than what is held and no row here references it (this store's own ON DELETE rules
        never act: a primary's cascade arrives as writes of its own); a row still referenced
        is FAILED, to try again once the writes of the rows referencing it arrive."""

    async def apply_inline(self, mutations: Sequence[Mutation]) -> list[ApplyResult]:
        """`apply` for the inline mirror writes of committed primary writes; a store may commit
        them without waiting for durability (the primary's outbox still holds each)."""

    async def flush_wal(self) -> None:
        """Make every commit so far durable, the asynchronous ones of `apply_inline` included."""

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
