"""The SQLite file at SQLITE_PATH before a store opens it: is it a legacy app.db, and its backup.

Opening a repository (or `cutover schema init`) upgrades a legacy app.db in place, after a
backup copy; `cutover demo` and `cutover serve` refuse one that `schema init` has not upgraded.
"""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

from proxy.stores.migrations import sqlite_revision
from proxy.stores.sqlite_schema import is_legacy_database


def is_legacy_file(path: Path) -> bool:
    """Whether `path` is a legacy app.db not upgraded yet (False for a missing or empty file).

    The file is opened read-only; `sqlite3.Error` when it cannot be read."""
    if not path.is_file() or path.stat().st_size == 0:
        return False
    with _read_only(path) as conn:
        return is_legacy_database(conn)


def backup_sqlite(path: Path) -> Path:
    """Copy the database beside itself (consistent even while in use) and return the copy."""
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    target = path.with_name(f"{path.name}.bak-{stamp}")
    src = sqlite3.connect(path)
    try:
        dst = sqlite3.connect(target)
        with dst:
            src.backup(dst)
        dst.close()
    finally:
        src.close()
    return target


def recorded_revision(path: Path) -> str | None:
    """The schema revision the file records (None for a missing file or one from before
    revisions were recorded), read without creating or changing anything."""
    if not path.is_file():
        return None
    with _read_only(path) as conn:
        return sqlite_revision(conn)


@contextlib.contextmanager
def _read_only(path: Path) -> Iterator[sqlite3.Connection]:
    conn = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True)
    try:
        yield conn
    finally:
        conn.close()
