"""The HTTP service over real databases: CRUD, tokens, 503 on an unreachable primary, 4xx on bad
input with both stores unchanged, and `cutover serve` itself."""

from __future__ import annotations

import json
import os
import signal
import socket
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client import CollectorRegistry
from typer.testing import CliRunner

from config import Settings
from proxy import open_repository
from proxy.app.cli import app as cli_app
from proxy.app.demo_serve_commands import is_loopback
from proxy.app.service import create_app
from tests.convergence import assert_converged, count_rows
from tests.serving import start_serve

API = "api-token-for-tests"
ADMIN = "admin-token-for-tests"


@pytest.fixture
def settings(sqlite_path: Path, pg_dsn: str) -> Settings:
    return Settings(sqlite_path=sqlite_path, postgres_dsn=pg_dsn, shadow_sample_rate=1.0)


@asynccontextmanager
async def client_for(settings: Settings, *, init_schema: bool = True
                     ) -> AsyncIterator[tuple[httpx.AsyncClient, Any]]:
    async with open_repository(settings, registry=CollectorRegistry(),
                               init_schema=init_schema) as repo:
        transport = httpx.ASGITransport(app=create_app(settings, repo))
        async with httpx.AsyncClient(transport=transport, base_url="http://cutover") as client:
            yield client, repo


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


@pytest.mark.slow
async def test_crud_round_trip_over_http_reaches_both_stores(settings: Settings) -> None:
    async with client_for(settings) as (client, repo):
        r = await client.post("/users", json={"name": "Aiko", "email": "aiko@example.com"})
        assert r.status_code == 201, r.text
        user = r.json()
        uuid.UUID(user["id"])
        assert (await client.get(f"/users/{user['id']}")).json() == user

        r = await client.post("/study-books", json={"user_id": user["id"], "title": "Python"})
        assert r.status_code == 201, r.text
        book = r.json()
        assert book["description"] is None
        r = await client.get("/study-books", params={"user_id": user["id"]})
        assert [b["id"] for b in r.json()] == [book["id"]]

        r = await client.post("/questions", json={
            "study_book_id": book["id"], "language": "en", "category": "python",
            "difficulty": "easy", "question": "What does json.dumps do?",
            "answer": "Serialize obj to a JSON formatted str."})
        assert r.status_code == 201, r.text
        question = r.json()

        r = await client.get("/search", params={"q": "json dumps", "user_id": user["id"]})
        assert r.status_code == 200, r.text
        hits = r.json()
        assert [h["question_id"] for h in hits] == [question["id"]]
        assert "<mark>" in hits[0]["highlight"] and hits[0]["match_kind"] == "fts"
        r = await client.get("/search", params={"q": "", "user_id": user["id"]})
        assert r.status_code == 200 and r.json() == []

        for verb in ("PATCH", "PUT"):
            r = await client.request(verb, f"/questions/{question['id']}",
                                     json={"difficulty": verb.lower()})
            assert r.status_code == 200, r.text
            assert r.json()["difficulty"] == verb.lower()
            assert r.json()["answer"] == question["answer"]  # partial: the rest is kept

        r = await client.post("/typing-logs", json={
            "user_id": user["id"], "question_id": question["id"], "wpm": 62, "accuracy": 95.5,
            "took_ms": 12000})
        assert r.status_code == 201, r.text
        log_row = r.json()
        assert log_row["accuracy"] == "95.50"  # a decimal at the seed's scale, as text
        r = await client.get("/typing-logs", params={"user_id": user["id"]})
        assert [t["id"] for t in r.json()] == [log_row["id"]]

        r = await client.post("/learning-events", json={
            "user_id": user["id"], "app_id": "quiz", "action": "answered", "score": "7.25"})
        assert r.status_code == 201, r.text
        event = r.json()
        assert event["score"] == "7.25" and event["object_id"] is None
        r = await client.patch(f"/learning-events/{event['id']}", json={"duration_ms": 1500})
        assert r.json()["duration_ms"] == 1500
        r = await client.get("/learning-events", params={"user_id": user["id"]})
        assert [e["id"] for e in r.json()] == [event["id"]]

        r = await client.delete(f"/questions/{question['id']}")
        assert r.status_code == 204
        r = await client.get(f"/questions/{question['id']}")
        assert r.status_code == 404
        assert r.json()["error"] == "question not found"
        r = await client.get(f"/typing-logs/{log_row['id']}")
        assert r.json()["question_id"] is None  # the seed's ON DELETE SET NULL

        users = (await client.get("/users")).json()
        assert [u["id"] for u in users] == [user["id"]]
        await repo.replay_once()
        await assert_converged(repo.stores["sqlite"], repo.stores["postgres"])


@pytest.mark.slow
async def test_data_endpoints_need_the_api_token_when_it_is_set(settings: Settings) -> None:
    async with client_for(settings.with_(api_token=API)) as (client, _):
        r = await client.get("/users")
        assert r.status_code == 401
        assert r.headers["www-authenticate"] == "Bearer"
        assert "missing" in r.json()["error"]
        r = await client.get("/users", headers=bearer("not-the-token"))
        assert r.status_code == 403 and "wrong" in r.json()["error"]
        r = await client.post("/users", json={"name": "A", "email": "a@example.com"},
                              headers={"Authorization": f"Basic {API}"})
        assert r.status_code == 401
        assert (await client.get("/users", headers=bearer(API))).status_code == 200
        r = await client.post("/users", json={"name": "A", "email": "a@example.com"},
                              headers=bearer(API))
        assert r.status_code == 201
        # operations endpoints stay open for probes and the scraper
        assert (await client.get("/healthz")).status_code == 200
        assert (await client.get("/metrics")).status_code == 200
        assert (await client.get("/openapi.json")).status_code == 200


@pytest.mark.slow
async def test_admin_endpoints_are_off_without_admin_token(settings: Settings) -> None:
    async with client_for(settings) as (client, repo):
        r = await client.get("/admin/read-primary", headers=bearer(ADMIN))
        assert r.status_code == 404 and "ADMIN_TOKEN" in r.json()["error"]
        r = await client.put("/admin/read-primary", json={"read_primary": "postgres"})
        assert r.status_code == 404
        assert repo.read_primary == "sqlite"


@pytest.mark.slow
async def test_admin_flip_needs_the_admin_token_and_the_verdict(settings: Settings) -> None:
    async with client_for(settings.with_(admin_token=ADMIN, api_token=API)) as (client, repo):
        assert (await client.get("/admin/read-primary")).status_code == 401
        r = await client.get("/admin/read-primary", headers=bearer(API))
        assert r.status_code == 403  # the data token is not the admin token
        r = await client.get("/admin/read-primary", headers=bearer(ADMIN))
        assert r.status_code == 200 and r.json()["read_primary"] == "sqlite"

        r = await client.put("/admin/read-primary", json={"read_primary": "postgres"},
                             headers=bearer("wrong-admin-token"))
        assert r.status_code == 403 and repo.read_primary == "sqlite"
        # no shadow comparisons yet: the verdict says no-go, so the flip is refused
        r = await client.put("/admin/read-primary", json={"read_primary": "postgres"},
                             headers=bearer(ADMIN))
        assert r.status_code == 409 and "verdict" in r.json()["error"]
        assert repo.read_primary == "sqlite"
        r = await client.put("/admin/read-primary",
                             json={"read_primary": "postgres", "force": True},
                             headers=bearer(ADMIN))
        assert r.status_code == 200 and r.json()["read_primary"] == "postgres"
        assert repo.read_primary == "postgres"
        metrics = (await client.get("/metrics")).text
        assert 'cutover_read_primary{backend="postgres"} 1.0' in metrics
        # the rollback needs no verdict
        r = await client.put("/admin/read-primary", json={"read_primary": "sqlite"},
                             headers=bearer(ADMIN))
        assert r.status_code == 200 and repo.read_primary == "sqlite"
        r = await client.put("/admin/read-primary", json={"read_primary": "mysql"},
                             headers=bearer(ADMIN))
        assert r.status_code == 422 and r.json()["field"] == "read_primary"


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def test_unreachable_primary_is_a_503_with_a_json_error(sqlite_path: Path) -> None:
    secret = "s3cret-pw"
    dsn = f"postgresql://cutover:{secret}@127.0.0.1:{_closed_port()}/cutover"
    settings = Settings(sqlite_path=sqlite_path, postgres_dsn=dsn, read_primary="postgres")
    async with client_for(settings.with_(admin_token=ADMIN), init_schema=False) as (client, _):
        assert (await client.get("/healthz")).json() == {"status": "ok"}  # liveness: no I/O
        ready = await client.get("/readyz")
        assert ready.status_code == 503 and ready.json() == {"status": "unavailable"}
        r = await client.get("/admin/health", headers=bearer(ADMIN))
        assert r.status_code == 503
        health = r.json()
        assert health["status"] == "unavailable" and health["read_primary"] == "postgres"
        assert health["stores"]["postgres"]["state"] == "down"
        responses = [
            r, ready,
            await client.get(f"/users/{uuid.uuid4()}"),
            await client.get("/users"),
            await client.post("/users", json={"name": "A", "email": "a@example.com"}),
            await client.get("/search", params={"q": "json", "user_id": str(uuid.uuid4())}),
        ]
        for resp in responses[2:]:
            assert resp.status_code == 503, resp.text
            assert resp.json()["error"].startswith("postgres store unavailable")
        for resp in responses:
            assert secret not in resp.text


@pytest.mark.slow
async def test_health_details_need_the_admin_token(settings: Settings) -> None:
    """/healthz and /readyz say ok or not, nothing more; each store's state is for the admin."""
    async with client_for(settings.with_(admin_token=ADMIN, api_token=API)) as (client, _):
        r = await client.get("/healthz")
        assert r.status_code == 200 and r.json() == {"status": "ok"}
        r = await client.get("/readyz")
        assert r.status_code == 200 and r.json() == {"status": "ok"}
        assert (await client.get("/admin/health")).status_code == 401
        assert (await client.get("/admin/health", headers=bearer(API))).status_code == 403
        r = await client.get("/admin/health", headers=bearer(ADMIN))
        assert r.status_code == 200
        body = r.json()
        assert body["status"] == "ok" and body["read_primary"] == "sqlite"
        assert {b: s["state"] for b, s in body["stores"].items()} == {
            "sqlite": "up", "postgres": "up"}


@pytest.mark.slow
async def test_bad_input_is_a_4xx_json_error_and_changes_nothing(settings: Settings) -> None:
    async with client_for(settings) as (client, repo):
        user = (await client.post("/users", json={"name": "Aiko",
                                                  "email": "aiko@example.com"})).json()
        uid = user["id"]
        book = (await client.post("/study-books", json={"user_id": uid, "title": "T"})).json()
        await repo.replay_once()
        before = [await count_rows(s) for s in repo.stores.values()]
        log = {"user_id": uid, "wpm": 1, "accuracy": 50, "took_ms": 1}
        raw = {"Content-Type": "application/json"}
        bad: list[tuple[str, str, dict[str, Any]]] = [
            ("POST", "/users", {"json": {"name": "", "email": "a@b.c"}}),
            ("POST", "/users", {"json": {"name": "   ", "email": "a@b.c"}}),
            ("POST", "/users", {"json": {"name": "x" * 256, "email": "a@b.c"}}),
            ("POST", "/users", {"json": {"name": "nul\x00byte", "email": "a@b.c"}}),
            ("POST", "/users", {"content": '{"name": "\\ud800", "email": "a@b.c"}',
                                "headers": raw}),
            ("POST", "/users", {"json": {"name": "A", "email": "no-at-sign"}}),
            ("POST", "/users", {"json": {"name": "A", "email": "aiko@example.com"}}),  # taken
            ("POST", "/users", {"json": {"name": "A", "email": "a@b.c", "id": str(uuid.uuid4())}}),
            ("POST", "/users", {"json": {"name": "A"}}),
            ("POST", "/users", {"json": ["not", "an", "object"]}),
            ("POST", "/users", {"content": "{not json", "headers": raw}),
            ("POST", "/users", {"content": "[" * 100_000, "headers": raw}),
            ("POST", "/study-books", {"json": {"user_id": "not-a-uuid", "title": "t"}}),
            ("POST", "/study-books", {"json": {"user_id": str(uuid.uuid4()), "title": "t"}}),
            ("POST", "/typing-logs", {"json": {**log, "wpm": -1}}),
            ("POST", "/typing-logs", {"json": {**log, "wpm": 2**31}}),
            ("POST", "/typing-logs", {"json": {**log, "took_ms": 10**40}}),
            ("POST", "/typing-logs", {"json": {**log, "accuracy": 100.5}}),
            ("POST", "/typing-logs", {"json": {**log, "accuracy": 12.345}}),
            ("POST", "/typing-logs", {"json": {**log, "accuracy": "NaN"}}),
            ("POST", "/typing-logs", {"content": json.dumps({**log, "accuracy": float("nan")}),
                                      "headers": raw}),
            ("POST", "/typing-logs", {"content": json.dumps({**log, "accuracy": float("inf")}),
                                      "headers": raw}),
            ("POST", "/typing-logs", {"json": {**log, "question_id": str(uuid.uuid4())}}),
            ("POST", "/learning-events", {"json": {"user_id": uid, "app_id": "a",
                                                   "action": "x", "duration_ms": -5}}),
            ("POST", "/learning-events", {"json": {"user_id": uid, "app_id": "a",
                                                   "action": "x", "score": 1e20}}),
            ("POST", "/questions", {"json": {"study_book_id": book["id"], "language": "en",
                                             "category": "c", "difficulty": "d",
                                             "question": "q" * 100_001, "answer": "a"}}),
            ("PATCH", f"/users/{uid}", {"json": {}}),
            ("PATCH", f"/users/{uid}", {"json": {"name": None}}),
            ("PATCH", f"/users/{uid}", {"json": {"created_at": "2020-01-01T00:00:00Z"}}),
            ("PUT", f"/study-books/{book['id']}", {"json": {"user_id": str(uuid.uuid4())}}),
            ("GET", "/users/not-a-uuid", {}),
            ("GET", "/users", {"params": {"offset": 10**30}}),
            ("GET", "/users", {"params": {"limit": 0}}),
            ("GET", "/study-books", {}),
            ("GET", "/search", {"params": {"q": "x" * 513, "user_id": uid}}),
            ("GET", "/search", {"params": {"q": "json", "user_id": uid, "limit": 101}}),
            ("GET", "/search", {"params": {"q": "json", "user_id": "nobody"}}),
            ("DELETE", f"/users/{uuid.uuid4()}", {}),
            ("DELETE", "/users", {}),
            ("GET", "/no-such-endpoint", {}),
        ]
        for method, path, kwargs in bad:
            r = await client.request(method, path, **kwargs)
            assert 400 <= r.status_code < 500, (method, path, r.status_code, r.text)
            body = r.json()
            assert isinstance(body["error"], str) and body["error"], (method, path, body)
        r = await client.get("/search", params={"q": "nul\x00 byte", "user_id": uid})
        assert r.status_code == 200  # control characters in a query are spaces, not errors
        await repo.replay_once()
        after = [await count_rows(s) for s in repo.stores.values()]
        assert before == after


@pytest.mark.slow
async def test_validation_errors_name_the_field(settings: Settings) -> None:
    async with client_for(settings) as (client, _):
        r = await client.post("/users", json={"name": "A", "email": "two@@example.com"})
        assert r.status_code == 422
        assert r.json()["field"] == "email"
        r = await client.post("/study-books", json={"user_id": str(uuid.uuid4()), "title": "t"})
        assert r.status_code == 422
        assert r.json()["field"] == "user_id"
        r = await client.post("/typing-logs", json={"user_id": str(uuid.uuid4()), "wpm": -1,
                                                    "accuracy": 1, "took_ms": 1})
        assert r.status_code == 422 and r.json()["field"] == "wpm"


def test_loopback_addresses() -> None:
    assert all(is_loopback(h) for h in ("127.0.0.1", "127.1.2.3", "::1", "[::1]", "localhost"))
    assert not any(is_loopback(h) for h in ("0.0.0.0", "::", "10.0.0.5", "example.com", ""))


def test_serve_refuses_a_non_loopback_address_without_api_token(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("API_TOKEN", raising=False)
    result = CliRunner().invoke(cli_app, ["serve", "--host", "0.0.0.0", "--port", "0"])
    assert result.exit_code == 2
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and "API_TOKEN" in lines[0] and "0.0.0.0" in lines[0]


@pytest.mark.slow
async def test_cutover_serve_answers_over_http(settings: Settings, tmp_path: Path) -> None:
    """The real command: uvicorn on a free loopback port, stopped by SIGINT with status 0."""
    env = {**os.environ, "SQLITE_PATH": str(settings.sqlite_path),
           "POSTGRES_DSN": settings.postgres_dsn, "API_TOKEN": API}
    env.pop("METRICS_PORT", None)
    proc, url = start_serve(env, tmp_path)
    try:
        async with httpx.AsyncClient(base_url=url, timeout=10) as client:
            assert (await client.get("/healthz")).json()["status"] == "ok"
            assert (await client.get("/users")).status_code == 401
            r = await client.post("/users", json={"name": "A", "email": "a@example.com"},
                                  headers=bearer(API))
            assert r.status_code == 201
            assert "cutover_writes_total" in (await client.get("/metrics")).text
            assert "/search" in (await client.get("/openapi.json")).json()["paths"]
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


@pytest.mark.parametrize("command", ["serve", "demo"])
def test_a_legacy_app_db_must_go_through_schema_init_first(
    command: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Opening a repository would upgrade it in place, without the backup `schema init` writes."""
    import sqlite3

    from proxy.stores.sqlite_schema import LEGACY_TABLES

    legacy = tmp_path / "app.db"
    conn = sqlite3.connect(legacy)
    conn.executescript(LEGACY_TABLES)
    conn.close()
    monkeypatch.setenv("SQLITE_PATH", str(legacy))
    monkeypatch.setenv("POSTGRES_DSN", "postgresql://nobody@127.0.0.1:1/none")
    result = CliRunner().invoke(cli_app, [command, "--port", "0"] if command == "serve"
                                else [command])
    assert result.exit_code == 2
    assert "schema init" in result.output and result.output.count("\n") == 1
    assert not list(tmp_path.glob("*.bak-*")) and not (tmp_path / "shadow.db").exists()
