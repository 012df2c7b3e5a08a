"""Hostile request bodies (issue 24): a real `cutover serve` refuses a request without its token
from the headers alone, and any body over MAX_BODY_BYTES (1 MiB by default) before it is parsed.
64 MiB sent with and without a token, with and without a Content-Length, leave the server's
resident memory within a few MB of where it was."""

from __future__ import annotations

import os
import socket
import threading
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import psutil
import pytest

from config import Settings
from tests.serving import start_serve

API = "api-token-for-limits"
ADMIN = "admin-token-for-limits"
HUGE = 64 * 1024 * 1024
CHUNK = b"x" * (1024 * 1024)
#: how much the server may grow over all the huge requests
RSS_SLACK = 8 * 1024 * 1024


@pytest.fixture
def server(sqlite_path: Path, pg_dsn: str, tmp_path: Path) -> Iterator[tuple[str, int, int]]:
    """`cutover serve` on a free loopback port: (host, port, pid)."""
    env = {**os.environ, "SQLITE_PATH": str(sqlite_path), "POSTGRES_DSN": pg_dsn,
           "API_TOKEN": API, "ADMIN_TOKEN": ADMIN}
    env.pop("METRICS_PORT", None)
    env.pop("MAX_BODY_BYTES", None)
    proc, url = start_serve(env, tmp_path)
    try:
        parts = urlsplit(url)
        assert parts.hostname is not None and parts.port is not None
        yield parts.hostname, parts.port, proc.pid
    finally:
        proc.terminate()
        proc.wait(30)


def _send_huge(host: str, port: int, path: str, token: str | None, *, chunked: bool) -> int:
    """POST (PUT on /admin) 64 MiB of junk to `path`; the status the server answered (0 when
    none came)."""
    method = "PUT" if path.startswith("/admin") else "POST"
    head = [f"{method} {path} HTTP/1.1", f"Host: {host}", "Content-Type: application/json"]
    if token is not None:
        head.append(f"Authorization: Bearer {token}")
    head.append("Transfer-Encoding: chunked" if chunked else f"Content-Length: {HUGE}")
    with socket.create_connection((host, port)) as sock:
        sock.settimeout(120)  # a guard against a hung test, not a measurement
        sock.sendall(("\r\n".join(head) + "\r\n\r\n").encode())

        def push() -> None:
            try:
                for _ in range(HUGE // len(CHUNK)):
                    if chunked:
                        sock.sendall(b"%x\r\n" % len(CHUNK) + CHUNK + b"\r\n")
                    else:
                        sock.sendall(CHUNK)
                if chunked:
                    sock.sendall(b"0\r\n\r\n")
            except OSError:
                pass  # the server answered and closed

        pusher = threading.Thread(target=push, daemon=True)
        pusher.start()
        answer = b""
        try:
            while b"\r\n" not in answer:
                data = sock.recv(4096)
                if not data:
                    break
                answer += data
        except OSError:
            pass
        pusher.join()
    status = answer.split(b"\r\n", 1)[0].split(b" ")
    return int(status[1]) if len(status) > 1 else 0


@pytest.mark.slow
def test_huge_bodies_are_refused_before_they_are_read(server: tuple[str, int, int]) -> None:
    host, port, pid = server
    base = f"http://{host}:{port}"
    with httpx.Client(base_url=base, timeout=30) as client:
        # warm up: the paths the huge requests take, once with a small body
        assert client.post("/users", json={"name": "A", "email": "a@example.com"}).status_code \
            == 401
        r = client.post("/users", json={"name": "A", "email": "a@example.com"},
                        headers={"Authorization": f"Bearer {API}"})
        assert r.status_code == 201, r.text
    process = psutil.Process(pid)
    before = process.memory_info().rss
    statuses = {
        (path, token is not None, chunked): _send_huge(host, port, path, token, chunked=chunked)
        for path, token in (("/users", None), ("/users", API), ("/admin/read-primary", None),
                            ("/admin/read-primary", ADMIN))
        for chunked in (False, True)
    }
    grown = process.memory_info().rss - before
    print(f"server RSS {before / 2**20:.1f} MiB, grown {grown / 2**20:.2f} MiB over "
          f"{len(statuses)} requests of 64 MiB: {statuses}")
    assert grown <= RSS_SLACK, f"the server grew by {grown / 2**20:.1f} MiB"
    for (_, authorized, chunked), status in statuses.items():
        if not authorized:
            assert status == 401, statuses
        elif not chunked:
            assert status == 413, statuses
        else:  # refused once 1 MiB has streamed in; the answer may be lost to the reset
            assert status in (413, 0), statuses
    # and the server still serves
    with httpx.Client(base_url=base, timeout=30) as client:
        assert client.get("/healthz").json() == {"status": "ok"}
        r = client.get("/users", headers={"Authorization": f"Bearer {API}"})
        assert r.status_code == 200 and len(r.json()) == 1


def test_a_body_over_the_setting_is_a_413_and_one_under_it_is_read(
        sqlite_path: Path, pg_dsn: str) -> None:
    """In process: MAX_BODY_BYTES moves the cap; a wrong token is refused with a body too."""
    from prometheus_client import CollectorRegistry

    from proxy import open_repository
    from proxy.app.service import create_app

    settings = Settings(sqlite_path=sqlite_path, postgres_dsn=pg_dsn, api_token=API,
                        max_body_bytes=Settings.from_env({"MAX_BODY_BYTES": "2048"})
                        .max_body_bytes)

    async def run() -> None:
        async with open_repository(settings, registry=CollectorRegistry()) as repo:
            transport = httpx.ASGITransport(app=create_app(settings, repo))
            async with httpx.AsyncClient(transport=transport, base_url="http://x") as client:
                auth = {"Authorization": f"Bearer {API}"}
                r = await client.post("/users", json={"name": "n" * 3000, "email": "a@b.c"},
                                      headers=auth)
                assert r.status_code == 413 and "MAX_BODY_BYTES" in r.json()["error"]

                async def stream() -> object:
                    for _ in range(3):
                        yield b" " * 1000

                r = await client.post("/users", content=stream(),  # type: ignore[arg-type]
                                      headers={**auth, "Content-Type": "application/json"})
                assert r.status_code == 413
                r = await client.post("/users", json={"name": "n" * 200, "email": "a@b.c"},
                                      headers=auth)
                assert r.status_code == 201
                r = await client.post("/users", json={"name": "B", "email": "b@b.c"},
                                      headers={"Authorization": "Bearer wrong-token!"})
                assert r.status_code == 403

    import asyncio
    asyncio.run(run())
