"""`cutover schema init`: both schemas, with a backup of an existing SQLite file first."""

from __future__ import annotations

import sqlite3
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from config import Settings
from proxy.connect import open_store
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
    lines = []
    path = settings.sqlite_path
    if backup and needs_upgrade(path):
        lines.append(f"sqlite: backup written to {backup_sqlite(path)}")
    async with open_store(settings, "sqlite") as sqlite_store:
        await sqlite_store.init_schema()
        lines.append(f"sqlite: schema ready at {path}")
    async with open_store(settings, "postgres") as pg_store:
        await pg_store.init_schema()
        lines.append(f"postgres: schema ready ({settings.safe_dsn})")
    return {"lines": lines}
