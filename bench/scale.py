"""Cost as the data grows: backfill, verify and search on legacy databases of 300k, 3M and 10M rows,
beside pgloader and the lower bound, in the same run.

    .venv/bin/python bench/scale.py [--sizes 300k,3M,10M] [--server embedded|pg15] [--runs 1]
        [--corpus sentences|parity] [--steps backfill,verify,search,lower,keyed,pgloader]
        [--data DIR] [--maintenance-workers N] [--jobs N] [--cpus N] [--json OUT]
        [--cutover PATH]

- the files: `bench/legacy_db.py`'s mix (a third each of questions, typing logs and learning
  events; 1,000 users with a study book each), deterministic (seed 1), generated on first use and
  kept under `--data` (default $TMPDIR/cutover-scale), never checked in;
- backfill: `cutover backfill --from FILE` in a child process into an empty database; wall time
  and the child's peak resident memory (wait4's ru_maxrss, from a trampoline process so the
  child's memory is its own); and, for it and the lower bound, the core-seconds the machine's
  CPUs were idle meanwhile: where the loads leave a core waiting;
- verify: `cutover verify --sample-queries 0` on that database against an upgraded copy of the
  file (as bench/backfill.py), time and peak memory;
- search: `PostgresStore.search_questions` on that database, one client, over a query mix drawn
  from the file (a word, two words in order, a question's opening words, a misspelled word, stop
  words around a word; each for the user owning the question it came from), once to warm up,
  then timed: p50 and p95 (each run; with several, their medians);
- lower bound: the same rows (dumped from our database, not timed) loaded by plain binary COPY
  into the same schema stripped of its indexes, constraints and triggers, five tables at once
  (the three big ones in two streams each, as the backfill loads them),
  then the same primary keys, indexes, foreign keys, vocabulary (the backfill's own recount,
  beside the index builds) and statistics built: the same end state by the shortest route;
- keyed: the lower bound with the primary keys kept during the COPY (the rows in the order the
  backfill loaded them, random in id): the floor for any loader that takes live writes while it
  loads, since those need the key (`ON CONFLICT (id)`);
- pgloader: as bench/backfill.py (`data only, drop indexes`, the seed's schema), with a 4 GB
  heap (`--dynamic-space-size 4096`): with its default 1 GB it dies at 3M rows ("Heap exhausted,
  game over"). A run that exits non-zero or loads fewer rows is shown as failed, not compared.

`--server pg15` starts a throwaway cluster of Debian's PostgreSQL 15 (`pg_config --bindir`) under
a temp dir on 127.0.0.1 and removes it after; `embedded` the embedded PostgreSQL 18 likewise.
`--maintenance-workers N` sets max_parallel_maintenance_workers (and max_parallel_workers) on
that server for every loader alike. `--jobs N` is the backfill's `--jobs` (parts of each big
table loaded side by side, and of the vocabulary's count; the lower bound counts in as many
parts). `--cpus N` runs the server, the backfill and pgloader on the first N CPUs only
(sched_setaffinity): how the same work scales with the cores it is given. Each run also records
the load average, since the machine may be shared. With `--runs` > 1 the medians are reported,
and backfill's max/min.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import re
import shutil
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import asyncpg

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from bench._pg import database  # noqa: E402
from bench.backfill import (  # noqa: E402
    PGLOADER_COMMAND,
    Run,
    count_rows,
    idle_cpu,
    measure,
    pgloader_target,
    require_tools,
    server_cpu,
)
from bench.corpus import misspell  # noqa: E402
from bench.seed_schema import seed_ddl  # noqa: E402
from proxy.migrate.backfill import DEFAULT_JOBS  # noqa: E402
from proxy.migrate.vocabulary import rebuild_vocabulary  # noqa: E402
from proxy.models import BY_TABLE  # noqa: E402
from proxy.stores import postgres_schema  # noqa: E402

DEFAULT_SIZES = "300k,3M,10M"
TABLES = ("users", "study_books", "questions", "typing_logs", "learning_events")
USERS = 1000
QUERIES = 300
TARGETS = {
    "per-row time, largest vs 300k": 1.2, "peak memory, largest vs 300k": 1.2,
    "backfill vs lower bound": 1.2, "pgloader time vs backfill": 1.2,
    "verify vs pgloader load": 0.5, "search p95 ms at 10M": 50.0,
}


# -- the files --------------------------------------------------------------------------------


def rows_of(size: str) -> int:
    """'300k' -> 300000, '3M' -> 3000000 (any number with k or M)."""
    m = re.fullmatch(r"(\d+(?:\.\d+)?)([kM]?)", size)
    if not m:
        raise ValueError(size)
    return int(float(m.group(1)) * {"": 1, "k": 1000, "M": 1_000_000}[m.group(2)])


def legacy_file(data: Path, size: str, corpus: str) -> Path:
    """The legacy app.db of `size` rows (generated once, then reused)."""
    path = data / f"legacy-{corpus}-{size}.db"
    if not path.exists():
        from bench.legacy_db import generate

        third = rows_of(size) // 3
        print(f"generating {path} ...", file=sys.stderr, flush=True)
        tmp = path.with_suffix(".tmp")
        generate(tmp, questions=third, typing_logs=third, events=third, users=USERS,
                 books=USERS, seed=1, dirty=0.0, corpus=corpus)
        tmp.replace(path)
    return path


async def app_copy(data: Path, legacy: Path) -> Path:
    """The file as the live SQLite store holds it (upgraded by `cutover schema init`), for
    verify to compare with."""
    path = legacy.with_name(legacy.stem + "-app.db")
    if not path.exists():
        from proxy.stores.sqlite import SQLiteStore

        tmp = path.with_name(path.name + ".tmp")
        shutil.copyfile(legacy, tmp)
        store = SQLiteStore(tmp)
        await store.init_schema()
        await store.close()
        tmp.replace(path)
    return path


def warm(path: Path) -> None:
    """Read the file into the page cache, for every loader alike."""
    with path.open("rb") as f:
        while f.read(1 << 22):
            pass


# -- the server -------------------------------------------------------------------------------


@dataclass
class Server:
    dsn: str
    pid: int


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def pg15(work: Path) -> Iterator[Server]:
    """A throwaway cluster of Debian's PostgreSQL 15 on 127.0.0.1 (trust auth, loopback only)."""
    bindir = Path(subprocess.run(["pg_config", "--bindir"], capture_output=True, text=True,
                                 check=True).stdout.strip())
    data = work / "pg15"
    data.mkdir(parents=True)
    user = "embedded_postgres" if os.geteuid() == 0 else None  # initdb refuses root
    if user:
        shutil.chown(work, user)
        shutil.chown(data, user)
    port = _free_port()
    log = work / "pg15.log"
    with log.open("w") as out:
        subprocess.run([str(bindir / "initdb"), "-D", str(data), "-U", "postgres",
                        "--auth=trust", "-E", "UTF8", "--locale=C.UTF-8"], user=user,
                       stdout=out, stderr=subprocess.STDOUT, check=True)
    if user:
        shutil.chown(log, user)
    subprocess.run([str(bindir / "pg_ctl"), "-D", str(data), "-l", str(log), "-w", "-o",
                    f"-c listen_addresses=127.0.0.1 -c port={port} -k {data}", "start"],
                   user=user, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=True)
    try:
        pid = int((data / "postmaster.pid").read_text().split()[0])
        yield Server(f"postgresql://postgres@127.0.0.1:{port}/postgres", pid)
    finally:
        subprocess.run([str(bindir / "pg_ctl"), "-D", str(data), "-m", "fast", "stop"],
                       user=user, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        shutil.rmtree(data, ignore_errors=True)


@contextlib.contextmanager
def embedded(work: Path) -> Iterator[Server]:
    from proxy.embedded import start_embedded

    handle = start_embedded(work / "pg", cleanup="delete")
    try:
        yield Server(str(handle.get_uri()),
                     int((work / "pg" / "postmaster.pid").read_text().split()[0]))
    finally:
        handle.cleanup()


def pin(postmaster: int, cpus: set[int]) -> None:
    """This process (so every child it starts) and the server (its postmaster, whose new
    backends inherit the mask, and the processes it runs already) on `cpus` only."""
    os.sched_setaffinity(0, cpus)
    children = Path(f"/proc/{postmaster}/task/{postmaster}/children").read_text().split()
    for pid in (postmaster, *map(int, children)):
        with contextlib.suppress(ProcessLookupError):
            os.sched_setaffinity(pid, cpus)


async def set_workers(dsn: str, workers: int) -> None:
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute(f"ALTER SYSTEM SET max_parallel_maintenance_workers = {workers}")
        await conn.execute(f"ALTER SYSTEM SET max_parallel_workers = {max(workers, 8)}")
        await conn.execute("SELECT pg_reload_conf()")
    finally:
        await conn.close()


# -- the lower bound --------------------------------------------------------------------------


HALF = "80000000-0000-0000-0000-000000000000"
SPLIT = {"questions", "typing_logs", "learning_events"}  # two streams each, as the backfill


async def dump_rows(source_dsn: str, work: Path) -> dict[tuple[str, int], Path]:
    """Our loaded rows as binary COPY files (the seed's columns; the big tables in two id
    ranges, as the backfill loads them), not timed."""
    conn = await asyncpg.connect(source_dsn)
    files = {}
    try:
        for table in TABLES:
            cols = ", ".join(BY_TABLE[table].column_names)
            ranges = ([f"id < '{HALF}'", f"id >= '{HALF}'"] if table in SPLIT else ["true"])
            for i, where in enumerate(ranges):
                files[(table, i)] = work / f"{table}-{i}.copy"
                await conn.copy_from_query(f"SELECT {cols} FROM {table} WHERE {where}",
                                           output=files[(table, i)], format="binary")
    finally:
        await conn.close()
    return files


def _add(constraint: asyncpg.Record) -> str:
    r = constraint
    return f"ALTER TABLE {r['t']} ADD CONSTRAINT {r['conname']} {r['def']}"


async def lower_bound(server_dsn: str, files: dict[tuple[str, int], Path], jobs: int,
                      *, keys_kept: bool = False) -> float:
    """Seconds to the same end state by plain COPY into bare tables, then building it all.

    `keys_kept`: the primary keys stay during the COPY (the rows arrive in the backfill's order,
    random in id): the floor for any loader that takes live writes meanwhile, since those need
    the key (`ON CONFLICT (id)`)."""
    kept = "p" if keys_kept else ""
    async with database(server_dsn, "bench_lower") as dsn:
        conn = await asyncpg.connect(dsn)
        try:
            await conn.execute(postgres_schema.DDL + postgres_schema.SEARCH_INDEXES)
            names = list(TABLES)
            cons = await conn.fetch(
                "SELECT conrelid::regclass::text AS t, conname, contype::text AS contype, "
                "pg_get_constraintdef(oid) AS def FROM pg_constraint "
                "WHERE conrelid::regclass::text = ANY($1) AND contype IN ('p', 'u', 'f')", names)
            owned = {r["conname"] for r in cons}
            cons = [r for r in cons if r["contype"] not in kept]
            indexes = [r["indexdef"] for r in await conn.fetch(
                "SELECT indexname, indexdef FROM pg_indexes "
                "WHERE schemaname = 'public' AND tablename = ANY($1)", names)
                if r["indexname"] not in owned]
            for kind in ("f", "u", "p"):
                for r in (r for r in cons if r["contype"] == kind):
                    await conn.execute(f"ALTER TABLE {r['t']} DROP CONSTRAINT {r['conname']}")
            for r in await conn.fetch(
                    "SELECT indexname FROM pg_indexes WHERE schemaname = 'public' "
                    "AND tablename = ANY($1)", names):
                if r["indexname"] not in owned:  # the kept keys' own
                    await conn.execute(f"DROP INDEX {r['indexname']}")
            await conn.execute("ALTER TABLE questions DISABLE TRIGGER USER")
        finally:
            await conn.close()
        pool = await asyncpg.create_pool(dsn, min_size=8, max_size=8, server_settings={
            "maintenance_work_mem": "256MB", "synchronous_commit": "off"})
        assert pool is not None

        async def run(sql: str) -> None:
            async with pool.acquire() as c:
                await c.execute(sql)

        async def copy(table: str, part: int) -> None:
            async with pool.acquire() as c:
                await c.copy_to_table(table, source=files[(table, part)], format="binary",
                                      columns=list(BY_TABLE[table].column_names))

        try:
            started = time.perf_counter()
            await asyncio.gather(*(copy(t, i) for t, i in files))
            adds = {kind: [_add(r) for r in cons if r["contype"] in kind] for kind in ("pu", "f")}
            first = [a for a in adds["pu"] if a.startswith("ALTER TABLE questions ")]
            # questions' key first (it locks out the recount's readers), then the other keys and
            # indexes beside the vocabulary's count (the backfill's own, in its parts), then the
            # foreign keys that need the keys
            await asyncio.gather(*(run(s) for s in first))
            await asyncio.gather(rebuild_vocabulary(pool, jobs), *(
                run(s) for s in [*adds["pu"], *indexes] if s not in first))
            await asyncio.gather(*(run(s) for s in adds["f"]))
            await run("; ".join(f"ALTER TABLE questions ENABLE ALWAYS TRIGGER cutover_words_{op}"
                                for op in ("inserted", "updated", "deleted")))
            await asyncio.gather(*(run(f"ANALYZE {t}") for t in (*TABLES, "cutover_search_words")))
            return time.perf_counter() - started
        finally:
            await pool.close()


# -- search -----------------------------------------------------------------------------------

_WORD = re.compile(r"[A-Za-z]{4,}")
MIX_CLASSES = ("word", "two words", "opening words", "misspelled", "stop words")


def query_mix(legacy: Path, n: int = QUERIES, seed: int = 3) -> list[tuple[str, uuid.UUID]]:
    """(query, user id) pairs drawn from the file's own questions, deterministic."""
    rng = random.Random(seed)
    conn = sqlite3.connect(f"{legacy.resolve().as_uri()}?mode=ro", uri=True)
    try:
        total = conn.execute("SELECT max(rowid) FROM questions").fetchone()[0]
        picks = sorted(rng.sample(range(1, total + 1), n))
        rows = [conn.execute("SELECT q.question, q.answer, b.user_id FROM questions q JOIN "
                             "study_books b ON b.id = q.study_book_id WHERE q.rowid = ?",
                             (i,)).fetchone() for i in picks]
    finally:
        conn.close()
    out = []
    for i, (question, answer, user) in enumerate(r for r in rows if r):
        words = _WORD.findall(answer) or _WORD.findall(question) or ["python"]
        kind = i % len(MIX_CLASSES)
        if kind == 0:
            text = rng.choice(words)
        elif kind == 1:
            k = rng.randrange(len(words))
            text = " ".join(words[k:k + 2])
        elif kind == 2:
            text = " ".join(question.split()[:4])
        elif kind == 3:
            text = misspell(max(words, key=len), rng)
        else:
            text = f"what is the {rng.choice(words)} of"
        out.append((text, uuid.UUID(user)))
    return out


async def search_latency(dsn: str, mix: list[tuple[str, uuid.UUID]]) -> tuple[float, float]:
    """p50 and p95 in ms of the hybrid search over `mix` (after one pass to warm up)."""
    from proxy.stores.postgres import PostgresStore

    store = PostgresStore(dsn)
    try:
        for text, user in mix:
            await store.search_questions(text, user_id=user, limit=20)
        times = []
        for text, user in mix:
            t0 = time.perf_counter()
            await store.search_questions(text, user_id=user, limit=20)
            times.append((time.perf_counter() - t0) * 1000)
    finally:
        await store.close()
    q = statistics.quantiles(times, n=100)
    # per query class (the mix deals them round-robin): which kind of query makes the tail
    by_class = {name: statistics.median(sorted(times[k::len(MIX_CLASSES)])[-3:])
                for k, name in enumerate(MIX_CLASSES)}
    print("  search, median of each class's three slowest (ms): "
          + ", ".join(f"{k} {v:.1f}" for k, v in by_class.items()), file=sys.stderr)
    return statistics.median(times), q[94]


# -- one size ---------------------------------------------------------------------------------


@dataclass
class SizeResult:
    size: str
    rows: int
    backfill: list[Run] = field(default_factory=list)
    verify: list[Run] = field(default_factory=list)
    pgloader: list[Run] = field(default_factory=list)
    pgloader_failed: list[Run] = field(default_factory=list)
    lower: list[float] = field(default_factory=list)
    lower_cpu: list[float | None] = field(default_factory=list)  # the server's, during it
    keyed: list[float] = field(default_factory=list)  # the lower bound, keys kept in the COPY
    keyed_cpu: list[float | None] = field(default_factory=list)
    lower_idle: list[float] = field(default_factory=list)  # core-seconds the machine left idle
    keyed_idle: list[float] = field(default_factory=list)
    search: list[tuple[float, float]] = field(default_factory=list)
    load: list[tuple[float, float]] = field(default_factory=list)  # load average before, after
    timings: list[dict[str, float]] = field(default_factory=list)  # the backfill's own


async def run_size(size: str, args: argparse.Namespace, server: Server, work: Path,
                   cutover: str, pgloader: str | None) -> SizeResult:
    legacy = legacy_file(args.data, size, args.corpus)
    app_db = await app_copy(args.data, legacy) if "verify" in args.steps else legacy
    conn = sqlite3.connect(legacy)
    rows = sum(conn.execute(f"SELECT count(*) FROM {t}").fetchone()[0] for t in TABLES)
    conn.close()
    warm(legacy)
    mix = query_mix(legacy) if "search" in args.steps else []
    result = SizeResult(size, rows)
    for i in range(args.runs):
        before = os.getloadavg()[0]
        order = ["ours", "pgloader"] if i % 2 == 0 else ["pgloader", "ours"]
        for which in order:
            if which == "pgloader" and "pgloader" in args.steps and pgloader:
                async with database(server.dsn, "bench_pgloader", ddl=(
                        "CREATE EXTENSION IF NOT EXISTS pg_trgm;\n" + seed_ddl())) as dsn:
                    command = work / "load.load"
                    command.write_text(PGLOADER_COMMAND.format(source=legacy.resolve(),
                                                               target=pgloader_target(dsn)))
                    run = measure("pgloader", [pgloader, "--dynamic-space-size", "4096",
                                               str(command)], dict(os.environ),
                                  work / f"pgloader-{size}-{i}.log", server_pid=server.pid)
                    rows = (await count_rows(dsn))[0]
                    run = Run(**{**asdict(run), "rows": rows})
                    if run.exit_code == 0 and rows == result.rows:
                        result.pgloader.append(run)
                    else:
                        result.pgloader_failed.append(run)
                    _say(size, i, "pgloader", run.seconds, run.max_rss_mb,
                         f"exit {run.exit_code}, {rows} of {result.rows} rows")
            elif which == "ours" and "backfill" in args.steps:  # verify, search, lower need it
                await ours(size, i, args, server, work, cutover, legacy, app_db, mix, result)
        result.load.append((before, os.getloadavg()[0]))
    return result


async def ours(size: str, i: int, args: argparse.Namespace, server: Server, work: Path,
               cutover: str, legacy: Path, app_db: Path, mix: list[tuple[str, uuid.UUID]],
               result: SizeResult) -> None:
    async with database(server.dsn, "bench_ours") as dsn:
        env = {**os.environ, "POSTGRES_DSN": dsn, "SQLITE_PATH": str(app_db)}
        log = work / f"backfill-{size}-{i}.log"
        run = measure("backfill", [cutover, "backfill", "--from", str(legacy), "--rejects",
                                   str(work / "rejects.jsonl"), "--quiet", "--json",
                                   "--jobs", str(args.jobs)],
                      env, log, server_pid=server.pid)
        result.backfill.append(Run(**{**asdict(run), "rows": (await count_rows(dsn))[0]}))
        with contextlib.suppress(ValueError, KeyError):
            text = log.read_text()
            result.timings.append(json.loads(text[text.index("{"):])["timings"])
        _say(size, i, "backfill", run.seconds, run.max_rss_mb)
        if "verify" in args.steps:
            run = measure("verify", [cutover, "verify", "--json", "--sample-queries", "0"],
                          env, work / f"verify-{size}-{i}.log", server_pid=server.pid)
            result.verify.append(run)
            _say(size, i, "verify", run.seconds, run.max_rss_mb, f"exit {run.exit_code}")
        if "search" in args.steps:
            result.search.append(await search_latency(dsn, mix))
            _say(size, i, "search p50/p95 ms", *result.search[-1])
        if args.steps & {"lower", "keyed"}:
            files = await dump_rows(dsn, work)
            for step, seconds, cpu, idle in (
                    ("lower", result.lower, result.lower_cpu, result.lower_idle),
                    ("keyed", result.keyed, result.keyed_cpu, result.keyed_idle)):
                if step not in args.steps:
                    continue
                before_cpu, before_idle = server_cpu(server.pid), idle_cpu()
                seconds.append(await lower_bound(server.dsn, files, args.jobs,
                                                 keys_kept=step == "keyed"))
                after_cpu = server_cpu(server.pid)
                idle.append(idle_cpu() - before_idle)
                cpu.append(None if before_cpu is None or after_cpu is None
                           else after_cpu - before_cpu)
                _say(size, i, "lower bound" if step == "lower" else "lower bound, keys kept",
                     seconds[-1], "server CPU", cpu[-1])
            for f in files.values():
                f.unlink()


def _say(size: str, i: int, what: str, *figures: Any) -> None:
    shown = " ".join(f"{f:.2f}" if isinstance(f, float) else str(f) for f in figures)
    print(f"[{time.strftime('%H:%M:%S')}] {size} run {i + 1}: {what} {shown}", file=sys.stderr,
          flush=True)


# -- the report -------------------------------------------------------------------------------


def _med(values: list[float]) -> float | None:
    return statistics.median(values) if values else None


def _spread(values: list[float | None]) -> float | None:
    known = [v for v in values if v]
    return max(known) / min(known) if len(known) > 1 else None


def report(results: list[SizeResult], args: argparse.Namespace) -> dict[str, Any]:
    print(f"\nserver {args.server}, corpus {args.corpus}, {args.runs} run(s) per size "
          "(medians), maintenance workers "
          f"{args.maintenance_workers if args.maintenance_workers is not None else 'default'}, "
          f"jobs {args.jobs}, CPUs {args.cpus or os.cpu_count()}")
    head = (f"{'size':>5} {'rows':>9} {'backfill s':>10} {'max/min':>7} {'us/row':>7} "
            f"{'peak MB':>8} {'verify s':>8} {'MB':>6} {'pgloader s':>10} {'MB':>6} "
            f"{'lower s':>8} {'keyed s':>8} {'p50 ms':>7} {'p95 ms':>7} {'srv CPU s':>9} "
            f"{'max/min':>7} {'load avg':>9}")
    print(head)
    out: dict[str, Any] = {"sizes": {}}
    for r in results:
        b = _med([x.seconds for x in r.backfill])
        spread = _spread([x.seconds for x in r.backfill])
        fig = {
            "rows": r.rows, "backfill_s": b, "backfill_all_s": [x.seconds for x in r.backfill],
            "backfill_max_over_min": spread,
            "us_per_row": b / r.rows * 1e6 if b else None,
            "peak_mb": _med([x.max_rss_mb for x in r.backfill]),
            "verify_s": _med([x.seconds for x in r.verify]),
            "verify_mb": _med([x.max_rss_mb for x in r.verify]),
            "verify_exit": max((x.exit_code for x in r.verify), default=None),
            "pgloader_s": _med([x.seconds for x in r.pgloader]),
            "pgloader_mb": _med([x.max_rss_mb for x in r.pgloader]),
            "pgloader_rows": r.pgloader[-1].rows if r.pgloader else None,
            "lower_s": _med(r.lower),
            "lower_server_cpu_s": _med([c for c in r.lower_cpu if c is not None]),
            "keyed_s": _med(r.keyed),
            "keyed_server_cpu_s": _med([c for c in r.keyed_cpu if c is not None]),
            "search_p50_ms": _med([x[0] for x in r.search]),
            "search_p95_ms": _med([x[1] for x in r.search]),
            "search_p95_all_ms": [x[1] for x in r.search],
            "server_cpu_s": _med([x.server_cpu_s for x in r.backfill
                                  if x.server_cpu_s is not None]),
            "server_cpu_max_over_min": _spread([x.server_cpu_s for x in r.backfill]),
            "backfill_cpu_s": _med([x.cpu_s for x in r.backfill]),
            "backfill_idle_core_s": _med([x.idle_core_s for x in r.backfill
                                          if x.idle_core_s is not None]),
            "lower_idle_core_s": _med(r.lower_idle), "keyed_idle_core_s": _med(r.keyed_idle),
            "load_avg": r.load, "timings": r.timings,
            "runs": {"backfill": [asdict(x) for x in r.backfill],
                     "verify": [asdict(x) for x in r.verify],
                     "pgloader": [asdict(x) for x in r.pgloader],
                     "pgloader_failed": [asdict(x) for x in r.pgloader_failed],
                     "lower": r.lower, "keyed": r.keyed},
        }
        out["sizes"][r.size] = fig

        def f(key: str, fmt: str, width: int, fig: dict[str, Any] = fig) -> str:
            v = fig[key]
            return f"{v:{width}{fmt}}" if v is not None else f"{'-':>{width}}"

        print(f"{r.size:>5} {r.rows:9d} {f('backfill_s', '.2f', 10)} "
              f"{f('backfill_max_over_min', '.2f', 7)} {f('us_per_row', '.1f', 7)} "
              f"{f('peak_mb', '.0f', 8)} {f('verify_s', '.2f', 8)} {f('verify_mb', '.0f', 6)} "
              f"{f('pgloader_s', '.2f', 10)} {f('pgloader_mb', '.0f', 6)} "
              f"{f('lower_s', '.2f', 8)} {f('keyed_s', '.2f', 8)} "
              f"{f('search_p50_ms', '.1f', 7)} "
              f"{f('search_p95_ms', '.1f', 7)} {f('server_cpu_s', '.1f', 9)} "
              f"{f('server_cpu_max_over_min', '.2f', 7)} "
              f"{max(max(x) for x in r.load) if r.load else 0:9.1f}")
    print("\nidle core-seconds (the machine's CPUs unused during the step; medians): where the "
          "loads leave a core waiting")
    for size, fig in out["sizes"].items():
        print(f"{size:>5} " + "  ".join(
            f"{name} {fig[key]:.1f}" for name, key in (
                ("backfill", "backfill_idle_core_s"), ("lower bound", "lower_idle_core_s"),
                ("keys kept", "keyed_idle_core_s")) if fig[key] is not None))
    print()
    sizes = out["sizes"]
    first, last = (sizes[results[0].size], sizes[results[-1].size]) if results else ({}, {})
    ratios: dict[str, list[tuple[str, float]]] = {}
    if len(results) > 1 and first.get("us_per_row") and last.get("us_per_row"):
        ratios["per-row time, largest vs 300k"] = [
            (results[-1].size, last["us_per_row"] / first["us_per_row"])]
        ratios["peak memory, largest vs 300k"] = [
            (results[-1].size, last["peak_mb"] / first["peak_mb"])]
    for name, num, den in (("backfill vs lower bound", "backfill_s", "lower_s"),
                           ("pgloader time vs backfill", "pgloader_s", "backfill_s"),
                           ("verify vs pgloader load", "verify_s", "pgloader_s"),
                           ("lower bound, keys kept vs without", "keyed_s", "lower_s"),
                           ("backfill vs lower bound, keys kept", "backfill_s", "keyed_s")):
        ratios[name] = [(s, v[num] / v[den]) for s, v in sizes.items()
                        if v.get(num) and v.get(den)]
    if "10M" in sizes and sizes["10M"].get("search_p95_ms"):
        ratios["search p95 ms at 10M"] = [("10M", sizes["10M"]["search_p95_ms"])]
    for name, values in ratios.items():
        if not values:
            continue
        higher = name == "pgloader time vs backfill"
        target = TARGETS.get(name)
        for size, v in values:
            met = target is not None and (v >= target if higher else v <= target)
            verdict = ("" if target is None else f"  (target {'>=' if higher else '<='} "
                       f"{target}: {'met' if met else 'MISSED'})")
            print(f"{name:34} {size:>5} {v:7.2f}{verdict}")
    out["ratios"] = ratios
    return out


async def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default=DEFAULT_SIZES,
                        help="comma-separated row counts (300k, 3M, 10M: the first is the base)")
    parser.add_argument("--server", choices=("embedded", "pg15"), default="embedded")
    parser.add_argument("--runs", type=int, default=1)
    parser.add_argument("--corpus", choices=("sentences", "parity"), default="sentences")
    parser.add_argument("--steps", default="backfill,verify,search,lower,keyed,pgloader")
    parser.add_argument("--data", type=Path,
                        default=Path(tempfile.gettempdir()) / "cutover-scale")
    parser.add_argument("--maintenance-workers", type=int)
    parser.add_argument("--jobs", type=int, default=DEFAULT_JOBS,
                        help="the backfill's --jobs, and the lower bound's recount parts")
    parser.add_argument("--cpus", type=int,
                        help="run everything (server, backfill, pgloader) on the first N CPUs")
    parser.add_argument("--json", type=Path, help="write the figures here as JSON too")
    parser.add_argument("--cutover", help="the `cutover` command to run (default: this venv's); "
                        "another checkout's, to compare two versions of the backfill")
    args = parser.parse_args(argv)
    sizes = [s.strip() for s in args.sizes.split(",") if s.strip()]
    for s in sizes:
        try:
            rows_of(s)
        except ValueError:
            parser.error(f"--sizes: {s!r} is not a row count such as 300k or 3M")
    args.steps = set(args.steps.split(","))
    args.data.mkdir(parents=True, exist_ok=True)
    pgloader = require_tools() if "pgloader" in args.steps else None
    cutover = args.cutover or shutil.which("cutover", path=str(Path(sys.executable).parent)) \
        or "cutover"
    work = Path(tempfile.mkdtemp(prefix="bench-scale-"))
    start = pg15 if args.server == "pg15" else embedded
    results = []
    with start(work) as server:
        if args.cpus:
            pin(server.pid, set(range(args.cpus)))
        if args.maintenance_workers is not None:
            await set_workers(server.dsn, args.maintenance_workers)
        for size in sizes:
            results.append(await run_size(size, args, server, work, cutover, pgloader))
    out = report(results, args)
    print(f"logs in {work}")
    if args.json:
        args.json.write_text(json.dumps({"args": {k: (sorted(v) if isinstance(v, set) else str(v))
                                                  for k, v in vars(args).items()}, **out},
                                        indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
