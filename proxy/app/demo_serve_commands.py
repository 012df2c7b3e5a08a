"""The `cutover demo` and `cutover serve` commands (registered on `proxy.app.cli.app` at import)."""

from __future__ import annotations

import ipaddress
import json
import logging
import socket
import sys
import warnings
from typing import Any

import structlog
import typer

from config import Settings
from proxy.app.cli import EXIT_USAGE, app, fail, load_settings, run
from proxy.sqlite_file import is_legacy_file


def configure_logging(level: int, *, json_lines: bool) -> None:
    """structlog to stderr at `level`: JSON lines for the service, console text for the demo."""
    renderer: Any = (structlog.processors.JSONRenderer() if json_lines
                     else structlog.dev.ConsoleRenderer(colors=False))
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(level),
        logger_factory=structlog.PrintLoggerFactory(sys.stderr),
        cache_logger_on_first_use=False,
    )


def is_loopback(host: str) -> bool:
    """True for addresses only this machine can reach (127.0.0.0/8, ::1, localhost)."""
    if host.strip().lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # a name that could resolve to anything counts as reachable from outside


def refuse_unupgraded_legacy_db(settings: Settings) -> None:
    """Stop (exit 2) when SQLITE_PATH is a legacy app.db `cutover schema init` has not upgraded.

    Opening a repository would upgrade it in place without the backup `schema init` writes.
    """
    import sqlite3

    path = settings.sqlite_path
    try:
        legacy = is_legacy_file(path)
    except sqlite3.Error as exc:
        raise fail(f"SQLITE_PATH={path}: cannot read it ({exc})", EXIT_USAGE) from None
    if legacy:
        raise fail(f"SQLITE_PATH={path} is a legacy app.db: run `cutover schema init` first "
                   "(it writes a backup before upgrading it)", EXIT_USAGE)


DEMO_HELP = (
    "Run the cutover on this machine: both schemas, sample data, a mixed workload with every "
    "search shadowed, a flip of the primary and the rollback, then a summary (writes and mirror "
    "failures per store, shadow agreement, discrepancies by reason, latencies, where /metrics "
    "is served).\n\nUses the environment's settings: by default SQLite at ./data/app.db and an "
    "embedded PostgreSQL under ./data/postgres. /metrics is served on METRICS_PORT, or on a "
    "free port on 127.0.0.1, for the whole run."
)
SERVE_HELP = (
    "Serve the HTTP API: JSON CRUD, /search, /healthz, /metrics, /admin/read-primary, OpenAPI "
    "at /openapi.json.\n\nData endpoints need 'Authorization: Bearer $API_TOKEN' when API_TOKEN "
    "is set, and a non-loopback --host needs it set. The admin endpoints need $ADMIN_TOKEN and "
    "are off without it."
)


@app.command("demo", help=DEMO_HELP)
def demo(
    duration: float = typer.Option(25.0, "--duration", min=1.0, max=86_400.0,
                                   help="Seconds of mixed workload (the whole run adds ~5 s)."),
    keep_serving: bool = typer.Option(False, "--keep-serving",
                                      help="After the summary, keep /metrics up until Ctrl-C."),
    as_json: bool = typer.Option(False, "--json", help="Print the summary as JSON."),
    questions: int = typer.Option(240, "--questions", min=20, max=600,
                                  help="Sample questions to load (from Python docstrings)."),
) -> None:
    """`cutover demo` (see DEMO_HELP)."""
    from proxy.app.demo import DemoOptions, format_summary, run_demo

    settings = load_settings()
    refuse_unupgraded_legacy_db(settings)
    # platformdirs warns when XDG_RUNTIME_DIR is unset; the embedded server then uses /tmp
    warnings.filterwarnings("ignore", message=".*XDG_RUNTIME_DIR.*")
    # mismatches are expected here and summed up at the end: only errors interrupt the output
    configure_logging(logging.ERROR, json_lines=False)
    options = DemoOptions(duration_s=duration, questions=questions, keep_serving=keep_serving)
    printed = False

    def show(summary: dict[str, Any]) -> None:
        nonlocal printed
        typer.echo(json.dumps(summary, indent=2) if as_json else format_summary(summary))
        printed = True

    def echo(line: str) -> None:
        typer.echo(line, err=as_json)

    try:
        summary = run(lambda: run_demo(settings, options, echo=echo, on_summary=show))
    except KeyboardInterrupt:
        if printed:
            return
        raise fail("interrupted", 130) from None
    show(summary)


@app.command("serve", help=SERVE_HELP)
def serve(
    host: str = typer.Option("127.0.0.1", "--host",
                             help="Address to listen on (non-loopback needs API_TOKEN)."),
    port: int = typer.Option(8000, "--port", min=0, max=65535, help="TCP port (0: any free)."),
) -> None:
    """`cutover serve` (see SERVE_HELP)."""
    settings = load_settings()
    if not is_loopback(host) and settings.api_token is None:
        raise fail(f"refusing to listen on non-loopback address {host} without API_TOKEN: "
                   "set API_TOKEN or use --host 127.0.0.1", EXIT_USAGE)
    refuse_unupgraded_legacy_db(settings)
    try:
        sock = _bind(host, port)
    except OSError as exc:
        raise fail(f"cannot listen on {host}:{port}: {exc.strerror or exc}", EXIT_USAGE) from None
    configure_logging(logging.INFO, json_lines=True)
    try:
        run(lambda: _serve(settings, sock))
    except KeyboardInterrupt:
        pass
    finally:
        sock.close()


def _bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # IPPROTO_TCP explicitly: asyncio sets TCP_NODELAY on accepted connections only when the
    # socket says it is TCP; with proto 0 Nagle's algorithm adds ~40 ms to every response
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host.strip("[]"), port))
    except OSError:
        sock.close()
        raise
    # listening now: connections made before uvicorn's loop accepts wait in the backlog
    sock.listen(2048)
    return sock


async def _serve(settings: Settings, sock: socket.socket) -> None:
    import uvicorn
    from prometheus_client import CollectorRegistry

    from proxy.app.service import create_app
    from proxy.repository import open_repository

    async with open_repository(settings, registry=CollectorRegistry()) as repo:
        host, port = sock.getsockname()[:2]
        structlog.get_logger("cutover.service").info(
            "service.listening", url=f"http://{f'[{host}]' if ':' in host else host}:{port}",
            read_primary=repo.read_primary,
            api_token=settings.api_token is not None, admin=settings.admin_token is not None)
        config = uvicorn.Config(create_app(settings, repo), log_level="info",
                                access_log=False, lifespan="on")
        await uvicorn.Server(config).serve(sockets=[sock])
