"""The project's exceptions, one root, for the library, the migration tools and the CLI alike.

    CutoverError
    ├── ValidationError (also ValueError)   bad input, raised before any store is touched
    ├── NotFoundError (also LookupError)    the row does not exist
    ├── Fenced                              a write carried an epoch its store has left behind
    ├── SchemaMismatch                      the stores are at different schema revisions
    ├── FlipRefused                         the primary cannot move now (the flip's gate)
    ├── PrimaryUnknown                      READ_PRIMARY_FILE does not name a store
    ├── SchemaMissing                       a store lacks the tables (schema init never ran)
    ├── SQLiteNotUpgraded (also ValueError) the SQLite file still holds legacy ids
    ├── BadSource                           backfill's `--from` is not a legacy app.db
    ├── BackfillRunning                     another backfill holds the target's lock
    └── StoreUnavailable                    the primary could not be reached; nothing changed
        └── OutcomeUnknown                  the primary did not answer in time: the write
                                            may still commit (retry with the same id)

Outside this tree: `config.ConfigError` (settings import nothing of the project) and the shadow
worker's `shadow.worker.ShadowWorkerError` (recorded as a comparison's error, never raised to a
caller of the repository).
"""

from __future__ import annotations


class CutoverError(Exception):
    """Root of every error the project raises on purpose."""


class ValidationError(CutoverError, ValueError):
    """Raised when input breaks the contract's rules; names the offending field."""

    def __init__(self, field: str, message: str) -> None:
        self.field = field
        self.message = message
        super().__init__(f"{field}: {message}")


class NotFoundError(CutoverError, LookupError):
    """Raised when a row asked for (or referenced) does not exist."""

    def __init__(self, entity: str, row_id: object, field: str | None = None) -> None:
        self.entity = entity
        self.row_id = row_id
        self.field = field
        where = f" (field {field})" if field else ""
        super().__init__(f"{entity} {row_id} not found{where}")


class StoreUnavailable(CutoverError):
    """Raised when the primary store cannot be reached; the call changed nothing."""

    def __init__(self, backend: str, reason: str) -> None:
        self.backend = backend
        self.reason = reason
        super().__init__(f"{backend} store unavailable: {reason}")


class OutcomeUnknown(StoreUnavailable):
    """Raised when a primary write was sent but not answered in time: it may still commit (and
    then be mirrored). A retry of an update or delete is harmless; retry a create with the same
    caller-given `id`, so a duplicate is refused instead of made."""


class Fenced(CutoverError):
    """Raised by a store when a write carries an epoch other than its control record's: the
    primary moved since the writer looked (the repository follows and retries the write)."""

    def __init__(self, backend: str, epoch: int, current: int) -> None:
        self.backend = backend
        self.epoch = epoch
        self.current = current
        super().__init__(f"{backend} is at epoch {current}, the write carried {epoch}")


class FlipRefused(CutoverError):
    """Raised when the primary cannot move now: mirror writes to the target still pending, dead
    letters for it, or (for the CLI and the service) the go/no-go verdict; see proxy.flip_gate."""


class PrimaryUnknown(CutoverError):
    """Raised when READ_PRIMARY_FILE is set but cannot be read or does not name a store."""


class SchemaMissing(CutoverError):
    """Raised when a store lacks the tables to compare (schema init never ran on it)."""


class SQLiteNotUpgraded(CutoverError, ValueError):
    """Raised when the SQLite database still holds ids that are not canonical UUIDs."""


class BadSource(CutoverError):
    """Raised when backfill's `--from` file is missing or is not a legacy app.db."""


class BackfillRunning(CutoverError):
    """Raised when another backfill holds the lock on the target database."""


class SchemaMismatch(CutoverError):
    """Raised when the repository opens on two stores at different schema revisions (a mirror
    write could name a column one of them lacks), or on two behind the revision its code needs."""

    def __init__(self, sqlite: str | None, postgres: str | None, needed: str) -> None:
        self.sqlite = sqlite
        self.postgres = postgres
        self.needed = needed
        state = (f"at schema revision {sqlite or 'unrecorded'}" if sqlite == postgres else
                 f"at different schema revisions (sqlite {sqlite or 'unrecorded'}, "
                 f"postgres {postgres or 'unrecorded'})")
        super().__init__(f"the stores are {state}, this cutover needs {needed}: run "
                         "`cutover schema init` to bring both to it")
