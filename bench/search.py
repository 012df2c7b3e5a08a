"""Search latency on 100k questions owned by one user: our PostgreSQL hybrid query, the seed
document's hybrid query on the seed's own schema, and SQLite FTS5, in the same run.

    .venv/bin/python bench/search.py [--rows 100000] [--repeat 5] [--dsn postgresql://...]

- ours:   `PostgresStore.search_questions` (the store's SQL, through asyncpg, schema from
          `PostgresStore.init_schema`).
- seed:   the seed document's hybrid query (seed/000_8bcb5f4eb90dbcb9.txt, §3.2) run verbatim on
          the seed's DDL (§2.1) in a separate database: `uuid_generate_v4()` becomes
          `gen_random_uuid()` (the embedded server has no uuid-ossp); its ALTER SYSTEM settings
          are not applied.
- sqlite: `SQLiteStore.search_questions` (FTS5) on a SQLite file with the store's schema.

The text is real: question and answer sentences built from the docstrings of the Python standard
library (modules importable without side effects, harvested in a child process). The queries are
picked from the corpus by document frequency, from words in one question to words in most.
`--dsn` names a server (a database on it is created and dropped for each schema); without it an
embedded PostgreSQL is started in a temp dir and removed after.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import re
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from bench._pg import database  # noqa: E402
from bench.seed_schema import SEED_DDL, SEED_QUERY, seed_ddl  # noqa: E402

USER_ID = uuid.UUID("5eed0000-0000-4000-8000-000000000001")
BOOK_ID = uuid.UUID("5eed0000-0000-4000-8000-000000000002")
LIMIT = 20

# -- the seed document's SQL, verbatim (§2.1 lines 75-148, §3.2 lines 246-268) --





SEED_DOC = ROOT.parent / "shared" / "seed" / "000_8bcb5f4eb90dbcb9.txt"

# -- the corpus --

EXCLUDED = {"antigravity", "this", "idlelib", "tkinter", "turtle", "turtledemo", "test",
            "tests", "ensurepip", "pydoc_data", "lib2to3", "distutils", "xxlimited",
            "xxsubtype", "xxlimited_35"}
SENTENCE = re.compile(r"(?<=[.!?])\s+(?=[A-Z])")
TEMPLATES = ("What does {} do?", "How do I use {}?", "Explain {}.", "When should I call {}?",
             "What is {} for?", "Give an example of {}.", "What does {} return?",
             "Which arguments does {} take?")
CATEGORIES = ("stdlib", "python", "library", "api")
WORD = re.compile(r"[a-z]+")


def harvest(out: Path) -> None:
    """Child process: docstrings of importable stdlib modules -> JSON [[name, doc], ...]."""
    import contextlib
    import importlib
    import inspect
    import io
    import pkgutil
    import warnings

    warnings.simplefilter("ignore")
    found: dict[str, str] = {}

    def visit(name: str) -> None:
        parts = name.split(".")
        if any(p in EXCLUDED or p.startswith("_") for p in parts):
            return
        try:
            with contextlib.redirect_stdout(io.StringIO()), \
                    contextlib.redirect_stderr(io.StringIO()):
                module = importlib.import_module(name)
        except BaseException:  # any failure to import just skips the module
            return
        doc = inspect.getdoc(module)
        if doc:
            found.setdefault(name, doc)
        for attr, member in inspect.getmembers(module):
            if attr.startswith("_") or getattr(member, "__module__", name) != name:
                continue
            if inspect.isclass(member) or inspect.isroutine(member):
                mdoc = inspect.getdoc(member)
                if mdoc:
                    found.setdefault(f"{name}.{attr}", mdoc)
                if inspect.isclass(member):
                    for mname, meth in vars(member).items():
                        if not mname.startswith("_") and inspect.isroutine(meth):
                            d = inspect.getdoc(meth)
                            if d:
                                found.setdefault(f"{name}.{attr}.{mname}", d)
        path = getattr(module, "__path__", None)
        if path and len(parts) < 3:
            for sub in pkgutil.iter_modules(path):
                visit(f"{name}.{sub.name}")

    for name in sorted(sys.stdlib_module_names):
        visit(name)
    out.write_text(json.dumps(sorted(found.items())))


def corpus(rows: int, seed: int = 42) -> list[tuple[str, str]]:
    """`rows` (question, answer) pairs of real docstring text, deterministic for a Python."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "docs.json"
        subprocess.run([sys.executable, __file__, "--harvest", str(out)], check=True,
                       timeout=600, stdin=subprocess.DEVNULL)
        docs: list[tuple[str, str]] = [tuple(x) for x in json.loads(out.read_text())]
    sentences: list[str] = []
    answers: list[tuple[str, str]] = []
    for name, doc in docs:
        paragraph = " ".join(doc.split("\n\n")[0].split())
        if 20 <= len(paragraph) <= 600:
            answers.append((name, paragraph))
        for para in doc.split("\n\n"):
            for s in SENTENCE.split(" ".join(para.split())):
                if 25 <= len(s) <= 250 and s[0].isalpha():
                    sentences.append(s)
    rng = random.Random(seed)
    out_rows = []
    for i in range(rows):
        name, paragraph = answers[i % len(answers)] if i < len(answers) else rng.choice(answers)
        question = rng.choice(TEMPLATES).format(name)
        answer = paragraph if i < len(answers) else f"{paragraph} {rng.choice(sentences)}"
        out_rows.append((question, answer))
    rng.shuffle(out_rows)
    return out_rows


def pick_queries(rows: list[tuple[str, str]], seed: int = 7) -> list[tuple[str, str]]:
    """(label, query) from specific to common, by document frequency in the corpus."""
    df: Counter[str] = Counter()
    docs = []
    for q, a in rows:
        words = set(WORD.findall(f"{q} {a}".lower()))
        docs.append(words)
        df.update(words)
    rng = random.Random(seed)

    def band(lo: int, hi: int, n: int, min_len: int = 5) -> list[str]:
        pool = sorted(w for w, c in df.items() if lo <= c <= hi and len(w) >= min_len)
        return rng.sample(pool, n)

    n = len(rows)
    rare = band(1, 3, 2, 8)
    medium = band(n // 1000, n // 200, 2)
    common = band(n // 50, n // 10, 2)
    very_common = df.most_common(1)[0][0]
    anchor = rare[0]
    pair_doc = next(d for d in docs if anchor in d)
    partner = max((w for w in pair_doc if w != anchor and len(w) >= 4), key=lambda w: df[w])
    commons = [w for w, c in df.most_common(60) if len(w) >= 5][:12]
    common_pair = next(f"{a} {b}" for i, a in enumerate(commons) for b in commons[i + 1:]
                       if sum(1 for d in docs[:5000] if a in d and b in d) > 50)
    typo_src = medium[0]
    typo = typo_src[:2] + typo_src[3] + typo_src[2] + typo_src[4:]
    return [
        ("rare word", rare[0]), ("rare word", rare[1]),
        ("rare + common", f"{anchor} {partner}"),
        ("dotted name", "json.dumps"),
        ("medium word", medium[0]), ("medium word", medium[1]),
        ("misspelled", typo), ("misspelled", "jsno encodr"),
        ("common word", common[0]), ("common word", common[1]),
        ("two common", common_pair),
        ("most common", very_common),
    ]


# -- loading --

@asynccontextmanager
async def server(dsn: str | None) -> AsyncIterator[str]:
    if dsn:
        yield dsn
        return
    import shutil

    from proxy.embedded import start_embedded

    parent = Path(tempfile.mkdtemp(prefix="bench-search-"))
    handle = start_embedded(parent / "data", cleanup="delete")
    try:
        yield str(handle.get_uri())
    finally:
        handle.cleanup()
        shutil.rmtree(parent, ignore_errors=True)


def _records(rows: list[tuple[str, str]]) -> list[tuple[Any, ...]]:
    start = datetime(2024, 1, 1, tzinfo=UTC)
    rng = random.Random(1)
    return [
        (uuid.UUID(int=rng.getrandbits(128), version=4), BOOK_ID, "en",
         CATEGORIES[i % len(CATEGORIES)], ("easy", "medium", "hard")[i % 3], q, a,
         start + timedelta(seconds=i), start + timedelta(seconds=i))
        for i, (q, a) in enumerate(rows)
    ]


COPY_COLUMNS = ["id", "study_book_id", "language", "category", "difficulty", "question",
                "answer", "created_at", "updated_at"]


async def load_ours(dsn: str, records: list[tuple[Any, ...]]) -> float:
    import asyncpg

    from proxy import PostgresStore
    from proxy.stores.postgres_schema import SEARCH_INDEXES

    started = time.perf_counter()
    store = PostgresStore(dsn)
    await store.init_schema()
    await store.create_user(id=USER_ID, name="Bench", email="bench@example.com")
    await store.create_study_book(id=BOOK_ID, user_id=USER_ID, title="Standard library")
    await store.close()
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute("DROP INDEX idx_questions_search_vector")
        await conn.copy_records_to_table("questions", records=records, columns=COPY_COLUMNS)
        await conn.execute("SET maintenance_work_mem = '256MB'")
        await conn.execute(SEARCH_INDEXES)
        await conn.execute("VACUUM ANALYZE")
    finally:
        await conn.close()
    return time.perf_counter() - started


async def load_seed(dsn: str, records: list[tuple[Any, ...]]) -> float:
    import asyncpg

    started = time.perf_counter()
    ddl = seed_ddl()
    statements = [s.strip() for s in ddl.split(";") if s.strip()]
    indexes = [s for s in statements if s.startswith("CREATE INDEX")]
    tables = [s for s in statements if s not in indexes]
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute("CREATE EXTENSION IF NOT EXISTS pg_trgm")
        await conn.execute("CREATE EXTENSION IF NOT EXISTS unaccent")
        for s in tables:
            await conn.execute(s)
        await conn.execute(
            "INSERT INTO users (id, name, email) VALUES ($1, 'Bench', 'bench@example.com')",
            USER_ID)
        await conn.execute(
            "INSERT INTO study_books (id, user_id, title) VALUES ($1, $2, 'Standard library')",
            BOOK_ID, USER_ID)
        await conn.copy_records_to_table("questions", records=records, columns=COPY_COLUMNS)
        await conn.execute("SET maintenance_work_mem = '256MB'")
        for s in indexes:  # the seed's own indexes, built after the load (same result)
            await conn.execute(s)
        await conn.execute("VACUUM ANALYZE")
    finally:
        await conn.close()
    return time.perf_counter() - started


def load_sqlite(path: Path, records: list[tuple[Any, ...]]) -> float:
    from proxy.codec import iso
    from proxy.stores.migrations import upgrade_sqlite

    started = time.perf_counter()
    upgrade_sqlite(path)
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("BEGIN")
    ts = iso(datetime(2024, 1, 1, tzinfo=UTC))
    conn.execute("INSERT INTO users (id, name, email, created_at, updated_at) "
                 "VALUES (?, 'Bench', 'bench@example.com', ?, ?)", (str(USER_ID), ts, ts))
    conn.execute("INSERT INTO study_books (id, user_id, title, created_at, updated_at) "
                 "VALUES (?, ?, 'Standard library', ?, ?)", (str(BOOK_ID), str(USER_ID), ts, ts))
    conn.executemany(  # the store's triggers keep the FTS5 index, as for any insert
        f"INSERT INTO questions ({', '.join(COPY_COLUMNS)}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
        [(str(r[0]), str(r[1]), *r[2:7], iso(r[7]), iso(r[8])) for r in records])
    conn.execute("COMMIT")
    conn.execute("ANALYZE")
    conn.close()
    return time.perf_counter() - started


# -- measuring --

def pct(values: list[float], p: float) -> float:
    ordered = sorted(values)
    k = (len(ordered) - 1) * p
    lo, hi = int(k), min(int(k) + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (k - lo)


async def timed(fn: Callable[[], Awaitable[int]]) -> tuple[float, int]:
    started = time.perf_counter()
    try:
        n = await fn()
    finally:
        elapsed = (time.perf_counter() - started) * 1000
    return elapsed, n


async def run(args: argparse.Namespace) -> None:
    import asyncpg

    from proxy import PostgresStore, SQLiteStore

    t0 = time.perf_counter()
    rows = corpus(args.rows)
    queries = pick_queries(rows)
    records = _records(rows)
    print(f"corpus: {len(rows)} questions from stdlib docstrings "
          f"({time.perf_counter() - t0:.1f} s)", flush=True)
    verbatim = "n/a (seed document not found)"
    if SEED_DOC.exists():
        text = SEED_DOC.read_text()
        verbatim = "yes" if SEED_QUERY.strip() in text and all(
            line.strip() in text for line in SEED_DDL.splitlines() if line.strip()) else "NO"
    print(f"seed DDL and query verbatim from the seed document: {verbatim}")

    async with server(args.dsn) as server_dsn, \
            database(server_dsn, "bench_search_ours") as ours_dsn, \
            database(server_dsn, "bench_search_seed") as seed_dsn:
        with tempfile.TemporaryDirectory() as tmp:
            sqlite_path = Path(tmp) / "app.db"
            print(f"load ours   {await load_ours(ours_dsn, records):6.1f} s", flush=True)
            print(f"load seed   {await load_seed(seed_dsn, records):6.1f} s", flush=True)
            print(f"load sqlite {load_sqlite(sqlite_path, records):6.1f} s", flush=True)

            ours = PostgresStore(ours_dsn, min_size=1, max_size=1)
            lite = SQLiteStore(sqlite_path, readers=1)
            seed = await asyncpg.connect(seed_dsn)
            conn = await asyncpg.connect(ours_dsn)
            version = await conn.fetchval("SHOW server_version")
            await conn.close()

            async def q_ours(q: str) -> int:
                return len(await ours.search_questions(q, user_id=USER_ID, limit=LIMIT))

            async def q_seed(q: str) -> int:
                return len(await seed.fetch(SEED_QUERY, q, str(USER_ID), LIMIT))

            async def q_lite(q: str) -> int:
                return len(await lite.search_questions(q, user_id=USER_ID, limit=LIMIT))

            systems = {"ours": q_ours, "seed": q_seed, "sqlite": q_lite}
            samples: dict[str, list[float]] = {s: [] for s in systems}
            per_query: list[tuple[str, str, dict[str, tuple[float, int]]]] = []
            for label, q in queries:
                row: dict[str, tuple[float, int]] = {}
                for name, fn in systems.items():
                    await fn(q)  # warm: caches, prepared statements
                    times, hits = [], 0
                    for _ in range(args.repeat):
                        ms, hits = await timed(lambda fn=fn, q=q: fn(q))  # type: ignore[misc]
                        times.append(ms)
                    samples[name] += times
                    row[name] = (statistics.median(times), hits)
                per_query.append((label, q, row))
                print(".", end="", flush=True)
            print()
            await ours.close()
            await lite.close()
            await seed.close()

    print(f"\nPostgreSQL {version}, {args.rows} questions owned by one user, limit {LIMIT}, "
          f"{len(queries)} queries x {args.repeat} runs each (after one warm-up run)\n")
    print(f"{'query':<34} {'kind':<14} {'ours ms':>8} {'hits':>4} {'seed ms':>8} {'hits':>4} "
          f"{'sqlite ms':>9} {'hits':>4}")
    for label, q, r in per_query:
        print(f"{q[:34]:<34} {label:<14} {r['ours'][0]:8.2f} {r['ours'][1]:4d} "
              f"{r['seed'][0]:8.2f} {r['seed'][1]:4d} {r['sqlite'][0]:9.2f} {r['sqlite'][1]:4d}")
    print(f"\n{'system':<36} {'p50 ms':>8} {'p95 ms':>8}")
    names = {"ours": "ours (PostgresStore.search)", "seed": "seed document's hybrid query",
             "sqlite": "SQLiteStore.search (FTS5)"}
    for name, label in names.items():
        print(f"{label:<36} {pct(samples[name], 0.5):8.2f} {pct(samples[name], 0.95):8.2f}")
    p50 = {n: pct(v, 0.5) for n, v in samples.items()}
    p95 = {n: pct(v, 0.95) for n, v in samples.items()}
    print(f"\nseed p50 / ours p50 = {p50['seed'] / p50['ours']:.1f}x   (target >= 20x)")
    print(f"seed p95 / ours p95 = {p95['seed'] / p95['ours']:.1f}x")
    print(f"ours p50 / sqlite p50 = {p50['ours'] / p50['sqlite']:.1f}x")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--repeat", type=int, default=5, help="timed runs per query and system")
    parser.add_argument("--dsn", help="a PostgreSQL server to use (default: embedded)")
    parser.add_argument("--harvest", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.harvest:
        harvest(args.harvest)
        return
    asyncio.run(run(args))


if __name__ == "__main__":
    main()
