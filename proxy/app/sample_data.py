"""Sample data of real text for the demo: questions made from Python standard library docstrings.

Each question asks what a public function or class does ("What does json.dumps do?") and its
answer is the first paragraph of that object's docstring, read with `inspect`. Only modules whose
import has no side effect are read (never antigravity, this, idlelib, tkinter or turtle), and the
order is fixed, so one interpreter always produces the same questions. Search queries are drawn
from the same text with a seeded `random.Random`: names, words of the answers, misspellings (the
fuzzy path), prefixes, stop words and words that match nothing.
"""

from __future__ import annotations

import importlib
import inspect
import random
import re
from dataclasses import dataclass
from functools import lru_cache
from types import ModuleType

#: Modules read for docstrings: importing any of them only defines names.
MODULES: tuple[str, ...] = (
    "abc", "argparse", "base64", "bisect", "calendar", "codecs", "collections", "colorsys",
    "contextlib", "copy", "csv", "dataclasses", "datetime", "decimal", "difflib", "email.utils",
    "enum", "fnmatch", "fractions", "functools", "glob", "graphlib", "gzip", "hashlib", "heapq",
    "hmac", "html", "inspect", "ipaddress", "itertools", "json", "keyword", "logging", "math",
    "numbers", "operator", "os.path", "pathlib", "pprint", "queue", "random", "re", "sched",
    "secrets", "shlex", "shutil", "sqlite3", "statistics", "string", "struct", "tarfile",
    "tempfile", "textwrap", "threading", "typing", "unicodedata", "urllib.parse", "uuid",
    "weakref", "zipfile", "zlib",
)

MAX_ANSWER_CHARS = 600
MIN_ANSWER_CHARS = 30

#: Query words that match nothing in the sample (the empty-result path on both stores).
NONSENSE: tuple[str, ...] = ("zyzzyva", "quuxplorer", "flibbertigibbet", "snarkle")
#: Stop words: PostgreSQL's english configuration drops them, FTS5 does not.
STOP_QUERIES: tuple[str, ...] = ("the", "what is", "of the", "a")

_WORD = re.compile(r"[A-Za-z]{4,}")
_SPACE = re.compile(r"\s+")


@dataclass(frozen=True, slots=True)
class SampleQuestion:
    """One question of the sample: the seed's columns except the study book."""

    module: str
    name: str  # dotted name, e.g. "json.dumps"
    language: str
    category: str
    difficulty: str
    question: str
    answer: str


def _first_paragraph(doc: str, short_name: str) -> str:
    paragraphs = [p.strip() for p in doc.split("\n\n") if p.strip()]
    # C functions' docstrings often open with their signature: skip it
    while paragraphs and re.match(rf"^{re.escape(short_name)}\s*\(", paragraphs[0]):
        paragraphs.pop(0)
    if not paragraphs:
        return ""
    text = _SPACE.sub(" ", paragraphs[0])
    if len(text) > MAX_ANSWER_CHARS:
        cut = text.rfind(" ", 0, MAX_ANSWER_CHARS)
        text = text[: cut if cut > 0 else MAX_ANSWER_CHARS] + " ..."
    return text


def _own_doc(obj: object) -> str | None:
    # classes inherit `__doc__` lookups through inspect.getdoc: only their own text counts
    doc = obj.__dict__.get("__doc__") if inspect.isclass(obj) else getattr(obj, "__doc__", None)
    return inspect.cleandoc(doc) if isinstance(doc, str) else None


def _defined_in(obj: object, module: ModuleType) -> bool:
    home = getattr(obj, "__module__", None) or ""
    name = module.__name__
    # C accelerators (_json, _heapq, posixpath for os.path) count as the module's own
    return home in (name, "_" + name, "_" + name.rsplit(".", 1)[-1]) or (
        name == "os.path" and home in ("posixpath", "ntpath", "genericpath")
    )


def _difficulty(answer: str) -> str:
    # terciles of the sample's answer lengths: a longer docstring is a harder question
    if len(answer) < 50:
        return "easy"
    return "medium" if len(answer) < 70 else "hard"


def _questions_of(module_name: str) -> list[SampleQuestion]:
    module = importlib.import_module(module_name)
    out: list[SampleQuestion] = []
    public = getattr(module, "__all__", None)
    for short_name in sorted(dir(module)):
        if short_name.startswith("_") or (public is not None and short_name not in public):
            continue
        obj = getattr(module, short_name, None)
        if not (inspect.isfunction(obj) or inspect.isbuiltin(obj) or inspect.isclass(obj)):
            continue
        if not _defined_in(obj, module):
            continue
        doc = _own_doc(obj)
        if not doc:
            continue
        answer = _first_paragraph(doc, short_name)
        if len(answer) < MIN_ANSWER_CHARS:
            continue
        dotted = f"{module_name}.{short_name}"
        question = (f"What is {dotted} for?" if inspect.isclass(obj)
                    else f"What does {dotted} do?")
        out.append(SampleQuestion(
            module=module_name, name=dotted, language="en",
            category=module_name.split(".")[0][:100], difficulty=_difficulty(answer),
            question=question, answer=answer,
        ))
    return out


@lru_cache(maxsize=1)
def _all_questions() -> tuple[SampleQuestion, ...]:
    found: list[SampleQuestion] = []
    for name in MODULES:
        found.extend(_questions_of(name))
    return tuple(found)


def sample_questions(limit: int | None = None) -> list[SampleQuestion]:
    """The sample questions in a fixed order; with `limit`, an even spread over the modules."""
    everything = list(_all_questions())
    if limit is None or limit >= len(everything):
        return everything
    by_module: dict[str, list[SampleQuestion]] = {}
    for q in everything:
        by_module.setdefault(q.module, []).append(q)
    picked: list[SampleQuestion] = []
    depth = 0
    # round-robin over the modules so a small sample still covers many topics
    while len(picked) < limit:
        for questions in by_module.values():
            if depth < len(questions) and len(picked) < limit:
                picked.append(questions[depth])
        depth += 1
    return picked


def _misspell(word: str, rng: random.Random) -> str:
    if len(word) < 5:
        return word
    i = rng.randrange(1, len(word) - 2)
    return word[:i] + word[i + 1] + word[i] + word[i + 2:]


def search_queries(
    questions: list[SampleQuestion], rng: random.Random, n: int
) -> list[str]:
    """`n` queries about `questions`, of the kinds real users type (see the module docstring)."""
    if not questions:
        return list(NONSENSE[:n])
    queries: list[str] = []
    for _ in range(n):
        q = rng.choice(questions)
        words = _WORD.findall(q.answer) or [q.module]
        kind = rng.random()
        if kind < 0.25:
            queries.append(q.name.replace(".", " "))  # "json dumps"
        elif kind < 0.45:
            queries.append(rng.choice(words).lower())
        elif kind < 0.60:
            queries.append(" ".join(rng.sample(words, min(2, len(words)))).lower())
        elif kind < 0.72:
            queries.append(_misspell(rng.choice(words).lower(), rng))
        elif kind < 0.82:
            queries.append(q.name.rsplit(".", 1)[-1])  # "dumps"
        elif kind < 0.90:
            word = rng.choice(words).lower()
            queries.append(word[: max(4, len(word) - 2)])
        elif kind < 0.95:
            queries.append(rng.choice(STOP_QUERIES))
        else:
            queries.append(rng.choice(NONSENSE))
    return queries


#: People of the demo; emails get a per-run tag so a second run in the same directory works.
DEMO_USERS: tuple[str, ...] = ("Aiko", "Bruno", "Chen", "Dana")
APPS: tuple[str, ...] = ("typing-trainer", "flashcards", "quiz")
ACTIONS: tuple[str, ...] = ("answered", "skipped", "reviewed", "bookmarked")
