"""`cutover backfill` beside pgloader, on the same legacy app.db, in the same run; then
`cutover verify` on the result.

    .venv/bin/python bench/backfill.py [--dsn postgresql://...] [--db legacy.db] [--repeat 1]
        [--questions 100000 --typing-logs 100000 --events 100000] [--dirty 0.0] [--keep]

- the file: `bench/legacy_db.py` (deterministic, real text), about 300k rows by default;
- ours: `cutover backfill --from FILE --quiet` in a child process, into an empty database with
  the project's schema (created by the backfill); every index is in place when it exits;
- pgloader: Debian's `pgloader`, in a child process, loading the same file into an empty
  database holding the seed document's schema (seed/000_8bcb5f4eb90dbcb9.txt §2.1, with its
  indexes; `uuid_generate_v4()` is `gen_random_uuid()`), `data only, drop indexes`: its fastest
  mode, which also ends with every index built. Whatever pgloader rejects, it rejects;
- verify: `cutover verify --sample-queries 0` on our database against the file as the store
  holds it (a copy upgraded by `cutover schema init`: ids that were not UUIDs rewritten).

Wall time, CPU time and peak resident memory (from wait4: the loading process alone, the server
excluded) are measured for each child, and the server's CPU time over it when the server is the
embedded one this bench started (its postmaster's own, its children's and its reaped children's
time; background work such as autovacuum included). The two loaders alternate when `--repeat`
> 1 and the medians are printed. Exits 2 naming the Debian package when a tool is missing.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from dataclasses import dataclass, replace
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import asyncpg

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from bench._pg import database  # noqa: E402
from bench.seed_schema import seed_ddl  # noqa: E402

TARGETS = {"speed": 2.0, "memory": 0.25, "verify": 0.5}
TABLES = ("users", "study_books", "questions", "typing_logs", "learning_events")

PGLOADER_COMMAND = """LOAD DATABASE
  FROM sqlite://{source}
  INTO {target}
  WITH data only, create no tables, drop indexes, reset no sequences
  EXCLUDING TABLE NAMES LIKE 'questions_fts%'
;
"""


@dataclass(frozen=True)
class Run:
    name: str
    seconds: float
    max_rss_mb: float
    exit_code: int
    rows: int
    cpu_s: float = 0.0  # the child's user + system time
    server_cpu_s: float | None = None  # the server's, over the child's run (embedded only)
    idle_core_s: float | None = None  # the machine's CPUs idle (or waiting on I/O) meanwhile


# Measures one child from a small trampoline process: a child forked straight from this process
# would start with a copy of its memory, and Linux counts that copy in the child's peak RSS.
TRAMPOLINE = """
import os, subprocess, sys, time
with open(sys.argv[1], "wb") as out:
    started = time.perf_counter()
    child = subprocess.Popen(sys.argv[2:], stdout=out, stderr=subprocess.STDOUT)
    _, status, usage = os.wait4(child.pid, 0)
    print(time.perf_counter() - started, usage.ru_maxrss, os.waitstatus_to_exitcode(status),
          usage.ru_utime + usage.ru_stime)
"""


def measure(name: str, argv: list[str], env: dict[str, str], log: Path, rows: int = 0,
            server_pid: int | None = None) -> Run:
    """Run `argv`: its wall seconds, CPU seconds, peak RSS in MB and exit status, and the
    server's CPU seconds meanwhile when `server_pid` (its postmaster) is given."""
    before, idle_before = server_cpu(server_pid) if server_pid else None, idle_cpu()
    done = subprocess.run([sys.executable, "-c", TRAMPOLINE, str(log), *argv], env=env,
                          capture_output=True, text=True, check=True)
    after, idle = server_cpu(server_pid) if server_pid else None, idle_cpu() - idle_before
    seconds, rss_kb, code, cpu = done.stdout.split()
    return Run(name, float(seconds), int(rss_kb) / 1024, int(code), rows, float(cpu),
               None if before is None or after is None else after - before, idle)


def idle_cpu() -> float:
    """Core-seconds this machine's CPUs have been idle or waiting on I/O since it booted: over
    a step, what its loaders left unused (on a machine nothing else runs on)."""
    # the first line: cpu user nice system idle iowait ... (in clock ticks)
    ticks = Path("/proc/stat").read_text().split("\n", 1)[0].split()
    return (int(ticks[4]) + int(ticks[5])) / os.sysconf("SC_CLK_TCK")


def server_cpu(postmaster: int) -> float | None:
    """The CPU seconds of a local server so far: the postmaster's, its reaped children's (exited
    backends and workers) and its live children's. None when /proc cannot tell."""
    tick = os.sysconf("SC_CLK_TCK")

    def stat(pid: int, fields: slice) -> float:
        values = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return sum(int(v) for v in values[fields]) / tick

    try:
        total = stat(postmaster, slice(11, 15))  # utime stime cutime cstime
        children = Path(f"/proc/{postmaster}/task/{postmaster}/children").read_text().split()
    except OSError:
        return None
    for child in children:
        with contextlib.suppress(OSError):  # exited meanwhile: now in the postmaster's cutime
            total += stat(int(child), slice(11, 13))
    return total


def pgloader_target(dsn: str) -> str:
    """pgloader's spelling of a DSN: a unix socket directory becomes `unix:DIR:PORT`."""
    parts = urlsplit(dsn)
    query = parse_qs(parts.query)
    user = parts.username or "postgres"
    password = f":{parts.password}" if parts.password else ""
    database = parts.path.lstrip("/")
    socket_dir = query.get("host", [None])[0] or (parts.hostname or "")
    if socket_dir.startswith("/"):
        port = query.get("port", [None])[0] or parts.port or _socket_port(Path(socket_dir))
        return f"postgresql://{user}{password}@unix:{socket_dir}:{port}/{database}"
    return f"postgresql://{user}{password}@{parts.hostname}:{parts.port or 5432}/{database}"


def _socket_port(directory: Path) -> int:
    sockets = sorted(directory.glob(".s.PGSQL.*"))
    return int(sockets[0].suffix.lstrip(".")) if sockets else 5432


async def count_rows(dsn: str) -> tuple[int, int]:
    """(rows in the five tables, indexes on them)."""
    conn = await asyncpg.connect(dsn)
    try:
        rows = 0
        for table in TABLES:
            rows += await conn.fetchval(f"SELECT count(*) FROM {table}")
        indexes = await conn.fetchval(
            "SELECT count(*) FROM pg_indexes WHERE schemaname = 'public' AND tablename = ANY($1)",
            list(TABLES))
        return rows, indexes
    finally:
        await conn.close()


def require_tools() -> str:
    pgloader = shutil.which("pgloader")
    if pgloader is None:
        print("pgloader is missing: install the Debian package `pgloader` "
              "(apt-get install -y pgloader)", file=sys.stderr)
        sys.exit(2)
    return pgloader


async def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dsn", help="a server to create the bench databases on "
                                      "(default: an embedded one in a temp dir)")
    parser.add_argument("--db", type=Path, help="the legacy database (generated if missing)")
    parser.add_argument("--questions", type=int, default=100_000)
    parser.add_argument("--typing-logs", type=int, default=100_000)
    parser.add_argument("--events", type=int, default=100_000)
    parser.add_argument("--dirty", type=float, default=0.0)
    parser.add_argument("--repeat", type=int, default=1)
    parser.add_argument("--json", action="store_true", help="print the figures as JSON too")
    parser.add_argument("--keep", action="store_true", help="keep the databases afterwards")
    args = parser.parse_args(argv)
    pgloader = require_tools()
    cutover = shutil.which("cutover", path=str(Path(sys.executable).parent)) or "cutover"
    work = Path(tempfile.mkdtemp(prefix="bench-backfill-"))
    db = args.db or work / "legacy.db"
    if not db.exists():
        from bench.legacy_db import generate

        print(f"generating {db} ...", file=sys.stderr)
        generate(db, questions=args.questions, typing_logs=args.typing_logs, events=args.events,
                 users=100, books=100, seed=1, dirty=args.dirty)
    source_rows = _source_rows(db)
    with db.open("rb") as f:  # into the page cache, for both loaders alike
        while f.read(1 << 20):
            pass

    # verify compares the live SQLite store, which `cutover schema init` upgraded in place (ids
    # that were not UUIDs rewritten): an upgraded copy of the file stands in for it
    app_db = work / "app.db"
    shutil.copyfile(db, app_db)
    from proxy.stores.sqlite import SQLiteStore

    store = SQLiteStore(app_db)
    await store.init_schema()
    await store.close()

    server = None
    server_dsn = args.dsn
    server_pid: int | None = None
    if server_dsn is None:
        from proxy.embedded import start_embedded

        server = start_embedded(work / "pg", cleanup="delete")
        server_dsn = str(server.get_uri())
        server_pid = int((work / "pg" / "postmaster.pid").read_text().split()[0])
    runs: dict[str, list[Run]] = {"cutover backfill": [], "pgloader": [], "cutover verify": []}
    try:
        async with contextlib.AsyncExitStack() as databases:
            for i in range(args.repeat):
                order = ["ours", "pgloader"] if i % 2 == 0 else ["pgloader", "ours"]
                for which in order:
                    if which == "pgloader":
                        # the seed's trigram index needs pg_trgm, which the document assumes
                        dsn = await databases.enter_async_context(database(
                            server_dsn, "bench_pgloader", keep=args.keep,
                            ddl="CREATE EXTENSION IF NOT EXISTS pg_trgm;\n" + seed_ddl()))
                        command = work / "load.load"
                        command.write_text(PGLOADER_COMMAND.format(
                            source=db.resolve(), target=pgloader_target(dsn)))
                        run = measure("pgloader", [pgloader, str(command)], dict(os.environ),
                                      work / f"pgloader-{i}.log", server_pid=server_pid)
                        rows, _ = await count_rows(dsn)
                        runs["pgloader"].append(replace(run, rows=rows))
                    else:
                        dsn = await databases.enter_async_context(
                            database(server_dsn, "bench_ours", keep=args.keep))
                        env = {**os.environ, "POSTGRES_DSN": dsn, "SQLITE_PATH": str(app_db)}
                        run = measure("backfill", [cutover, "backfill", "--from", str(db),
                                                   "--rejects", str(work / "rejects.jsonl"),
                                                   "--quiet", "--json"],
                                      env, work / f"backfill-{i}.log", server_pid=server_pid)
                        rows, _ = await count_rows(dsn)
                        runs["cutover backfill"].append(replace(run, rows=rows))
                        runs["cutover verify"].append(measure(
                            "verify", [cutover, "verify", "--json", "--sample-queries", "0"],
                            env, work / f"verify-{i}.log", rows, server_pid=server_pid))
    finally:
        if not args.keep:
            if server is not None:
                server.cleanup()
            for path in (app_db, *app_db.parent.glob("app.db-*")):
                path.unlink(missing_ok=True)
            if args.db is None:
                db.unlink(missing_ok=True)  # generated here: the logs stay, the data goes
    return report(runs, source_rows, db, work, args.json)


def _source_rows(db: Path) -> int:
    import sqlite3

    conn = sqlite3.connect(db)
    try:
        return sum(conn.execute(f"SELECT count(*) FROM {t}").fetchone()[0] for t in TABLES)
    finally:
        conn.close()


def report(runs: dict[str, list[Run]], source_rows: int, db: Path, work: Path,
           as_json: bool) -> int:
    med = {k: (statistics.median(r.seconds for r in v), statistics.median(r.max_rss_mb for r in v),
               v[-1].rows, max(r.exit_code for r in v)) for k, v in runs.items()}
    print(f"\nlegacy database: {db} ({source_rows} rows); logs in {work}")
    print(f"{'':18} {'wall s':>8} {'CPU s':>7} {'server CPU s':>13} {'peak RSS MB':>12} "
          f"{'rows':>8} {'exit':>5}")
    for name, (seconds, rss, rows, code) in med.items():
        cpu = statistics.median(r.cpu_s for r in runs[name])
        known = [r.server_cpu_s for r in runs[name] if r.server_cpu_s is not None]
        server = f"{statistics.median(known):13.2f}" if known else f"{'-':>13}"
        print(f"{name:18} {seconds:8.2f} {cpu:7.2f} {server} {rss:12.1f} {rows:8d} {code:5d}")
    ours, theirs, verify = med["cutover backfill"], med["pgloader"], med["cutover verify"]
    ratios = {
        "speed": theirs[0] / ours[0],
        "memory": ours[1] / theirs[1],
        "verify": verify[0] / theirs[0],
    }
    print()
    lines = (
        ("backfill speed vs pgloader:", f"{ratios['speed']:.2f}x faster", "speed", ">="),
        ("backfill memory vs pgloader:", f"{ratios['memory']:.2f} of it", "memory", "<="),
        ("verify time vs pgloader load:", f"{ratios['verify']:.2f} of it", "verify", "<="),
    )
    for label, figure, key, sense in lines:
        met = ratios[key] >= TARGETS[key] if sense == ">=" else ratios[key] <= TARGETS[key]
        print(f"{label:30} {figure:14} (target {sense} {TARGETS[key]}: "
              f"{'met' if met else 'MISSED'})")
    if as_json:
        print(json.dumps({"rows": source_rows, "runs": {k: [r.__dict__ for r in v]
                                                         for k, v in runs.items()},
                          "ratios": ratios}, indent=2))
    return 0 if all(r[3] in (0,) for r in (ours, theirs)) and verify[3] == 0 else 1


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
