"""The `cutover` command line. Exit status: 0 success; 1 the stores differ (verify, reconcile)
or the verdict says no-go (`status --check`); 2 bad usage or configuration; 3 a store could not
be reached; 4 a refused action (a flip the gate or the control record refused).

Log lines go to stderr while a command runs, so stdout holds only the command's output (one
JSON document with `--json`).

Each group of verbs lives in its own module of `proxy.app` (`*_commands.py`) and registers
itself on `app` here.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import structlog
import typer

from config import ConfigError, Settings
from proxy.errors import CutoverError, StoreUnavailable, ValidationError

T = TypeVar("T")

EXIT_OK, EXIT_DIFFER, EXIT_USAGE, EXIT_UNAVAILABLE, EXIT_REFUSED = 0, 1, 2, 3, 4

app = typer.Typer(
    help="Zero-downtime SQLite -> PostgreSQL cutover: dual writes, shadow search, migration.",
    no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False,
)


def _stderr_logger(*args: Any) -> Any:
    """structlog's logger factory for commands: print to the stderr of the moment."""
    return structlog.PrintLogger(sys.stderr)


def _show_version(value: bool) -> None:
    if value:
        from importlib.metadata import PackageNotFoundError, version

        try:
            found = version("cutover")
        except PackageNotFoundError:  # pragma: no cover - run from a checkout not installed
            found = "unknown"
        typer.echo(f"cutover {found}")
        raise typer.Exit(EXIT_OK)


@app.callback()
def _root(
    ctx: typer.Context,
    version: bool = typer.Option(False, "--version", is_eager=True, callback=_show_version,
                                 help="Print the version and exit."),
) -> None:
    """Zero-downtime SQLite -> PostgreSQL cutover: dual writes, shadow search, migration."""
    # stdout is for the command's output (scripts parse --json); logs go to stderr, and the
    # configuration is put back when the command ends (the CLI may run inside another program)
    saved = structlog.get_config()
    structlog.configure(logger_factory=_stderr_logger)
    ctx.call_on_close(lambda: structlog.configure(**saved))


def fail(message: str, code: int) -> typer.Exit:
    """Print one line to stderr and return the Exit to raise."""
    typer.echo(f"error: {message}", err=True)
    return typer.Exit(code)


def load_settings() -> Settings:
    try:
        return Settings.from_env()
    except ConfigError as exc:
        raise fail(str(exc), EXIT_USAGE) from None


def require_initialised(settings: Settings) -> None:
    """Stop with one line (exit 2) unless SQLITE_PATH holds the project's schema: a read-only
    command must neither create the file (nor its directory) nor read a database that
    `cutover schema init` has not prepared. The file is opened read-only to look."""
    import sqlite3

    path = settings.sqlite_path
    if not path.is_file():
        raise fail(f"no database at {path} (SQLITE_PATH): run `cutover schema init` first",
                   EXIT_USAGE)
    try:
        conn = sqlite3.connect(f"file:{path.resolve()}?mode=ro", uri=True)
        try:
            found = conn.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' "
                                 "AND name = 'cutover_outbox'").fetchone()
        finally:
            conn.close()
    except sqlite3.Error as exc:
        raise fail(f"{path} (SQLITE_PATH) is not a readable SQLite database ({exc}): "
                   "run `cutover schema init` on a good path", EXIT_USAGE) from None
    if found is None:
        raise fail(f"{path} (SQLITE_PATH) has no cutover schema: run `cutover schema init` first",
                   EXIT_USAGE)


def _uninitialised(exc: BaseException) -> bool:
    """A store without the project's tables (PostgreSQL before `schema init`)."""
    return type(exc).__name__ == "UndefinedTableError" or (
        type(exc).__name__ == "OperationalError" and "no such table" in str(exc))


def run(main: Callable[[], Awaitable[T]]) -> T:
    """Run a coroutine, turning the project's errors into one line and an exit status."""
    try:
        return asyncio.run(main())  # type: ignore[arg-type]
    except StoreUnavailable as exc:
        raise fail(str(exc), EXIT_UNAVAILABLE) from None
    except (ValidationError, ConfigError) as exc:
        raise fail(str(exc), EXIT_USAGE) from None
    except CutoverError as exc:
        raise fail(str(exc), EXIT_USAGE) from None
    except OSError as exc:
        raise fail(f"{type(exc).__name__}: {exc}", EXIT_UNAVAILABLE) from None
    except Exception as exc:
        if _uninitialised(exc):
            raise fail(f"a store has no cutover schema ({exc}): run `cutover schema init` first",
                       EXIT_USAGE) from None
        raise


def _register() -> None:
    """Import the modules that add their verbs to `app`."""
    import importlib

    for module in ("schema_commands", "ops_commands", "migrate_commands",
                   "demo_serve_commands"):
        importlib.import_module(f"proxy.app.{module}")


_register()


def main() -> None:  # pragma: no cover - console entry
    app()
    sys.exit(0)
