"""A database's schema as plain data, to compare a migrated database with the schema the project
had before Alembic (tests/data/schema-*.json, written from commit 062d1dc's DDL).

Run `python -m tests.schema_snapshot SQLITE_PATH DSN` to print both snapshots as JSON.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
import sys
from pathlib import Path
from typing import Any

import asyncpg

DATA = Path(__file__).parent / "data"
# Alembic's bookkeeping: the one thing a migrated database holds that the old schema did not
IGNORED = ("alembic_version",)


def sqlite_snapshot(path: Path) -> list[list[str | None]]:
    """Every object in sqlite_master: type, name, table and its SQL, sorted by name."""
    conn = sqlite3.connect(path)
    try:
        rows = conn.execute("SELECT type, name, tbl_name, sql FROM sqlite_master "
                            "ORDER BY type, name").fetchall()
    finally:
        conn.close()
    return [list(r) for r in rows if r[2] not in IGNORED]


_PG_QUERIES = {
    "columns": """
        SELECT c.relname, a.attname, format_type(a.atttypid, a.atttypmod), a.attnotnull,
               pg_get_expr(d.adbin, d.adrelid), a.attgenerated::text
        FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid
        JOIN pg_namespace n ON n.oid = c.relnamespace
        LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum
        WHERE n.nspname = 'public' AND c.relkind = 'r' AND a.attnum > 0 AND NOT a.attisdropped
        ORDER BY 1, 2""",
    "indexes": """
        SELECT tablename, indexname, indexdef FROM pg_indexes WHERE schemaname = 'public'
        ORDER BY 1, 2""",
    "constraints": """
        SELECT c.relname, k.conname, pg_get_constraintdef(k.oid) FROM pg_constraint k
        JOIN pg_class c ON c.oid = k.conrelid JOIN pg_namespace n ON n.oid = c.relnamespace
        WHERE n.nspname = 'public' ORDER BY 1, 2""",
    "triggers": """
        SELECT c.relname, t.tgname, pg_get_triggerdef(t.oid), t.tgenabled::text
        FROM pg_trigger t JOIN pg_class c ON c.oid = t.tgrelid
        WHERE NOT t.tgisinternal ORDER BY 1, 2""",
    "functions": """
        SELECT p.proname, pg_get_function_identity_arguments(p.oid), p.prokind::text,
               CASE WHEN p.prokind = 'a' THEN '' ELSE pg_get_functiondef(p.oid) END
        FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
        WHERE n.nspname = 'public' AND p.proname LIKE 'cutover%' ORDER BY 1, 2""",
    "search_configuration": """
        SELECT m.maptokentype, m.mapseqno, d.dictname FROM pg_ts_config_map m
        JOIN pg_ts_config c ON c.oid = m.mapcfg JOIN pg_ts_dict d ON d.oid = m.mapdict
        WHERE c.cfgname = 'cutover_search' ORDER BY 1, 2""",
    "extensions": "SELECT extname FROM pg_extension ORDER BY 1",
}


async def postgres_snapshot(dsn: str) -> dict[str, list[list[Any]]]:
    """Columns (type, NOT NULL, default, generated), indexes, constraints, triggers, the
    project's functions and search configuration, and the extensions."""
    conn = await asyncpg.connect(dsn)
    try:
        out = {}
        for name, sql in _PG_QUERIES.items():
            rows = [list(r.values()) for r in await conn.fetch(sql)]
            out[name] = [r for r in rows if not (name != "functions" and r[0] in IGNORED)]
        return out
    finally:
        await conn.close()


def expected(store: str) -> Any:
    return json.loads((DATA / f"schema-{store}.json").read_text())


if __name__ == "__main__":
    sqlite_file, dsn = Path(sys.argv[1]), sys.argv[2]
    print(json.dumps({"sqlite": sqlite_snapshot(sqlite_file),
                      "postgres": asyncio.run(postgres_snapshot(dsn))}, indent=1))
