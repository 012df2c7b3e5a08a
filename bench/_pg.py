"""Bench helper: a PostgreSQL database to measure against (embedded in a temp dir by default)."""

from __future__ import annotations

import tempfile
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import asyncpg


@asynccontextmanager
async def database(server_dsn: str, label: str = "bench", *, ddl: str | None = None,
                   keep: bool = False) -> AsyncIterator[str]:
    """A fresh database named after `label` on `server_dsn` (with `ddl` run in it), dropped
    afterwards unless `keep`."""
    name = f"{label}_{uuid.uuid4().hex[:10]}"
    admin = await asyncpg.connect(server_dsn)
    await admin.execute(f'CREATE DATABASE "{name}"')
    await admin.close()
    dsn = urlunsplit(urlsplit(server_dsn)._replace(path="/" + name))
    try:
        if ddl:
            conn = await asyncpg.connect(dsn)
            try:
                await conn.execute(ddl)
            finally:
                await conn.close()
        yield dsn
    finally:
        if not keep:
            admin = await asyncpg.connect(server_dsn)
            await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
            await admin.close()


@asynccontextmanager
async def scratch_database(server_dsn: str | None) -> AsyncIterator[str]:
    """A fresh database on `server_dsn` (or on an embedded server), dropped afterwards."""
    server = None
    if server_dsn is None:
        from proxy.embedded import start_embedded

        server = start_embedded(Path(tempfile.mkdtemp(prefix="bench-pg-")) / "data",
                                cleanup="delete")
        server_dsn = str(server.get_uri())
    try:
        async with database(server_dsn) as dsn:
            yield dsn
    finally:
        if server is not None:
            server.cleanup()
