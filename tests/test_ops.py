"""Operator verbs: status, read-primary (with its refusals), shadow list and replay."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from config import Settings
from proxy import open_repository
from proxy.app.cli import app

pytestmark = pytest.mark.slow  # see pyproject.toml's markers


@pytest.fixture
def env(sqlite_path: Path, pg_dsn: str, tmp_path: Path) -> dict[str, str]:
    return {"SQLITE_PATH": str(sqlite_path), "POSTGRES_DSN": pg_dsn,
            "READ_PRIMARY_FILE": str(tmp_path / "primary")}


async def _seed(env: dict[str, str], searches: int) -> None:
    settings = Settings.from_env(env)
    async with open_repository(settings) as repo:
        user = await repo.create_user(name="Aiko", email="aiko@example.com")
        book = await repo.create_study_book(user_id=user.id, title="Python")
        for i in range(5):
            await repo.create_question(study_book_id=book.id, language="en", category="c",
                                       difficulty="easy", question=f"What is json {i}?",
                                       answer="Serialize obj to a JSON formatted str.")
        for _ in range(searches):
            await repo.search_questions("json", user_id=user.id)
            await repo.search_questions("jsno", user_id=user.id)  # fuzzy on postgres only


def test_status_json_and_flip_refusals(env: dict[str, str]) -> None:
    asyncio.run(_seed(env, 3))
    runner = CliRunner()
    result = runner.invoke(app, ["status", "--json"], env=env)
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert report["read_primary"] == "sqlite"
    assert report["outbox"]["postgres"]["pending"] == 0
    assert report["verdict"]["go"] is False  # 6 comparisons are not enough evidence

    refused = runner.invoke(app, ["read-primary", "postgres"], env=env)
    assert refused.exit_code == 4  # refused, not bad usage (2)
    assert "no-go" in refused.output
    forced = runner.invoke(app, ["read-primary", "postgres", "--force"], env=env)
    assert forced.exit_code == 0
    assert Path(env["READ_PRIMARY_FILE"]).read_text().strip() == "postgres"
    shown = runner.invoke(app, ["read-primary"], env=env)
    assert shown.output.strip() == "postgres"
    bad = runner.invoke(app, ["read-primary", "mysql"], env=env)
    assert bad.exit_code == 2


def test_shadow_list_and_replay(env: dict[str, str]) -> None:
    asyncio.run(_seed(env, 2))
    runner = CliRunner()
    listed = runner.invoke(app, ["shadow", "list", "--json"], env=env)
    assert listed.exit_code == 0, listed.output
    records = json.loads(listed.output)
    assert records, "the fuzzy-only query should have produced mismatches"
    assert all("jsno" not in json.dumps(r) for r in records)  # fingerprints, never the text
    replayed = runner.invoke(app, ["shadow", "replay", str(records[0]["id"]), "--json"],
                             env=env)
    assert replayed.exit_code == 0, replayed.output
    assert json.loads(replayed.output)[0]["now"] in ("match", "mismatch")
