"""The control record: one primary for every process that shares the two stores.

A small row kept on both stores: the primary, an epoch every flip increments, the stage (dual
writes on or off), and what the settings have asked for so far. The copy with the higher epoch
is the truth, so a fleet whose PostgreSQL is down still reads SQLite's copy. A flip writes the
old primary's copy first: from that commit on the old primary refuses every write carrying the
old epoch (each primary write checks its epoch in its own transaction), then the writes still
waiting for the new primary are replayed, then the new primary's copy names it. Processes poll
both copies and follow; a write refused for its epoch is retried on the new primary.

How the settings relate to the record (the README's "One primary for the fleet"):
- `READ_PRIMARY` seeds the record when it does not exist yet. Later, a process starting with a
  value the record has not taken from `READ_PRIMARY` before asks for a flip to it (a rolling
  restart with a new value flips the whole fleet, once); a value taken before is ignored, so a
  late process with the old setting never flips the fleet back. Roll back with `cutover
  read-primary`, the admin endpoint, `set_read_primary` or the file.
- `READ_PRIMARY_FILE`: writing a new word into it asks for a flip (each process compares the
  word with the last one the record took from the file). A missing, unreadable or bad file stops
  a starting process; a running one keeps the record's primary, logs it and sets
  `cutover_primary_source_error`.
- `DUAL_WRITE=off` is recorded by the first process started with it, for all; once recorded a
  rollback to SQLite is refused unless forced (SQLite misses every write made since).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, replace
from typing import Any

from config.settings import BACKENDS, Backend


@dataclass(frozen=True, slots=True)
class Control:
    primary: Backend
    epoch: int
    dual_write: bool = True
    env_applied: frozenset[str] = field(default_factory=frozenset)  # READ_PRIMARY values taken
    file_word: str | None = None  # the READ_PRIMARY_FILE word last taken

    def flipped(self, primary: Backend) -> Control:
        return replace(self, primary=primary, epoch=self.epoch + 1)

    def to_params(self) -> tuple[Any, ...]:
        return (self.primary, self.epoch, self.dual_write,
                json.dumps(sorted(self.env_applied)), self.file_word)

    @classmethod
    def from_row(cls, primary: str, epoch: int, dual_write: Any, env_applied: str,
                 file_word: str | None) -> Control:
        if primary not in BACKENDS:
            raise ValueError(f"the control record names {primary!r}")
        return cls(primary, int(epoch), bool(dual_write),
                   frozenset(json.loads(env_applied)), file_word)


def newest(*records: Control | None) -> Control | None:
    """The record with the highest epoch (the truth), or None when no store has one."""
    present = [r for r in records if r is not None]
    return max(present, key=lambda r: r.epoch) if present else None


COLUMNS = "read_primary, epoch, dual_write, env_applied, file_word"
