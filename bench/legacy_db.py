"""Generate a legacy app.db (docs/legacy_schema.sql) with real text, deterministically.

    python bench/legacy_db.py OUT.db [--questions 100000] [--typing-logs 100000]
        [--events 100000] [--users 100] [--books 100] [--seed 1] [--dirty 0.0]
        [--corpus sentences|parity]

The text is sentences from the Python standard library's docstrings (modules without import side
effects only), or with `--corpus parity` the search-parity corpus's question and answer pairs
(bench/corpus.py: one per documented module, class and function, the first paragraph of its
docstring as the answer). By default every value is in the form the legacy application wrote
(canonical UUIDs, ISO 8601 timestamps, REALs with two decimals), so a timing comparison with
pgloader is fair;
`--dirty RATE` mixes in the legacy variety a real app.db holds (other timestamp forms, epoch
seconds and milliseconds, ids that are not UUIDs, and a few rows no loader should accept).
"""

from __future__ import annotations

import argparse
import importlib
import inspect
import random
import re
import sqlite3
import sys
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from proxy.stores.sqlite_schema import LEGACY_SCHEMA

# Imported for their docstrings only: none of them does anything on import.
DOC_MODULES = (
    "abc", "argparse", "array", "ast", "asyncio", "base64", "bisect", "bz2", "calendar", "cmd",
    "codecs", "collections", "concurrent.futures", "configparser", "contextlib", "copy", "csv",
    "dataclasses", "datetime", "decimal", "difflib", "email", "email.message", "enum",
    "filecmp", "fnmatch", "fractions", "ftplib", "functools", "getopt", "gettext", "glob",
    "gzip", "hashlib", "heapq", "hmac", "html", "html.parser", "http.client", "http.cookies",
    "imaplib", "inspect", "io", "ipaddress", "itertools", "json", "logging", "lzma", "mailbox",
    "math", "mimetypes", "numbers", "operator", "optparse", "os", "pathlib", "pickle",
    "pkgutil", "platform", "plistlib", "poplib", "pprint", "queue", "quopri", "random", "re",
    "sched", "secrets", "selectors", "shelve", "shlex", "shutil", "smtplib", "socket",
    "sqlite3", "statistics", "string", "struct", "subprocess", "tarfile", "tempfile",
    "textwrap", "threading", "timeit", "tokenize", "traceback", "types", "typing", "unittest",
    "urllib.parse", "urllib.request", "uuid", "warnings", "wave", "weakref", "xml.dom.minidom",
    "xml.etree.ElementTree", "zipfile", "zlib",
)
SENTENCE = re.compile(r"(?<=[.!?])\s+(?=[A-Z])")
LANGUAGES = ("en", "ja", "de", "fr")
DIFFICULTIES = ("easy", "medium", "hard")
APPS = ("typing-tutor", "flashcards", "quiz")
ACTIONS = ("view", "answer", "skip", "review", "bookmark")
START = datetime(2021, 1, 1, tzinfo=UTC)



def sentences() -> list[str]:
    """Distinct sentences of 20-300 characters from the modules' docstrings, in a fixed order."""
    found: set[str] = set()
    for name in DOC_MODULES:
        try:
            module = importlib.import_module(name)
        except ImportError:
            continue
        docs = [inspect.getdoc(module) or ""]
        for _, member in inspect.getmembers(module):
            if inspect.isclass(member) or inspect.isroutine(member):
                docs.append(inspect.getdoc(member) or "")
        for doc in docs:
            for para in doc.split("\n\n"):
                text = " ".join(para.split())
                for s in SENTENCE.split(text):
                    if 20 <= len(s) <= 300 and s[0].isupper() and s[-1] in ".?!":
                        found.add(s)
    return sorted(found)


def _uuid(rng: random.Random) -> str:
    return str(uuid.UUID(int=rng.getrandbits(128), version=4))


class Values:
    """The generator's value forms: clean by default, legacy variety at rate `dirty`."""

    def __init__(self, rng: random.Random, dirty: float) -> None:
        self.rng = rng
        self.dirty = dirty

    def is_dirty(self) -> bool:
        return self.dirty > 0 and self.rng.random() < self.dirty

    def id(self, prefix: str, n: int) -> str:
        if self.is_dirty():
            return f"{prefix}-{n}"  # the oldest rows used readable ids
        return _uuid(self.rng)

    def timestamp(self) -> str:
        ts = START + timedelta(seconds=self.rng.randrange(3 * 365 * 86400),
                               microseconds=self.rng.randrange(1_000_000))
        if not self.is_dirty():
            return ts.strftime("%Y-%m-%dT%H:%M:%S.%fZ")
        form = self.rng.randrange(6)
        if form == 0:
            return ts.strftime("%Y-%m-%d %H:%M:%S")
        if form == 1:
            return ts.astimezone(UTC).replace(tzinfo=None).isoformat() + "+00:00"
        if form == 2:
            return (ts + timedelta(hours=9)).strftime("%Y-%m-%dT%H:%M:%S.%f+09:00")
        if form == 3:
            return str(int(ts.timestamp()))
        if form == 4:
            return str(int(ts.timestamp() * 1000))
        return "2023-02-30T10:00:00Z"  # an impossible date: must be rejected

    def accuracy(self) -> float:
        if self.is_dirty():
            return self.rng.choice((97.125, 101.5, 88.333))
        return round(self.rng.uniform(60, 100), 2)


CORPORA = ("sentences", "parity")


def _parity_pairs() -> list[tuple[str, str]]:
    from bench.corpus import build_corpus

    return [(q.question, q.answer) for q in build_corpus().questions]


def generate(path: Path, *, questions: int, typing_logs: int, events: int, users: int,
             books: int, seed: int, dirty: float, corpus: str = "sentences") -> dict[str, int]:
    """Write the database at `path` (replacing it) and return the row count per table."""
    rng = random.Random(seed)
    v = Values(rng, dirty)
    text = sentences()
    pairs = _parity_pairs() if corpus == "parity" else None
    path.unlink(missing_ok=True)
    conn = sqlite3.connect(path, isolation_level=None)
    conn.executescript(LEGACY_SCHEMA)
    conn.execute("PRAGMA journal_mode=OFF")
    conn.execute("PRAGMA synchronous=OFF")
    conn.execute("BEGIN")
    user_ids = [v.id("user", i) for i in range(users)]
    conn.executemany(
        "INSERT INTO users VALUES (?, ?, ?, ?, ?)",
        ((uid, f"User {i}", f"user{i}@example.com", v.timestamp(), v.timestamp())
         for i, uid in enumerate(user_ids)),
    )
    book_ids = [v.id("book", i) for i in range(books)]
    conn.executemany(
        "INSERT INTO study_books VALUES (?, ?, ?, ?, ?, ?)",
        ((bid, user_ids[i % users], f"Book {i}: {rng.choice(text)[:200]}",
          rng.choice((None, rng.choice(text))), v.timestamp(), v.timestamp())
         for i, bid in enumerate(book_ids)),
    )
    question_ids: list[str] = []

    def question_rows() -> Iterator[tuple[object, ...]]:
        for i in range(questions):
            qid = v.id("q", i)
            question_ids.append(qid)
            if pairs is None:
                question = rng.choice(text)
                answer = " ".join(rng.choice(text) for _ in range(rng.randint(1, 3)))
            else:
                question, answer = rng.choice(pairs)
            yield (qid, rng.choice(book_ids), rng.choice(LANGUAGES),
                   rng.choice(DOC_MODULES), rng.choice(DIFFICULTIES), question, answer,
                   v.timestamp(), v.timestamp())

    conn.executemany("INSERT INTO questions VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)", question_rows())
    # the old application's own search index, as an app.db holds it
    conn.execute(
        "INSERT INTO questions_fts (question_id, question, answer) "
        "SELECT id, question, answer FROM questions"
    )
    conn.executemany(
        "INSERT INTO typing_logs VALUES (?, ?, ?, ?, ?, ?, ?)",
        ((v.id("log", i), rng.choice(user_ids),
          None if rng.random() < 0.05 else rng.choice(question_ids),
          "fast" if v.is_dirty() else rng.randint(10, 140), v.accuracy(),
          rng.randint(500, 60_000), v.timestamp())
         for i in range(typing_logs)),
    )
    conn.executemany(
        "INSERT INTO learning_events VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
        ((v.id("ev", i), rng.choice(user_ids), rng.choice(APPS), rng.choice(ACTIONS),
          rng.choice(question_ids) if question_ids and rng.random() < 0.8 else None,
          None if rng.random() < 0.3 else round(rng.uniform(0, 1000), 2),
          None if rng.random() < 0.1 else rng.randint(100, 600_000), v.timestamp())
         for i in range(events)),
    )
    conn.execute("COMMIT")
    counts = {t: conn.execute(f"SELECT count(*) FROM {t}").fetchone()[0]
              for t in ("users", "study_books", "questions", "typing_logs", "learning_events")}
    conn.close()
    return counts


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--questions", type=int, default=100_000)
    parser.add_argument("--typing-logs", type=int, default=100_000)
    parser.add_argument("--events", type=int, default=100_000)
    parser.add_argument("--users", type=int, default=100)
    parser.add_argument("--books", type=int, default=100)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--dirty", type=float, default=0.0)
    parser.add_argument("--corpus", choices=CORPORA, default="sentences")
    args = parser.parse_args(argv)
    counts = generate(args.out, questions=args.questions, typing_logs=args.typing_logs,
                      events=args.events, users=args.users, books=args.books, seed=args.seed,
                      dirty=args.dirty, corpus=args.corpus)
    print(f"{args.out}: " + ", ".join(f"{t} {n}" for t, n in counts.items()), file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
