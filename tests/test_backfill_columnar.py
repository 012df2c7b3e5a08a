"""The backfill's columnar lane (`proxy.migrate.columnar`) against its row lane: the same legacy
file loaded each way leaves the same rows, the same rejects report, the same id mappings and the
same vocabulary; and the lane takes the batches whose rows are all plain, no others."""

from __future__ import annotations

import json
import uuid
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from bench.legacy_db import generate
from proxy.migrate import columnar as columnar_mod
from proxy.migrate.backfill import iter_lines, run_backfill
from proxy.models import ENTITIES
from proxy.stores import postgres_schema
from tests.databases import fresh_database
from tests.test_backfill import LegacyDB, new_id

pytestmark = pytest.mark.slow  # see pyproject.toml's markers

TABLES = [e.table for e in ENTITIES] + [
    t for ts in postgres_schema.DERIVED_TABLES.values() for t in ts] + ["legacy_ids"]


async def load(path: Path, server: str, tmp: Path, *, columnar: bool, batch_size: int,
               monkeypatch: pytest.MonkeyPatch) -> tuple[dict[str, Any], dict[str, int]]:
    """Backfill `path` into a fresh database one way; everything it left, as text, and how many
    batches the columnar lane took and gave back."""
    lanes = {"taken": 0, "declined": 0}
    read = columnar_mod.ColumnarSource.read

    def counted(self: columnar_mod.ColumnarSource, *args: Any) -> Any:
        skipping = self.skip
        got = read(self, *args)
        if not skipping:
            lanes["taken" if got is not None else "declined"] += 1
        return got

    monkeypatch.setattr(columnar_mod.ColumnarSource, "read", counted)
    rejects = tmp / f"rejects-{columnar}.jsonl"
    async with fresh_database(server) as dsn:
        report = await run_backfill(path, dsn, rejects_path=rejects, batch_size=batch_size,
                                    columnar=columnar)
        conn = await asyncpg.connect(dsn)
        try:
            state: dict[str, Any] = {
                t: [r[0] for r in await conn.fetch(f"SELECT t::text FROM {t} t ORDER BY 1")]
                for t in TABLES}
        finally:
            await conn.close()
    state["report"] = {t: r for t, r in report.to_json()["tables"].items()}
    state["rejects"] = sorted(json.dumps(line, sort_keys=True) for line in iter_lines(rejects))
    return state, lanes


async def both_ways(path: Path, server: str, tmp: Path, batch_size: int,
                    monkeypatch: pytest.MonkeyPatch) -> tuple[dict[str, Any], dict[str, int]]:
    rows_lane, unused = await load(path, server, tmp, columnar=False, batch_size=batch_size,
                                   monkeypatch=monkeypatch)
    assert unused == {"taken": 0, "declined": 0}
    columns_lane, lanes = await load(path, server, tmp, columnar=True, batch_size=batch_size,
                                     monkeypatch=monkeypatch)
    for key in rows_lane:
        assert columns_lane[key] == rows_lane[key], key
    return rows_lane, lanes


def edge_rows(db: LegacyDB) -> None:
    """Clean rows with one value at an edge every ten rows: each edge in its own batch of 10
    (give or take where the parts cut), so a batch the lane wrongly takes shows."""
    db.conn.execute("BEGIN")
    uid = db.user()
    book = db.book(uid)
    rejected_question = new_id()
    questions: list[dict[str, Any]] = [
        {"question": b"a BLOB"},
        {"answer": "caf\u00e9 \u65e5\u672c\u8a9e"},  # valid UTF-8, not ASCII: plain
        {"id": rejected_question, "question": "a NUL\x00inside"},
        {"question": "x" * 100_001},
        {"id": new_id().upper()},
        {"id": "q-17"},
        {"study_book_id": new_id()},  # orphan
        {"created_at": "2024-02-30T00:00:00Z"},
        {"created_at": "2024-03-05T12:34:56.123Z"},
        {"created_at": "2024-03-05T12:34:56.123456Z"},  # plain
        {"created_at": "2024-03-05 12:34:56"},
        {"created_at": "2024-03-05T12:34:56+00:00"},
        {"created_at": "2024-03-05T23:59:60Z"},
        {"created_at": "0000-01-01T00:00:00Z"},
        {"created_at": 1_700_000_000},
        {"updated_at": "2024-03-05T12:34:56.1234567Z"},
        {"language": 42},
    ]
    qids = []
    for extra in questions:
        qids.extend(db.question(book) for _ in range(9))
        qids.append(db.question(book, **extra))
    db.conn.execute("UPDATE questions SET answer = CAST(X'C328' AS TEXT) WHERE id = ?",
                    (qids[5],))  # not UTF-8
    logs: list[dict[str, Any]] = [
        {"accuracy": 97.555}, {"accuracy": -0.0}, {"accuracy": 100.01}, {"accuracy": 12},
        {"accuracy": float("inf")}, {"wpm": -1}, {"wpm": 2**31}, {"wpm": "60"}, {"wpm": 60.5},
        {"question_id": None}, {"question_id": new_id()}, {"question_id": rejected_question},
        {"user_id": "someone"},
    ]
    for extra in logs:
        for _ in range(9):
            db.log(uid, qids[-1])
        db.log(**{"user_id": uid, "question_id": qids[-1], **extra})
    events: list[dict[str, Any]] = [
        {"score": None, "object_id": None, "duration_ms": None}, {"score": 12},
        {"score": 1e300}, {"user_id": "\u00fcser"}, {"action": "a" * 101},
        {"occurred_at": "2024-13-01T00:00:00Z"},
    ]
    for extra in events:
        for _ in range(9):
            db.event()
        db.event(**extra)
    db.conn.execute("COMMIT")


async def test_a_file_of_edges_lands_the_same_through_either_lane(
        tmp_path: Path, pg_server_dsn: str, monkeypatch: pytest.MonkeyPatch) -> None:
    db = LegacyDB(tmp_path / "legacy.db")
    try:
        edge_rows(db)
    finally:
        db.conn.close()
    monkeypatch.setattr(columnar_mod, "MAX_SKIP", 0)  # every batch tried
    state, lanes = await both_ways(db.path, pg_server_dsn, tmp_path, 10, monkeypatch)
    assert state["rejects"] and state["legacy_ids"]  # the edges were seen
    assert lanes["taken"] > 10 and lanes["declined"] > 20, lanes


async def test_a_generated_file_with_legacy_variety_lands_the_same_through_either_lane(
        tmp_path: Path, pg_server_dsn: str, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "legacy.db"
    generate(path, questions=1500, typing_logs=1500, events=1500, users=12, books=12,
             seed=7, dirty=0.01)
    state, lanes = await both_ways(path, pg_server_dsn, tmp_path, 40, monkeypatch)
    assert state["rejects"]
    assert lanes["taken"] > 5 and lanes["declined"] > 5, lanes


def test_the_lane_reads_ids_as_postgres_does() -> None:
    values = [str(uuid.uuid4()) for _ in range(5)]
    import pyarrow as pa

    got = columnar_mod._uuid_bytes(pa.array([values[0], None, *values[1:]]))
    assert got.to_pylist() == [uuid.UUID(values[0]).bytes, None,
                               *(uuid.UUID(v).bytes for v in values[1:])]
