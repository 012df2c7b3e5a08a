"""The CLI's output as scripts use it (issue 26, part 3): every `--json` is one JSON document on
stdout with the logs on stderr; `status --check` exits 1 on no-go; a refused flip exits 4, bad
usage 2; `--version`; the choices of `read-primary` and `shadow list --reason` in the help."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest
import structlog
import typer
from typer.testing import CliRunner

from config import Settings
from proxy import open_repository
from proxy.app.cli import app
from shadow.compare import Reason

# every command that has --json, with the arguments this test gives it
JSON_COMMANDS = {
    "status": ["status", "--json"],
    "verify": ["verify", "--json", "--quiet"],
    "reconcile": ["reconcile", "--json", "--quiet"],
    "backfill": ["backfill", "--json", "--quiet"],
    "shadow list": ["shadow", "list", "--json"],
    "shadow replay": ["shadow", "replay", "--json"],
    "schema status": ["schema", "status", "--json"],
    "demo": ["demo", "--json", "--duration", "1", "--questions", "20"],
}


@pytest.fixture
def env(sqlite_path: Path, pg_dsn: str, tmp_path: Path) -> dict[str, str]:
    return {"SQLITE_PATH": str(sqlite_path), "POSTGRES_DSN": pg_dsn,
            "READ_PRIMARY_FILE": str(tmp_path / "primary")}


async def _seed(env: dict[str, str]) -> None:
    """A user's questions and a few shadowed searches (the typo gives a fuzzy_only mismatch)."""
    async with open_repository(Settings.from_env(env)) as repo:
        user = await repo.create_user(name="Aiko", email="aiko@example.com")
        book = await repo.create_study_book(user_id=user.id, title="Python")
        for i in range(5):
            await repo.create_question(study_book_id=book.id, language="en", category="c",
                                       difficulty="easy", question=f"What is json {i}?",
                                       answer="Serialize obj to a JSON formatted str.")
        for _ in range(2):
            await repo.search_questions("json", user_id=user.id)
            await repo.search_questions("jsno", user_id=user.id)


def _commands_with_json() -> set[str]:
    found = set()

    def walk(command: Any, path: list[str]) -> None:
        if hasattr(command, "list_commands"):
            ctx = command.context_class(command)
            for name in command.list_commands(ctx):
                walk(command.get_command(ctx, name), [*path, name])
        elif any("--json" in p.opts for p in command.params):
            found.add(" ".join(path))

    walk(typer.main.get_command(app), [])
    return found


def test_the_test_covers_every_command_with_json() -> None:
    assert _commands_with_json() == set(JSON_COMMANDS)


@pytest.mark.slow
def test_every_json_output_is_one_document_on_stdout(
        env: dict[str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import proxy.app.ops_commands

    asyncio.run(_seed(env))
    monkeypatch.chdir(tmp_path)  # backfill's default rejects file, the demo's ./data
    # a log line while a command runs must not land in its stdout
    verdict = proxy.app.ops_commands._verdict

    def logging_verdict(*args: Any) -> Any:
        structlog.get_logger("test").warning("test.log_line", detail="goes to stderr")
        return verdict(*args)

    monkeypatch.setattr(proxy.app.ops_commands, "_verdict", logging_verdict)
    runner = CliRunner()
    for name, args in JSON_COMMANDS.items():
        run_env = dict(env)
        if name == "demo":  # the demo flips by itself; the file would only follow it
            del run_env["READ_PRIMARY_FILE"]
        result = runner.invoke(app, args, env=run_env)
        assert result.exit_code in (0, 1), (name, result.output)
        try:
            json.loads(result.stdout)
        except json.JSONDecodeError as exc:
            pytest.fail(f"`cutover {' '.join(args)}`: stdout is not JSON ({exc}): "
                        f"{result.stdout[:500]!r}")
        if name == "status":
            assert "test.log_line" in result.stderr and "test.log_line" not in result.stdout


@pytest.mark.slow
def test_status_check_exits_1_on_no_go(env: dict[str, str]) -> None:
    asyncio.run(_seed(env))
    runner = CliRunner()
    plain = runner.invoke(app, ["status"], env=env)
    assert plain.exit_code == 0, plain.output
    assert "NO-GO" in plain.stdout  # 4 comparisons are not enough evidence
    checked = runner.invoke(app, ["status", "--check"], env=env)
    assert checked.exit_code == 1, checked.output
    assert "NO-GO" in checked.stdout
    as_json = runner.invoke(app, ["status", "--check", "--json"], env=env)
    assert as_json.exit_code == 1
    assert json.loads(as_json.stdout)["verdict"]["go"] is False


@pytest.mark.slow
def test_a_refused_flip_exits_4_and_bad_usage_2(env: dict[str, str]) -> None:
    asyncio.run(_seed(env))
    runner = CliRunner()
    refused = runner.invoke(app, ["read-primary", "postgres"], env=env)
    assert refused.exit_code == 4, refused.output
    assert "refused" in refused.stderr and refused.stdout == ""
    bad = runner.invoke(app, ["read-primary", "mysql"], env=env)
    assert bad.exit_code == 2
    assert "sqlite" in bad.output and "postgres" in bad.output


def test_version_and_the_choices_in_help() -> None:
    from importlib.metadata import version

    runner = CliRunner()
    shown = runner.invoke(app, ["--version"])
    assert shown.exit_code == 0
    assert shown.stdout.strip() == f"cutover {version('cutover')}"
    flip_help = runner.invoke(app, ["read-primary", "--help"], terminal_width=200)
    assert "sqlite|postgres" in flip_help.stdout
    list_help = runner.invoke(app, ["shadow", "list", "--help"])
    assert "<stale_mirror|order_only|" in list_help.stdout
    bad = runner.invoke(app, ["shadow", "list", "--reason", "nonsense"])
    assert bad.exit_code == 2
    flat = " ".join(bad.output.replace("│", " ").split())
    assert all(f"'{r.value}'" in flat for r in Reason), flat


@pytest.mark.slow
async def test_verify_and_reconcile_report_each_step_for_the_progress_bar(
        env: dict[str, str]) -> None:
    from proxy.migrate.reconcile import RECONCILE_STEPS, run_reconcile
    from proxy.migrate.verify import VERIFY_STEPS, run_verify

    await _seed(env)
    path, dsn = Path(env["SQLITE_PATH"]), env["POSTGRES_DSN"]
    verify_steps: list[str] = []
    report = await run_verify(path, dsn, queries=2, progress=verify_steps.append)
    assert report.ok
    assert len(verify_steps) == VERIFY_STEPS and verify_steps[-1] == "search sample"
    assert "questions compared" in verify_steps
    reconcile_steps: list[str] = []
    await run_reconcile(path, dsn, "sqlite", progress=reconcile_steps.append)
    assert len(reconcile_steps) == RECONCILE_STEPS and reconcile_steps[0] == "outboxes drained"
    assert reconcile_steps[1:6] == [f"{t} repaired" for t in
                                    ("users", "study_books", "questions", "typing_logs",
                                     "learning_events")]
