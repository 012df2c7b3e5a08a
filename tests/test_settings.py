"""Settings.from_env: the contract's variables, their defaults, and one clear line for a bad value.

A bad value stops start-up with one line naming the variable, the value given and the values
allowed; tokens are never echoed and a DSN's password never appears anywhere.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import asyncpg
import pytest
import structlog
from structlog.testing import capture_logs
from typer.testing import CliRunner

from config import ConfigError, Settings
from proxy.app.cli import app

SECRET = "s3cr3t-PaSS"


def _bad(env: dict[str, str]) -> str:
    with pytest.raises(ConfigError) as info:
        Settings.from_env(env)
    message = str(info.value)
    assert "\n" not in message and "\r" not in message, message
    return message


def test_defaults_when_nothing_is_set() -> None:
    s = Settings.from_env({})
    assert s.read_primary == "sqlite"
    assert s.read_primary_file is None
    assert s.sqlite_path == Path("./data/app.db")
    assert s.postgres_dsn == "embedded"
    assert s.dual_write is True
    assert s.mirror_timeout_ms == 2000
    assert s.shadow_sample_rate == 1.0
    assert s.shadow_timeout_ms == 1000
    assert s.shadow_worker == "inline"  # spawning a process is opt-in
    assert s.metrics_port is None
    assert s.metrics_host == "127.0.0.1"
    assert s.admin_token is None
    assert s.api_token is None


def test_blank_values_mean_the_default() -> None:
    env = {name: "" for name in (
        "READ_PRIMARY_FILE", "SQLITE_PATH", "POSTGRES_DSN", "MIRROR_TIMEOUT_MS",
        "SHADOW_SAMPLE_RATE", "SHADOW_TIMEOUT_MS", "METRICS_PORT", "METRICS_HOST",
        "ADMIN_TOKEN", "API_TOKEN",
    )}
    assert Settings.from_env(env) == Settings.from_env({})


def test_every_variable_is_read(tmp_path: Path) -> None:
    env = {
        "READ_PRIMARY": "postgres",
        "READ_PRIMARY_FILE": str(tmp_path / "primary"),  # need not exist yet
        "SQLITE_PATH": str(tmp_path / "x.db"),
        "POSTGRES_DSN": "postgresql://u@db.internal:5433/app",
        "DUAL_WRITE": "off",
        "MIRROR_TIMEOUT_MS": "250",
        "SHADOW_SAMPLE_RATE": "0.25",
        "SHADOW_TIMEOUT_MS": "75",
        "SHADOW_WORKER": "process",
        "METRICS_PORT": "9464",
        "METRICS_HOST": "0.0.0.0",
        "ADMIN_TOKEN": "admin-token-123",
        "API_TOKEN": "api-token-4567",
    }
    s = Settings.from_env(env)
    assert s.read_primary == "postgres"
    assert s.read_primary_file == tmp_path / "primary"
    assert s.sqlite_path == tmp_path / "x.db"
    assert s.postgres_dsn == "postgresql://u@db.internal:5433/app"
    assert s.dual_write is False
    assert s.mirror_timeout_ms == 250
    assert s.shadow_sample_rate == 0.25
    assert s.shadow_timeout_ms == 75
    assert s.shadow_worker == "process"
    assert s.metrics_port == 9464
    assert s.metrics_host == "0.0.0.0"
    assert s.admin_token == "admin-token-123"
    assert s.api_token == "api-token-4567"


@pytest.mark.parametrize(("name", "value"), [
    ("READ_PRIMARY", "sqlite"), ("READ_PRIMARY", "postgres"),
    ("DUAL_WRITE", "on"), ("DUAL_WRITE", "off"),
    ("SHADOW_SAMPLE_RATE", "0"), ("SHADOW_SAMPLE_RATE", "1.0"),
    ("MIRROR_TIMEOUT_MS", "1"), ("SHADOW_TIMEOUT_MS", "600000"),
    ("SHADOW_WORKER", "inline"), ("SHADOW_WORKER", " process "),
    ("METRICS_PORT", "1"), ("METRICS_PORT", "65535"),
    ("POSTGRES_DSN", "embedded"), ("POSTGRES_DSN", "postgres://u@h/db"),
])
def test_boundary_values_are_accepted(name: str, value: str) -> None:
    Settings.from_env({name: value})


# variable, bad value, words the allowed values must be described with
BAD_VALUES = [
    ("READ_PRIMARY", "mysql", ["sqlite", "postgres"]),
    ("READ_PRIMARY", "", ["sqlite", "postgres"]),
    ("READ_PRIMARY", "SQLite\nEXTRA", ["sqlite", "postgres"]),
    ("DUAL_WRITE", "yes", ["on", "off"]),
    ("DUAL_WRITE", "true", ["on", "off"]),
    ("MIRROR_TIMEOUT_MS", "fast", ["integer", "1", "600000"]),
    ("MIRROR_TIMEOUT_MS", "0", ["integer", "1", "600000"]),
    ("MIRROR_TIMEOUT_MS", "-5", ["integer", "1", "600000"]),
    ("MIRROR_TIMEOUT_MS", "1.5", ["integer", "1", "600000"]),
    ("MIRROR_TIMEOUT_MS", "600001", ["integer", "1", "600000"]),
    ("SHADOW_SAMPLE_RATE", "1.5", ["0.0", "1.0"]),
    ("SHADOW_SAMPLE_RATE", "-0.1", ["0.0", "1.0"]),
    ("SHADOW_SAMPLE_RATE", "nan", ["0.0", "1.0"]),
    ("SHADOW_SAMPLE_RATE", "inf", ["0.0", "1.0"]),
    ("SHADOW_SAMPLE_RATE", "half", ["0.0", "1.0"]),
    ("SHADOW_TIMEOUT_MS", "soon", ["integer", "1", "600000"]),
    ("SHADOW_TIMEOUT_MS", "0", ["integer", "1", "600000"]),
    ("SHADOW_WORKER", "thread", ["inline", "process"]),
    ("SHADOW_WORKER", "Process", ["inline", "process"]),
    ("SHADOW_WORKER", "", ["inline", "process"]),
    ("METRICS_PORT", "0", ["port", "1", "65535"]),
    ("METRICS_PORT", "65536", ["port", "1", "65535"]),
    ("METRICS_PORT", "http", ["port", "1", "65535"]),
    ("POSTGRES_DSN", "mysql://u@h/db", ["embedded", "postgresql://"]),
    ("POSTGRES_DSN", "host=h dbname=app", ["embedded", "postgresql://"]),
]


@pytest.mark.parametrize(("name", "value", "allowed"), BAD_VALUES,
                         ids=[f"{n}={v!r}" for n, v, _ in BAD_VALUES])
def test_bad_value_names_variable_value_and_allowed_values(
    name: str, value: str, allowed: list[str]
) -> None:
    message = _bad({name: value})
    assert name in message
    assert repr(value.strip()) in message or repr(value) in message
    for word in allowed:
        assert word in message, (word, message)


@pytest.mark.parametrize("name", ["ADMIN_TOKEN", "API_TOKEN"])
@pytest.mark.parametrize("token", ["short", " padded-token-value ", "tab\ttoken\t"])
def test_bad_token_is_never_echoed(name: str, token: str) -> None:
    message = _bad({name: token})
    assert name in message
    assert token.strip() not in message
    assert "8 characters" in message  # the rule stands in for the value


@pytest.mark.parametrize("dsn", [
    f"postgresql://app:{SECRET}@db.internal:5432/app",
    f"postgres://app:{SECRET}@db.internal/app?sslmode=require",
    f"postgresql://db.internal/app?user=app&password={SECRET}",
    f"postgresql://app:{SECRET}@db.internal/app?password={SECRET}",
    f"postgresql://:{SECRET}@db.internal/app",
])
def test_safe_dsn_hides_the_password(dsn: str) -> None:
    s = Settings.from_env({"POSTGRES_DSN": dsn})
    assert s.postgres_dsn == dsn  # the real one is kept for connecting
    assert SECRET not in s.safe_dsn
    assert "db.internal" in s.safe_dsn  # still useful to an operator
    assert SECRET not in repr(s)  # a logged or printed Settings shows no password


def test_the_briefs_example_dsn() -> None:
    s = Settings.from_env({"POSTGRES_DSN": "postgresql://u:secret@h/db"})
    assert "secret" not in s.safe_dsn
    assert s.safe_dsn.startswith("postgresql://u:") and s.safe_dsn.endswith("@h/db")


@pytest.mark.parametrize("dsn", [
    f"mysql://app:{SECRET}@db.internal/app",
    f"host=db.internal user=app password={SECRET}",
    f"postgresql:/app:{SECRET}@db.internal/app",
    f"host=db.internal password = '{SECRET}'",
])
def test_rejected_dsn_message_hides_the_password(dsn: str) -> None:
    message = _bad({"POSTGRES_DSN": dsn})
    assert "POSTGRES_DSN" in message
    assert SECRET not in message


def test_password_containing_at_sign_is_hidden_whole() -> None:
    # an unencoded '@' in a password is common in hand-written DSNs
    s = Settings.from_env({"POSTGRES_DSN": "postgresql://app:p@ss@word@db.internal/app"})
    assert s.safe_dsn == "postgresql://app:***@db.internal/app"


def test_tokens_are_not_in_repr() -> None:
    s = Settings.from_env({"ADMIN_TOKEN": SECRET + "-admin", "API_TOKEN": SECRET + "-api"})
    assert SECRET not in repr(s)


def test_read_primary_file_may_be_missing_at_start_up(tmp_path: Path) -> None:
    # a missing file keeps the current primary at run time (contract): not a start-up error
    s = Settings.from_env({"READ_PRIMARY_FILE": str(tmp_path / "absent"), "READ_PRIMARY": "sqlite"})
    assert s.read_primary_file == tmp_path / "absent"
    assert s.read_primary == "sqlite"


# -- the command line: one line on stderr, exit status 2 --

def _cli_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(
        ("READ_PRIMARY", "SQLITE_PATH", "POSTGRES_DSN", "DUAL_WRITE", "MIRROR_", "SHADOW_",
         "METRICS_", "ADMIN_TOKEN", "API_TOKEN"))}
    env["SQLITE_PATH"] = str(tmp_path / "app.db")
    env.update(extra)
    return env


@pytest.mark.parametrize(("name", "value", "allowed"), BAD_VALUES[::3],
                         ids=[f"{n}={v!r}" for n, v, _ in BAD_VALUES[::3]])
def test_cli_bad_value_exits_2_with_one_line(
    tmp_path: Path, name: str, value: str, allowed: list[str]
) -> None:
    result = CliRunner().invoke(app, ["schema", "init"], env=_cli_env(tmp_path, **{name: value}))
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert name in lines[0]
    assert allowed[0] in lines[0]
    assert not (tmp_path / "app.db").exists()  # nothing was touched


def _cutover() -> str:
    found = Path(sys.executable).parent / "cutover"
    return str(found) if found.exists() else (shutil.which("cutover") or "cutover")


@pytest.mark.slow
def test_cutover_console_script_bad_dsn_exits_2_without_password(tmp_path: Path) -> None:
    env = _cli_env(tmp_path, POSTGRES_DSN=f"mysql://app:{SECRET}@db.internal/app")
    proc = subprocess.run([_cutover(), "schema", "init"], env=env, capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert "POSTGRES_DSN" in lines[0]
    assert SECRET not in proc.stderr + proc.stdout


@pytest.mark.slow
def test_unreachable_server_error_hides_the_password(tmp_path: Path) -> None:
    # a well-formed DSN to a port nothing listens on: exit 3, and still no password
    env = _cli_env(tmp_path, POSTGRES_DSN=f"postgresql://app:{SECRET}@127.0.0.1:9/app")
    proc = subprocess.run([_cutover(), "schema", "init"], env=env, capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 3, proc.stdout + proc.stderr
    assert SECRET not in proc.stderr + proc.stdout
    assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr


# -- the embedded default --

@pytest.mark.slow
async def test_embedded_default_logs_one_line_and_starts_a_utf8_server(tmp_path: Path) -> None:
    from proxy.embedded import embedded_dsn, start_embedded

    data_dir = tmp_path / "pg"
    saved = structlog.get_config()  # CLI tests in this process may have configured a level
    structlog.reset_defaults()
    try:
        try:
            with capture_logs() as logs:
                dsn = embedded_dsn(data_dir)
        finally:
            structlog.configure(**saved)
        events = [e for e in logs if e["event"] == "postgres.embedded"]
        assert len(events) == 1, logs
        (event,) = events
        assert event["log_level"] == "info"
        text = " ".join(str(v) for v in event.values())
        assert "embedded" in text
        assert "POSTGRES_DSN=postgresql://" in text  # how to point at a real server
        assert str(data_dir) in event["data_dir"]
        conn = await asyncpg.connect(dsn)
        try:
            assert await conn.fetchval("SELECT 1") == 1
            # pg_trgm needs a UTF-8 ctype to see non-ASCII letters (search pitfalls)
            ctype = await conn.fetchval(
                "SELECT datctype FROM pg_database WHERE datname = current_database()"
            )
            assert "utf" in ctype.lower().replace("-", ""), ctype
        finally:
            await conn.close()
    finally:
        start_embedded(data_dir).cleanup()  # the same handle: stops this server
    assert not (data_dir / "postmaster.pid").exists()
