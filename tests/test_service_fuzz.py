"""Schemathesis against the service's own OpenAPI schema: hundreds of generated requests, valid
and invalid, over real HTTP to a real uvicorn on real databases; not one may get a 5xx."""

from __future__ import annotations

import socket
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import requests
import schemathesis
import uvicorn
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode

from config import Settings
from proxy.service import create_app

ADMIN = "admin-token-for-fuzz"
#: generated requests per operation and mode (34 operations x 2 modes)
EXAMPLES = {GenerationMode.POSITIVE: 20, GenerationMode.NEGATIVE: 12}
MIN_REQUESTS = 500


@pytest.fixture
def live_service(sqlite_path: Path, pg_dsn: str) -> Iterator[str]:
    """`create_app` under uvicorn in a thread; the app opens its repository in its lifespan."""
    app = create_app(Settings(sqlite_path=sqlite_path, postgres_dsn=pg_dsn,
                              shadow_sample_rate=1.0, admin_token=ADMIN))
    # IPPROTO_TCP, so asyncio turns Nagle off on each connection (else ~40 ms per request)
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="on"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(30)
        sock.close()


def _seed(url: str) -> dict[str, list[str]]:
    """Real rows, so generated requests also reach the paths past 'not found'."""
    ids: dict[str, list[str]] = {k: [] for k in
                                 ("users", "study-books", "questions", "typing-logs",
                                  "learning-events")}
    with httpx.Client(base_url=url) as c:
        for i in range(3):
            user = c.post("/users", json={"name": f"U{i}", "email": f"u{i}@example.com"}).json()
            book = c.post("/study-books", json={"user_id": user["id"], "title": "Python"}).json()
            q = c.post("/questions", json={
                "study_book_id": book["id"], "language": "en", "category": "json",
                "difficulty": "easy", "question": "What does json.dumps do?",
                "answer": "Serialize obj to a JSON formatted str."}).json()
            log = c.post("/typing-logs", json={"user_id": user["id"], "question_id": q["id"],
                                               "wpm": 50, "accuracy": 90, "took_ms": 100}).json()
            event = c.post("/learning-events", json={"user_id": user["id"], "app_id": "quiz",
                                                     "action": "answered"}).json()
            for key, row in zip(ids, (user, book, q, log, event), strict=True):
                ids[key].append(row["id"])
    return ids


def _use_real_ids(case: Any, ids: dict[str, list[str]], data: st.DataObject) -> None:
    """Mostly swap generated UUIDs for real ones (path ids, owners, references)."""
    if not data.draw(st.sampled_from((True, True, True, False)), label="real ids"):
        return
    collection = case.operation.path.strip("/").split("/")[0]
    if case.path_parameters and "id" in case.path_parameters and collection in ids:
        case.path_parameters["id"] = data.draw(st.sampled_from(ids[collection]))
    refs = {"user_id": "users", "study_book_id": "study-books", "question_id": "questions"}
    for container in (case.query, case.body):
        if isinstance(container, dict):
            for key, source in refs.items():
                if key in container:
                    container[key] = data.draw(st.sampled_from(ids[source]))


def test_no_generated_request_gets_a_server_error(live_service: str) -> None:
    url = live_service
    ids = _seed(url)
    schema = schemathesis.openapi.from_url(f"{url}/openapi.json")
    session = requests.Session()
    statuses: Counter[int] = Counter()
    server_errors: list[str] = []
    skipped: list[str] = []
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 30
    # deletes last: a delete of a seeded user cascades to every row the other operations use
    operations.sort(key=lambda op: op.method.upper() == "DELETE")

    for operation in operations:
        for mode, examples in EXAMPLES.items():

            @settings(max_examples=examples, deadline=None, database=None, derandomize=True,
                      suppress_health_check=list(HealthCheck))
            @given(case=operation.as_strategy(generation_mode=mode), data=st.data())
            def run(case: Any, data: st.DataObject) -> None:
                _use_real_ids(case, ids, data)
                response = case.call(base_url=url, session=session, timeout=15,
                                     headers={"Authorization": f"Bearer {ADMIN}"})
                statuses[response.status_code] += 1
                if response.status_code >= 500:
                    server_errors.append(
                        f"{case.method} {case.formatted_path} query={case.query!r} "
                        f"body={case.body!r} -> {response.status_code} {response.text[:300]}")

            try:
                run()
            except Unsatisfiable:
                # nothing to break in this operation (e.g. GET /healthz has no inputs)
                assert mode is GenerationMode.NEGATIVE, operation.label
                skipped.append(operation.label)

    total = sum(statuses.values())
    print(f"schemathesis: {total} requests, statuses {dict(sorted(statuses.items()))}; "
          f"no negative cases for {skipped}")
    assert not server_errors, f"{len(server_errors)} server errors:\n" + "\n".join(
        server_errors[:10])
    assert total >= MIN_REQUESTS
    # both the success paths and the rejections were exercised
    assert sum(n for s, n in statuses.items() if s < 300) >= 50
    assert sum(n for s, n in statuses.items() if 400 <= s < 500) >= 100
