"""Search parity of the two stores on real text, through the shadow comparer's own code path.

    .venv/bin/python bench/parity.py [--dsn postgresql://...] [--seed 1] [--limit 10]
        [--sample N] [--exact all|N] [--show N] [--json]

Loads the corpus of bench/corpus.py (standard-library docstrings, 8 users) into a fresh SQLite
file and a fresh PostgreSQL database (on `--dsn`'s server, or an embedded server in a temp dir),
runs every query of the query set on both through `store.search(query, user_id, limit)`, and
grades each pair with `shadow.compare.classify`, the function the live shadow runner calls
(SQLite as the primary, as during the shadowed stage). Prints per query class and overall: mean
Jaccard@10, mean rank-biased overlap (p=0.9), top-1 agreement, and the discrepancies by reason;
then the misspellings PostgreSQL resolves (intended question in its top 10), the share of
questions whose exact wording returns them first on each store, and timings.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import random
import sqlite3
import statistics
import sys
import tempfile
import time
import uuid
from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import asyncpg

from bench._pg import scratch_database
from bench.corpus import (
    PLAIN_CLASSES,
    QUERY_CLASSES,
    Corpus,
    Query,
    build_corpus,
    build_queries,
    corpus_rows,
    sample_corpus,
)
from proxy import PostgresStore, SQLiteStore
from proxy.models import BY_NAME, SearchResult
from shadow.compare import CompareContext, Comparison, classify

AnyStore = SQLiteStore | PostgresStore
LOAD_CONCURRENCY = 8


async def load(store: AnyStore, corpus: Corpus) -> float:
    """Insert the corpus through the store's own insert path; return the seconds it took."""
    return await load_rows(store, corpus_rows(corpus))


async def load_rows(store: AnyStore, rows: dict[str, list[dict[str, Any]]]) -> float:
    """Insert `rows` (by entity name, as `corpus_rows` gives them) through the store's own
    insert path, then analyze as autovacuum would; return the seconds it took."""
    start = time.perf_counter()
    for entity_name in ("user", "study_book"):
        for row in rows[entity_name]:
            await store.insert_row(BY_NAME[entity_name], row, clock=1)
    gate = asyncio.Semaphore(LOAD_CONCURRENCY)
    questions = BY_NAME["question"]

    async def put(row: dict[str, Any]) -> None:
        async with gate:
            await store.insert_row(questions, row, clock=1)

    await asyncio.gather(*(put(r) for r in rows["question"]))
    # what autovacuum does within a minute of a load this size (an insert-triggered vacuum and
    # an analyze): until then PostgreSQL plans on guesses (one study book per user, one question
    # per book), and the GIN indexes' pending lists hold every question inserted, which each
    # search scans whole (and the planner, seeing them, reads the table instead); the searches
    # measured would be slower than any served after that minute
    if isinstance(store, PostgresStore):
        conn = await asyncpg.connect(store.dsn)
        try:
            await conn.execute("VACUUM ANALYZE")
        finally:
            await conn.close()
    else:
        with contextlib.closing(sqlite3.connect(store.path)) as db:
            db.execute("ANALYZE")
    return time.perf_counter() - start


@dataclass
class Run:
    """One query on both stores and its graded comparison."""

    query: Query
    comparison: Comparison
    sqlite: list[SearchResult]
    postgres: list[SearchResult]
    sqlite_s: float
    postgres_s: float


@dataclass
class Report:
    runs: list[Run] = field(default_factory=list)
    exact: dict[str, tuple[int, int]] = field(default_factory=dict)  # store -> (first, total)
    exact_misses: dict[str, list[str]] = field(default_factory=dict)
    load_s: dict[str, float] = field(default_factory=dict)
    questions: int = 0


async def timed(store: AnyStore, text: str, user: uuid.UUID, limit: int
                ) -> tuple[list[SearchResult], float]:
    start = time.perf_counter()
    hits = await store.search(text, user, limit)
    return hits, time.perf_counter() - start


async def run_queries(sqlite: AnyStore, postgres: AnyStore, corpus: Corpus,
                      queries: Sequence[Query], limit: int) -> list[Run]:
    runs = []
    for q in queries:
        user = corpus.users[q.user]
        primary, sqlite_s = await timed(sqlite, q.text, user, limit)
        shadow, postgres_s = await timed(postgres, q.text, user, limit)
        # exactly what ShadowRunner does with a finished shadow search (no pending writes here)
        comparison = classify(primary, shadow, CompareContext(q.text, limit, frozenset()))
        runs.append(Run(q, comparison, primary, shadow, sqlite_s, postgres_s))
    return runs


async def exact_wording(stores: dict[str, AnyStore], corpus: Corpus, sample: int | None,
                        limit: int) -> tuple[dict[str, tuple[int, int]], dict[str, list[str]]]:
    """Per store: how many questions come first when searched by their own wording."""
    questions = corpus.questions
    if sample is not None and sample < len(questions):
        questions = random.Random(7).sample(questions, sample)
    result: dict[str, tuple[int, int]] = {}
    misses: dict[str, list[str]] = {}
    for name, store in stores.items():
        first = 0
        missed = []
        for q in questions:
            hits = await store.search(q.question, corpus.users[q.user], limit)
            if hits and hits[0].question_id == q.id:
                first += 1
            else:
                missed.append(q.question)
        result[name] = (first, len(questions))
        misses[name] = missed
    return result, misses


# -- figures ---------------------------------------------------------------------------------


def _mean(values: Sequence[float]) -> float:
    return statistics.fmean(values) if values else float("nan")


def summarize(runs: Sequence[Run]) -> dict[str, Any]:
    comps = [r.comparison for r in runs]
    reasons = Counter(c.reason.value for c in comps if c.reason is not None)
    return {
        "queries": len(runs),
        "jaccard": _mean([c.jaccard or 0.0 for c in comps]),
        "rbo": _mean([c.rbo or 0.0 for c in comps]),
        "top1": _mean([1.0 if c.top1 else 0.0 for c in comps]),
        "identical": _mean([1.0 if c.reason is None else 0.0 for c in comps]),
        "reasons": dict(sorted(reasons.items())),
    }


def misspelling_recall(runs: Sequence[Run]) -> dict[str, float]:
    targeted = [r for r in runs if r.query.cls == "misspelling" and r.query.target]
    out = {}
    for name in ("sqlite", "postgres"):
        found = [r.query.target in {h.question_id for h in getattr(r, name)} for r in targeted]
        out[name] = _mean([1.0 if f else 0.0 for f in found])
    return out


def percentile(values: Sequence[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else float("nan")


def build_report(report: Report) -> dict[str, Any]:
    by_class: dict[str, list[Run]] = defaultdict(list)
    for r in report.runs:
        by_class[r.query.cls].append(r)
    plain = [r for r in report.runs if r.query.cls in PLAIN_CLASSES]
    return {
        "questions": report.questions,
        "classes": {cls: summarize(by_class[cls]) for cls in QUERY_CLASSES if by_class[cls]},
        "plain_keywords": summarize(plain),
        "overall": summarize(report.runs),
        "misspelling_recall_at_10": misspelling_recall(report.runs),
        "exact_wording_first": {
            name: {"first": first, "total": total, "share": first / total if total else 0.0}
            for name, (first, total) in report.exact.items()
        },
        "timings_ms": {
            **{f"load_{name}_s": round(s, 2) for name, s in report.load_s.items()},
            **{f"search_{name}_p50": round(1000 * percentile(
                [getattr(r, f"{name}_s") for r in report.runs], 0.5), 2)
               for name in ("sqlite", "postgres")},
            **{f"search_{name}_p95": round(1000 * percentile(
                [getattr(r, f"{name}_s") for r in report.runs], 0.95), 2)
               for name in ("sqlite", "postgres")},
        },
    }


def print_table(data: dict[str, Any]) -> None:
    print(f"\n{data['questions']} questions; limit 10; SQLite primary, PostgreSQL shadow\n")
    print(f"| {'class':<18} | {'n':>4} | {'Jaccard@10':>10} | {'RBO':>6} | {'top-1':>6} | "
          f"{'identical':>9} | discrepancies by reason |")
    print(f"|{'-' * 20}|{'-' * 6}|{'-' * 12}|{'-' * 8}|{'-' * 8}|{'-' * 11}|{'-' * 25}|")
    rows = [*data["classes"].items(), ("plain keywords", data["plain_keywords"]),
            ("overall", data["overall"])]
    for name, s in rows:
        reasons = ", ".join(f"{k} {v}" for k, v in s["reasons"].items()) or "-"
        label = f"**{name}**" if name in ("plain keywords", "overall") else name
        print(f"| {label:<18} | {s['queries']:>4} | {s['jaccard']:>10.3f} | {s['rbo']:>6.3f} | "
              f"{s['top1']:>6.3f} | {s['identical']:>9.3f} | {reasons} |")
    recall = data["misspelling_recall_at_10"]
    print(f"\nmisspellings, intended question in the top 10: PostgreSQL {recall['postgres']:.1%}"
          f" (target >= 80%), SQLite {recall['sqlite']:.1%}")
    for name, e in data["exact_wording_first"].items():
        print(f"exact wording returns the question first, {name}: {e['first']}/{e['total']} = "
              f"{e['share']:.1%} (target >= 95%)")
    t = data["timings_ms"]
    print(f"timings: load SQLite {t['load_sqlite_s']} s, PostgreSQL {t['load_postgres_s']} s; "
          f"search p50/p95 SQLite {t['search_sqlite_p50']}/{t['search_sqlite_p95']} ms, "
          f"PostgreSQL {t['search_postgres_p50']}/{t['search_postgres_p95']} ms")


def show_discrepancies(report: Report, corpus: Corpus, per_class: int) -> None:
    names = {q.id: q.name or q.question for q in corpus.questions}

    marks = {"fts": "", "fuzzy": " (fuzzy)", "substring": " (substring)"}

    def fmt(hits: list[SearchResult]) -> str:
        return ", ".join(f"{names.get(h.question_id, '?')}{marks[h.match_kind]}" for h in hits)

    shown: Counter[str] = Counter()
    for r in sorted(report.runs, key=lambda r: (r.comparison.reason is None,
                                                r.comparison.rbo or 0.0)):
        c = r.comparison
        if c.reason is None or shown[r.query.cls] >= per_class:
            continue
        shown[r.query.cls] += 1
        print(f"\n[{r.query.cls}] {r.query.text!r} -> {c.reason.value} "
              f"(jaccard {c.jaccard:.2f}, rbo {c.rbo:.2f}) {c.detail}")
        print(f"  sqlite:   {fmt(r.sqlite)}")
        print(f"  postgres: {fmt(r.postgres)}")
    for name, missed in report.exact_misses.items():
        for text in missed[:per_class]:
            print(f"\n[exact wording, {name}] not first: {text!r}")


async def run(args: argparse.Namespace) -> dict[str, Any]:
    corpus = build_corpus()
    if args.sample:
        corpus = sample_corpus(corpus, args.sample, args.seed)
    queries = build_queries(corpus, args.seed)
    report = Report(questions=len(corpus.questions))
    with tempfile.TemporaryDirectory(prefix="parity-") as tmp:
        async with scratch_database(args.dsn) as dsn:
            sqlite = SQLiteStore(Path(tmp) / "app.db")
            postgres = PostgresStore(dsn)
            try:
                for name, store in (("sqlite", sqlite), ("postgres", postgres)):
                    await store.init_schema()
                    report.load_s[name] = await load(store, corpus)
                report.runs = await run_queries(sqlite, postgres, corpus, queries, args.limit)
                sample = None if args.exact == "all" else int(args.exact)
                report.exact, report.exact_misses = await exact_wording(
                    {"sqlite": sqlite, "postgres": postgres}, corpus, sample, args.limit)
            finally:
                await sqlite.close()
                await postgres.close()
    data = build_report(report)
    if args.json:
        print(json.dumps(data, indent=2))
    else:
        print_table(data)
        if args.show:
            show_discrepancies(report, corpus, args.show)
    return data


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dsn", default=None,
                        help="a PostgreSQL server to create a scratch database on "
                             "(default: an embedded server in a temp dir)")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--limit", type=int, default=10)
    parser.add_argument("--sample", type=int, default=0,
                        help="use only this many English questions (0 = the whole corpus)")
    parser.add_argument("--exact", default="all",
                        help="questions to check by exact wording: 'all' or a sample size")
    parser.add_argument("--show", type=int, default=0,
                        help="print up to N discrepancies per class (worst first)")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    args = parser.parse_args(argv)
    asyncio.run(run(args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
