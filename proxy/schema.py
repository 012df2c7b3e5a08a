"""`cutover schema init` and `status`: both stores to the newest revision (with a backup of a
legacy SQLite file first), and the revision each store is at."""

from __future__ import annotations

import sqlite3
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from config import Settings
from proxy.connect import open_store, read_record
from proxy.stores import migrations
from proxy.stores.sqlite_schema import is_legacy_database


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


def needs_upgrade(path: Path) -> bool:
    if not path.exists() or path.stat().st_size == 0:
        return False
    conn = sqlite3.connect(path)
    try:
        return is_legacy_database(conn)
    finally:
        conn.close()


async def init_both(settings: Settings, *, backup: bool = True) -> dict[str, Any]:
    """Both stores to the newest revision: the mirror first, then the primary (the runbook's
    order, docs/schema-changes.md), so a revision that fails stops before the store serving
    reads changed."""
    lines = []
    path = settings.sqlite_path
    if backup and needs_upgrade(path):
        lines.append(f"sqlite: backup written to {backup_sqlite(path)}")
    record = await read_record(settings) if path.exists() else None
    primary = record.primary if record is not None else settings.read_primary
    for backend in ("postgres", "sqlite") if primary == "sqlite" else ("sqlite", "postgres"):
        async with open_store(settings, backend) as store:
            await store.init_schema()
            where = path if backend == "sqlite" else settings.safe_dsn
            lines.append(f"{backend}: schema at {await store.schema_revision()} ({where})")
    return {"lines": lines}


def _sqlite_revision(path: Path) -> str | None:
    """The file's recorded revision, read without creating or changing anything."""
    if not path.exists():
        return None
    conn = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True)
    try:
        return migrations.sqlite_revision(conn)
    finally:
        conn.close()


async def schema_status(settings: Settings) -> dict[str, Any]:
    """Each store's schema revision, the newest this code knows, and whether they match."""
    sqlite = _sqlite_revision(settings.sqlite_path)
    async with open_store(settings, "postgres") as pg_store:
        postgres = await pg_store.schema_revision()
    newest = migrations.head()
    return {"sqlite": sqlite, "postgres": postgres, "head": newest,
            "match": sqlite == postgres, "at_head": sqlite == postgres == newest}
