"""`cutover demo`: the whole cutover on one machine in under a minute.

Creates both schemas, loads sample questions made from Python docstrings (`proxy.app.sample_data`),
then runs a mixed write/read/search workload through the repository with every search shadowed,
flips the primary to the other store mid-run and back (the rollback), and returns a summary: writes
and mirror failures per store and shadow figures read back from the Prometheus registry, latencies
measured here around each call, the outbox and the go/no-go verdict. `/metrics` is served for the
whole run (METRICS_PORT, or a free port on 127.0.0.1).

Each run tags its users' emails, so running it again in the same directory adds a fresh set.
"""

from __future__ import annotations

import asyncio
import math
import random
import secrets
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import structlog
from prometheus_client import CollectorRegistry

from config import Settings
from config.settings import BACKENDS, other_backend
from metrics import (
    DISCREPANCY_REASONS,
    ENTITIES,
    SHADOW_OUTCOMES,
    WRITE_OPS,
    WRITE_OUTCOMES,
    MetricsServer,
    serve_metrics,
)
from proxy.app.sample_data import (
    ACTIONS,
    APPS,
    DEMO_USERS,
    SampleQuestion,
    sample_questions,
    search_queries,
)
from proxy.errors import FlipRefused, NotFoundError, StoreUnavailable, ValidationError
from proxy.repository import Repository, open_repository

log = structlog.get_logger("cutover.demo")

DEFAULT_DURATION_S = 25.0
DEFAULT_QUESTIONS = 240
FLIP_AT = 0.40  # share of the run after which the primary moves to the other store
ROLLBACK_AT = 0.75  # ... and after which it moves back
QUERIES_PER_USER = 200

Echo = Callable[[str], None]


@dataclass(frozen=True, slots=True)
class DemoOptions:
    """What one demo run does."""

    duration_s: float = DEFAULT_DURATION_S
    workers: int = 4
    questions: int = DEFAULT_QUESTIONS
    pace_s: float = 0.02  # pause between one worker's operations: a steady, realistic load
    seed: int = 20240601
    keep_serving: bool = False


@dataclass
class _UserState:
    user_id: uuid.UUID
    books: list[uuid.UUID]
    questions: list[uuid.UUID]
    queries: list[str]
    created: list[uuid.UUID] = field(default_factory=list)  # questions the workload added


@dataclass
class _Tally:
    latencies: dict[tuple[str, str], list[float]] = field(default_factory=dict)
    operations: dict[str, int] = field(default_factory=dict)

    def add(self, kind: str, backend: str, seconds: float) -> None:
        self.latencies.setdefault((kind, backend), []).append(seconds)
        self.operations[kind] = self.operations.get(kind, 0) + 1

    def count(self, outcome: str) -> None:
        self.operations[outcome] = self.operations.get(outcome, 0) + 1


def percentile(samples: list[float], q: float) -> float:
    """Nearest-rank percentile (`q` in 0-100) of a non-empty list."""
    ordered = sorted(samples)
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[rank - 1]


# -- loading the sample ---------------------------------------------------------------------------

async def _bounded(calls: list[Callable[[], Awaitable[Any]]], limit: int = 8) -> list[Any]:
    gate = asyncio.Semaphore(limit)

    async def one(call: Callable[[], Awaitable[Any]]) -> Any:
        async with gate:
            return await call()

    return list(await asyncio.gather(*(one(c) for c in calls)))


async def load_sample(
    repo: Repository, questions: list[SampleQuestion], rng: random.Random, tag: str
) -> list[_UserState]:
    """Users, two study books each and the questions, written through the repository."""
    users = []
    for name in DEMO_USERS:
        user = await repo.create_user(name=name, email=f"{name.lower()}.{tag}@example.com")
        books = [
            await repo.create_study_book(
                user_id=user.id, title=f"Python standard library, {part}",
                description=f"Questions made from docstrings of modules {part}.",
            )
            for part in ("a to m", "n to z")
        ]
        users.append((user, books))
    def create(q: SampleQuestion, book_id: uuid.UUID) -> Callable[[], Awaitable[Any]]:
        return lambda: repo.create_question(
            study_book_id=book_id, language=q.language, category=q.category,
            difficulty=q.difficulty, question=q.question, answer=q.answer)

    calls: list[Callable[[], Awaitable[Any]]] = []
    owners: list[int] = []
    for i, q in enumerate(questions):
        owner = i % len(users)
        _, books = users[owner]
        calls.append(create(q, books[0].id if q.module[0] <= "m" else books[1].id))
        owners.append(owner)
    created = await _bounded(calls)
    states = []
    for index, (user, books) in enumerate(users):
        mine = [questions[i] for i, o in enumerate(owners) if o == index]
        states.append(_UserState(
            user_id=user.id, books=[b.id for b in books],
            questions=[c.id for c, o in zip(created, owners, strict=True) if o == index],
            queries=search_queries(mine, rng, QUERIES_PER_USER),
        ))
    return states


# -- the workload ---------------------------------------------------------------------------------

class _Workload:
    """Workers doing what an application does: mostly searches and small writes."""

    def __init__(
        self, repo: Repository, users: list[_UserState], reserve: list[SampleQuestion],
        tally: _Tally,
    ) -> None:
        self.repo = repo
        self.users = users
        self.reserve = reserve
        self.tally = tally
        self.ops: list[tuple[str, str, int]] = [
            # (name, kind, weight)
            ("search", "search", 40),
            ("get_question", "read", 10),
            ("list_questions", "read", 6),
            ("list_typing_logs", "read", 4),
            ("typing_log", "write", 14),
            ("learning_event", "write", 10),
            ("update_question", "write", 6),
            ("create_question", "write", 5),
            ("delete_question", "write", 3),
            ("update_study_book", "write", 2),
        ]

    async def _op(self, name: str, user: _UserState, rng: random.Random) -> None:
        repo = self.repo
        if name == "search":
            await repo.search_questions(rng.choice(user.queries), user_id=user.user_id,
                                        limit=rng.choice((10, 20)))
        elif name == "get_question":
            await repo.get_question(rng.choice(user.questions))
        elif name == "list_questions":
            await repo.list_questions(rng.choice(user.books), limit=50)
        elif name == "list_typing_logs":
            await repo.list_typing_logs(user.user_id, limit=20)
        elif name == "typing_log":
            await repo.record_typing_log(
                user_id=user.user_id, question_id=rng.choice(user.questions),
                wpm=rng.randint(20, 120), accuracy=f"{rng.uniform(70, 100):.2f}",
                took_ms=rng.randint(2_000, 60_000))
        elif name == "learning_event":
            await repo.record_learning_event(
                user_id=str(user.user_id), app_id=rng.choice(APPS), action=rng.choice(ACTIONS),
                object_id=str(rng.choice(user.questions)),
                score=f"{rng.uniform(0, 100):.2f}" if rng.random() < 0.7 else None,
                duration_ms=rng.randint(500, 90_000))
        elif name == "update_question":
            await repo.update_question(rng.choice(user.questions),
                                       difficulty=rng.choice(("easy", "medium", "hard")))
        elif name == "create_question" and self.reserve:
            q = self.reserve.pop()
            created = await repo.create_question(
                study_book_id=rng.choice(user.books), language=q.language, category=q.category,
                difficulty=q.difficulty, question=q.question, answer=q.answer)
            user.questions.append(created.id)
            user.created.append(created.id)
        elif name == "delete_question" and user.created:
            victim = user.created.pop(rng.randrange(len(user.created)))
            user.questions.remove(victim)
            await repo.delete_question(victim)
        elif name == "update_study_book":
            await repo.update_study_book(
                rng.choice(user.books), description=f"Reviewed at step {rng.randint(1, 10**6)}.")

    async def worker(self, rng: random.Random, deadline: float, pace_s: float) -> None:
        names = [o[0] for o in self.ops]
        kinds = {o[0]: o[1] for o in self.ops}
        weights = [o[2] for o in self.ops]
        while time.monotonic() < deadline:
            name = rng.choices(names, weights)[0]
            user = rng.choice(self.users)
            backend = self.repo.read_primary
            start = time.perf_counter()
            try:
                await self._op(name, user, rng)
            except (ValidationError, NotFoundError):
                self.tally.count("rejected")  # a row another worker deleted a moment ago
            except StoreUnavailable:
                self.tally.count("unavailable")
            else:
                self.tally.add(kinds[name], backend, time.perf_counter() - start)
            await asyncio.sleep(pace_s)


# -- the verdict and the summary ------------------------------------------------------------------

async def current_verdict(repo: Repository) -> dict[str, Any] | None:
    """The go/no-go verdict for the summary (None without a shadow store)."""
    verdict = await repo.current_verdict()
    return None if verdict is None else {"go": verdict.go, "reasons": list(verdict.reasons)}


def _value(registry: CollectorRegistry, name: str, labels: dict[str, str] | None = None) -> float:
    return registry.get_sample_value(name, labels or {}) or 0.0


def registry_figures(registry: CollectorRegistry) -> dict[str, Any]:
    """Writes, mirror failures, shadow outcomes and discrepancies read back from the registry."""
    writes: dict[str, dict[str, int]] = {}
    for backend in BACKENDS:
        row = {
            outcome: int(sum(
                _value(registry, "cutover_writes_total",
                       {"backend": backend, "entity": e, "op": op, "outcome": outcome})
                for e in ENTITIES for op in WRITE_OPS))
            for outcome in WRITE_OUTCOMES
        }
        row["mirror_failures"] = int(sum(
            _value(registry, "cutover_mirror_failures_total", {"backend": backend, "entity": e})
            for e in ENTITIES))
        writes[backend] = row
    comparisons = {o: int(_value(registry, "cutover_shadow_comparisons_total", {"outcome": o}))
                   for o in SHADOW_OUTCOMES}
    discrepancies = {
        r: n for r in DISCREPANCY_REASONS
        if (n := int(_value(registry, "cutover_shadow_discrepancies_total", {"reason": r})))
    }

    def mean(name: str, labels: dict[str, str] | None = None) -> float | None:
        count = _value(registry, f"{name}_count", labels)
        return _value(registry, f"{name}_sum", labels) / count if count else None

    shadow_ms = {}
    for backend in BACKENDS:
        m = mean("cutover_search_duration_seconds", {"backend": backend, "role": "shadow"})
        shadow_ms[backend] = None if m is None else round(m * 1000, 2)
    rbo, jaccard = mean("cutover_shadow_rank_agreement"), mean("cutover_shadow_overlap")
    return {
        "writes": writes,
        "shadow": {
            "comparisons": comparisons,
            "mean_rbo": None if rbo is None else round(rbo, 4),
            "mean_jaccard": None if jaccard is None else round(jaccard, 4),
            "discrepancies": discrepancies,
            "shadow_search_mean_ms": shadow_ms,
        },
        "outbox_pending": {b: int(_value(registry, "cutover_outbox_pending", {"backend": b}))
                           for b in BACKENDS},
    }


def _latencies(tally: _Tally) -> dict[str, dict[str, dict[str, float]]]:
    out: dict[str, dict[str, dict[str, float]]] = {}
    for (kind, backend), samples in sorted(tally.latencies.items()):
        out.setdefault(kind, {})[backend] = {
            "p50_ms": round(percentile(samples, 50) * 1000, 2),
            "p95_ms": round(percentile(samples, 95) * 1000, 2),
            "n": len(samples),
        }
    return out


# -- the run --------------------------------------------------------------------------------------

async def run_demo(
    settings: Settings, options: DemoOptions = DemoOptions(), *, echo: Echo = print,
    on_summary: Callable[[dict[str, Any]], None] | None = None,
) -> dict[str, Any]:
    """Run the demo; progress lines go to `echo`; returns the summary (see `format_summary`).

    With `options.keep_serving`, `on_summary` receives the summary and the run then waits,
    `/metrics` still served, until it is cancelled (Ctrl-C).
    """
    wall_start = time.perf_counter()
    if not settings.dual_write:
        echo("note: DUAL_WRITE=off ignored: the demo shows dual writes and flips both ways")
        settings = settings.with_(dual_write=True)
    registry = CollectorRegistry()
    server: MetricsServer | None = None
    if settings.metrics_port is None:
        server = serve_metrics(registry, "127.0.0.1", 0)
        metrics_url = server.url
    else:  # open_repository serves it there
        host = settings.metrics_host
        host = f"[{host}]" if ":" in host else host
        metrics_url = f"http://{host}:{settings.metrics_port}/metrics"
    try:
        if settings.postgres_dsn == "embedded":
            echo("starting the embedded PostgreSQL (data under ./data/postgres) ...")
        async with open_repository(settings, registry=registry) as repo:
            echo(f"schemas ready: SQLite at {settings.sqlite_path}, PostgreSQL "
                 f"{'embedded' if settings.postgres_dsn == 'embedded' else settings.safe_dsn}")
            echo(f"metrics: {metrics_url}")
            summary = await _run(repo, settings, options, echo, metrics_url)
            summary["wall_s"] = round(time.perf_counter() - wall_start, 2)
            if options.keep_serving:
                if on_summary is not None:
                    on_summary(summary)
                echo(f"serving {metrics_url} until Ctrl-C")
                await asyncio.Event().wait()
            return summary
    finally:
        if server is not None:
            server.close()


async def _run(
    repo: Repository, settings: Settings, options: DemoOptions, echo: Echo, metrics_url: str
) -> dict[str, Any]:
    rng = random.Random(options.seed)
    tag = secrets.token_hex(4)
    pool = sample_questions()
    sample, reserve = pool[: options.questions], pool[options.questions:]
    rng.shuffle(reserve)
    load_start = time.perf_counter()
    users = await load_sample(repo, sample, rng, tag)
    load_s = time.perf_counter() - load_start
    echo(f"sample loaded: {len(users)} users, {2 * len(users)} study books, {len(sample)} "
         f"questions from Python docstrings ({load_s:.1f} s)")

    start_primary = repo.read_primary
    tally = _Tally()
    workload = _Workload(repo, users, reserve, tally)
    echo(f"workload: {options.duration_s:.0f} s, {options.workers} workers, primary "
         f"{start_primary}; flip to {other_backend(start_primary)} at {FLIP_AT:.0%}, back at "
         f"{ROLLBACK_AT:.0%}")
    t0 = time.monotonic()
    deadline = t0 + options.duration_s
    workers = [
        asyncio.create_task(workload.worker(random.Random(options.seed + i), deadline,
                                            options.pace_s))
        for i in range(options.workers)
    ]
    flips: list[dict[str, Any]] = []
    try:
        for share, target in ((FLIP_AT, other_backend(start_primary)),
                              (ROLLBACK_AT, start_primary)):
            await asyncio.sleep(max(0.0, t0 + share * options.duration_s - time.monotonic()))
            verdict = await current_verdict(repo)
            flip_start = time.perf_counter()
            try:
                await repo.set_read_primary(target)
                flipped = True
            except FlipRefused as exc:
                flipped = False
                echo(f"flip to {target} refused: {exc}")
            took_ms = (time.perf_counter() - flip_start) * 1000
            at_s = time.monotonic() - t0
            flips.append({"to": target, "at_s": round(at_s, 2), "took_ms": round(took_ms, 1),
                          "done": flipped, "verdict": verdict})
            role = "flip" if target != start_primary else "rollback"
            said = "" if verdict is None else (
                " (verdict: go)" if verdict["go"] else
                f" (verdict: no-go, {len(verdict['reasons'])} check(s) failing; the demo "
                "flips anyway, as `cutover read-primary --force` would)")
            if flipped:
                echo(f"t={at_s:5.1f} s  {role}: primary is now {target}, in {took_ms:.0f} ms"
                     + said)
        await asyncio.gather(*workers)
    finally:
        for task in workers:
            task.cancel()
        await asyncio.gather(*workers, return_exceptions=True)
    workload_s = time.monotonic() - t0

    # let the shadow comparisons finish and the outbox settle before reading the figures
    if repo.shadow is not None:
        await repo.shadow.drain()
    await repo.replay_once()
    await repo.outbox_stats()
    final_verdict = await current_verdict(repo)
    figures = registry_figures(repo.metrics.registry)
    return {
        "workload_s": round(workload_s, 2),
        "workers": options.workers,
        "sample": {"users": len(users), "study_books": 2 * len(users),
                   "questions": len(sample), "load_s": round(load_s, 2)},
        "primary": {"start": start_primary, "flips": flips, "end": repo.read_primary},
        "operations": dict(sorted(tally.operations.items())),
        **figures,
        "latency_ms": _latencies(tally),
        "verdict": final_verdict,
        "metrics_url": metrics_url,
        "sqlite_path": str(settings.sqlite_path),
        "postgres": "embedded (./data/postgres)" if settings.postgres_dsn == "embedded"
        else settings.safe_dsn,
    }


# -- the printed summary --------------------------------------------------------------------------

def _ms(figure: dict[str, float] | None, key: str) -> str:
    return "-" if not figure else f"{figure[key]:.1f}"


def format_summary(s: dict[str, Any]) -> str:
    """The summary as the text `cutover demo` prints."""
    lines = [
        "",
        f"cutover demo: {s['workload_s']:.1f} s of workload, {s['workers']} workers "
        f"({s.get('wall_s', 0):.1f} s in all)",
    ]
    ops = s["operations"]
    lines.append("operations: " + ", ".join(f"{k} {v}" for k, v in ops.items()))
    path = [s["primary"]["start"]] + [
        f"{f['to']} (t={f['at_s']:.1f} s, {f['took_ms']:.0f} ms)"
        for f in s["primary"]["flips"] if f["done"]
    ]
    lines.append("primary: " + " -> ".join(path))
    lines += ["", "writes per store     ok   deferred  error  timeout  mirror failures"]
    for backend, w in s["writes"].items():
        lines.append(f"  {backend:<16}{w['ok']:>6} {w['deferred']:>10} {w['error']:>6} "
                     f"{w['timeout']:>8} {w['mirror_failures']:>16}")
    lines += ["", "latency (measured around each call, by the primary at the time; a write "
              "includes its inline mirror write)",
              "                        p50 ms   p95 ms       n"]
    for kind in ("write", "read", "search"):
        for backend in BACKENDS:
            fig = s["latency_ms"].get(kind, {}).get(backend)
            n = fig["n"] if fig else 0
            lines.append(f"  {kind:<7}{backend + ' primary':<17}{_ms(fig, 'p50_ms'):>6} "
                         f"{_ms(fig, 'p95_ms'):>8} {n:>7}")
    sh = s["shadow"]
    lines += ["", "shadow comparisons: " + ", ".join(f"{k} {v}"
                                                      for k, v in sh["comparisons"].items())]
    rbo = "-" if sh["mean_rbo"] is None else f"{sh['mean_rbo']:.3f}"
    jac = "-" if sh["mean_jaccard"] is None else f"{sh['mean_jaccard']:.3f}"
    lines.append(f"  mean rank agreement (RBO) {rbo}, mean Jaccard@k {jac}; shadow search mean "
                 + ", ".join(f"{b} {'-' if v is None else f'{v:.1f}'} ms"
                             for b, v in sh["shadow_search_mean_ms"].items()))
    disc = sh["discrepancies"]
    lines.append("  discrepancies by reason: " + (
        ", ".join(f"{k} {v}" for k, v in disc.items()) if disc else "none"))
    lines.append("outbox pending: " + ", ".join(f"{b} {n}"
                                                for b, n in s["outbox_pending"].items()))
    verdict = s.get("verdict")
    if verdict is not None:
        lines.append("go/no-go verdict: " + ("go" if verdict["go"] else "no-go"))
        lines.extend(f"  - {reason}" for reason in verdict["reasons"])
    lines += ["", f"data: SQLite {s['sqlite_path']}, PostgreSQL {s['postgres']}",
              f"metrics: {s['metrics_url']}"]
    return "\n".join(lines)
