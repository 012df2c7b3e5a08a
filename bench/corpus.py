"""The search-parity corpus and query set: real text from the standard library, deterministic.

    .venv/bin/python bench/corpus.py [--seed 1] [--sample 0] [--show 20]

Questions come from the docstrings of standard-library modules that have no side effect on
import (see `MODULES`): one question per documented module, class, function, method and
property, worded from its qualified name ("What does json.dumps do?", "What is the
json.JSONEncoder class?", "When is json.JSONDecodeError raised?") with the first paragraph of its
docstring as the answer. 100 Japanese questions (40 hand-written topics; nothing in the standard
library is Japanese) give the CJK queries something to find. Each module is one study book; the
books are dealt round-robin to `USERS` users.

Queries come in documented classes (`QUERY_CLASSES`), each aimed at one user who owns matching
questions; misspellings record the question they were meant to find. Everything is a function of
the seed and the interpreter's docstrings (so of the Python version: the figures quoted in the
README were made with CPython 3.11).
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import inspect
import io
import random
import re
import sys
import uuid
import warnings
from collections import Counter, defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from proxy.stores.searchtext import stem

#: Imported for their docstrings only. Chosen for having no side effect on import; left out on
#: purpose: antigravity (opens a browser), this (prints), idlelib, tkinter, turtle, turtledemo
#: (GUI), readline (changes the terminal), deprecated modules (they warn: cgi, telnetlib, ...),
#: and platform-specific ones that are often missing (curses, msvcrt, winreg).
_MODULES_TEXT = """
    abc argparse array ast asyncio asyncio.base_events asyncio.events asyncio.exceptions
    asyncio.futures asyncio.locks asyncio.protocols asyncio.queues asyncio.runners
    asyncio.streams asyncio.subprocess asyncio.taskgroups asyncio.tasks asyncio.timeouts
    asyncio.transports asyncio.unix_events base64 bdb binascii bisect builtins bz2 calendar
    cmath cmd code codecs codeop collections collections.abc colorsys compileall
    concurrent.futures concurrent.futures.process concurrent.futures.thread configparser
    contextlib contextvars copy copyreg csv ctypes ctypes.util dataclasses datetime dbm decimal
    difflib dis doctest email email.base64mime email.charset email.contentmanager
    email.encoders email.errors email.feedparser email.generator email.header
    email.headerregistry email.iterators email.message email.mime.application email.mime.audio
    email.mime.base email.mime.image email.mime.message email.mime.multipart
    email.mime.nonmultipart email.mime.text email.parser email.policy email.quoprimime
    email.utils enum errno faulthandler filecmp fileinput fnmatch fractions ftplib functools gc
    getopt gettext glob graphlib gzip hashlib heapq hmac html html.entities html.parser http
    http.client http.cookiejar http.cookies http.server imaplib importlib importlib.abc
    importlib.machinery importlib.metadata importlib.resources importlib.util inspect io
    ipaddress itertools json json.decoder json.encoder json.scanner keyword linecache locale
    logging logging.config logging.handlers lzma mailbox marshal math mimetypes mmap
    modulefinder multiprocessing multiprocessing.connection multiprocessing.context
    multiprocessing.dummy multiprocessing.heap multiprocessing.managers multiprocessing.pool
    multiprocessing.process multiprocessing.queues multiprocessing.reduction
    multiprocessing.shared_memory multiprocessing.sharedctypes multiprocessing.synchronize
    netrc ntpath numbers opcode operator optparse os os.path pathlib pdb pickle pickletools
    pkgutil platform plistlib poplib pprint profile pstats pty py_compile pyclbr pydoc queue
    quopri random re reprlib runpy sched secrets select selectors shelve shlex shutil signal
    site smtplib socket socketserver sqlite3 ssl stat statistics string stringprep struct
    subprocess symtable sys sysconfig tabnanny tarfile tempfile textwrap threading time timeit
    token tokenize tomllib trace traceback tracemalloc types typing unicodedata unittest
    unittest.case unittest.loader unittest.mock unittest.result unittest.runner unittest.suite
    urllib.error urllib.parse urllib.request urllib.response urllib.robotparser uuid warnings
    wave weakref wsgiref.handlers wsgiref.headers wsgiref.simple_server wsgiref.util
    wsgiref.validate xml.dom xml.dom.domreg xml.dom.expatbuilder xml.dom.minicompat
    xml.dom.minidom xml.dom.pulldom xml.etree.ElementInclude xml.etree.ElementTree
    xml.parsers.expat xml.sax xml.sax.expatreader xml.sax.handler xml.sax.saxutils
    xml.sax.xmlreader xmlrpc.client xmlrpc.server zipapp zipfile zipimport zlib zoneinfo
"""
MODULES: tuple[str, ...] = tuple(sorted(_MODULES_TEXT.split()))
EXCLUDED = frozenset({"antigravity", "this", "idlelib", "tkinter", "turtle", "turtledemo"})
USERS = 8
NAMESPACE = uuid.UUID("0b6c7f0e-4f4e-4d55-9a39-1c1c2f0a5e11")  # ids are uuid5(NAMESPACE, key)

# Japanese study notes: (topic, answer). Questions are "<topic>とは何ですか？" and
# "<topic>について教えてください", so a topic is a substring of a longer CJK token on both engines.
JAPANESE: tuple[tuple[str, str], ...] = (
    ("機械学習の基礎", "データから規則を学ぶ方法の入門。教師あり学習と教師なし学習がある。"),
    ("深層学習の仕組み", "多層のニューラルネットワークで特徴を自動的に学習する。"),
    ("強化学習の考え方", "報酬を最大にする行動を試行錯誤で学習する枠組み。"),
    ("データベースの正規化", "重複をなくすために表を分割する設計手法。"),
    ("索引の使い方", "検索を速くするためにデータベースに索引を作る。"),
    ("全文検索の仕組み", "文書を単語に分けて転置索引を作り、検索語を含む文書を探す。"),
    ("形態素解析の基礎", "日本語の文を単語に分割し品詞を付ける処理。"),
    ("正規表現の書き方", "文字列のパターンを記号で表し、検索や置換に使う。"),
    ("文字コードと符号化", "文字をバイト列に変換する規則。UTF-8が広く使われる。"),
    ("例外処理の考え方", "エラーが起きたときに処理を中断せずに対応する仕組み。"),
    ("型ヒントの書き方", "関数の引数と戻り値の型を注釈として書く。"),
    ("単体テストの書き方", "関数ごとに期待する結果を確かめるテストを書く。"),
    ("非同期処理の入門", "待ち時間の間に別の処理を進めるプログラミングの方法。"),
    ("並行処理と並列処理", "複数の処理を同時に進める方法と、実際に同時に実行する方法の違い。"),
    ("辞書型の使い方", "キーと値の組を保存し、キーで値を素早く取り出す。"),
    ("リストとタプルの違い", "リストは変更でき、タプルは変更できない。"),
    ("集合の演算", "和集合、積集合、差集合を計算する。"),
    ("関数の定義", "defで名前と引数を決めて処理をまとめる。"),
    ("クラスと継承", "既存のクラスの機能を引き継いで新しいクラスを作る。"),
    ("ファイルの読み書き", "openでファイルを開き、読み込みと書き込みを行う。"),
    ("標準ライブラリの活用", "Pythonに最初から含まれるモジュールを使いこなす。"),
    ("仮想環境の作り方", "プロジェクトごとにパッケージを分けて管理する。"),
    ("パッケージ管理の基本", "pipでパッケージを入れ、依存関係を記録する。"),
    ("ソートの仕組み", "要素を比較して順番に並べ替える。安定なソートは同じ値の順序を保つ。"),
    ("二分探索の考え方", "整列済みの列を半分ずつ絞り込んで目的の値を探す。"),
    ("ハッシュ関数の性質", "同じ入力から常に同じ値を返し、衝突が少ないことが望ましい。"),
    ("暗号化と署名", "データを秘密にする方法と、改ざんを検出する方法。"),
    ("ネットワークの基礎", "パケットとプロトコルで計算機どうしが通信する。"),
    ("ソケット通信の入門", "ソケットを開いて接続し、バイト列を送受信する。"),
    ("スレッドとロック", "共有データを守るためにロックで排他制御を行う。"),
    ("日付と時刻の扱い", "タイムゾーンを意識して日時を計算し表示する。"),
    ("ログの出力", "プログラムの動作を記録し、問題の調査に役立てる。"),
    ("設定ファイルの読み込み", "INI形式などの設定を読み込んでプログラムに渡す。"),
    ("圧縮と展開", "データを小さくして保存し、必要なときに元に戻す。"),
    ("統計の基礎", "平均、中央値、分散でデータの特徴をまとめる。"),
    ("乱数の生成", "再現性のために種を固定して疑似乱数を作る。"),
    ("数値計算の誤差", "浮動小数点数は丸め誤差を含むので比較に注意する。"),
    ("文字列の整形", "書式指定で数値や文字列を見やすく並べる。"),
    ("イテレータと生成器", "要素を一つずつ取り出す仕組みと、それを簡単に作る関数。"),
    ("デコレータの使い方", "関数を包んで前後に処理を加える。"),
)
JAPANESE_TEMPLATES = ("{topic}とは何ですか？", "{topic}について教えてください")

_WORD = re.compile(r"[^\W_]+")
_SIGNATURE = re.compile(r"^[\w.\[\]]+\(.*\)(\s*->.*)?$")
# words too common in the question template to make a useful keyword
_TEMPLATE_WORDS_TEXT = "what does do is the class module for used raised when"
_TEMPLATE_WORDS = frozenset(_TEMPLATE_WORDS_TEXT.split())
_STOP_WORDS_TEXT = """
    a an and are as at be by for from has have he how i if in is it its of on or that the this
    to was were what when where which who why will with you your do does can
"""
STOP_WORDS = frozenset(_STOP_WORDS_TEXT.split())


@dataclass(frozen=True, slots=True)
class Question:
    id: uuid.UUID
    user: int  # index into Corpus.users
    book: str  # the module (or "日本語ノート")
    kind: str  # module, class, exception, function, method, property, japanese
    name: str  # the qualified name ("" for Japanese notes)
    question: str
    answer: str


@dataclass(frozen=True, slots=True)
class Query:
    cls: str  # one of QUERY_CLASSES
    text: str
    user: int
    target: uuid.UUID | None = None  # the question a misspelling was meant to find


@dataclass
class Corpus:
    questions: list[Question]
    users: list[uuid.UUID]
    books: dict[str, tuple[uuid.UUID, int]]  # book name -> (id, user index)
    skipped_modules: list[str] = field(default_factory=list)

    def by_user(self) -> dict[int, list[Question]]:
        out: dict[int, list[Question]] = defaultdict(list)
        for q in self.questions:
            out[q.user].append(q)
        return out


QUERY_CLASSES: dict[str, str] = {
    "single": "one English word taken from a question's answer or name",
    "several": "two or three words from the same answer, in their order there",
    "phrase": "a question's exact wording, as typed (\"What does json.dumps do?\")",
    "misspelling": "a function, class or method name with one typo (transposition, deletion, "
                   "doubling, neighbour key), half of them after their module or class name; "
                   "spelled right, the query singles out at most 10 of the user's questions, "
                   "the intended one (recorded) among them",
    "dotted": "a qualified name as code writes it (json.dumps, os.path.join, str.join)",
    "stopword": "stop-word heavy English (\"what is the ...\", \"how do I ...\"), a few made "
                "of stop words only",
    "operator": "text with FTS5/tsquery operator characters: C++, self-study, key:value, "
                "\"quoted words\", -word, word*, word?",
    "cjk": "Japanese: a whole topic, a 2-4 character piece of one, mixed with Latin words",
}
PLAIN_CLASSES = ("single", "several")


# -- the corpus ------------------------------------------------------------------------------


def _first_paragraph(doc: str | None) -> str | None:
    """The docstring's first paragraph that is prose (not a C signature line), one line."""
    if not doc or not isinstance(doc, str):
        return None
    for para in inspect.cleandoc(doc).split("\n\n"):
        text = " ".join(para.split())
        if not text or _SIGNATURE.match(text) or text.startswith(("--", "..")):
            continue
        if len(text) < 20 or len(_WORD.findall(text)) < 4:
            return None
        return text[:1000]
    return None


def _import_quietly(name: str) -> Any | None:
    """The module, or None if it fails to import or prints or warns while importing."""
    out = io.StringIO()
    with warnings.catch_warnings(record=True) as caught, contextlib.redirect_stdout(out), \
            contextlib.redirect_stderr(out):
        warnings.simplefilter("always")
        try:
            module = importlib.import_module(name)
        except Exception:
            return None
    if out.getvalue() or any(issubclass(w.category, DeprecationWarning) for w in caught):
        return None
    return module


def _belongs(obj: Any, module: str) -> bool:
    """Defined by `module` itself or by its C accelerator (`_json`, `posix`), not re-exported.

    `module` is the module's own `__name__` (os.path is posixpath).
    """
    owner = getattr(obj, "__module__", None) or ""
    return owner == module or owner.startswith("_") or (module == "os" and owner == "posix")


def _documented(module_name: str, module: Any) -> Iterator[tuple[str, str, str]]:
    """(kind, qualified name, answer) for the module and its documented public members."""
    prefix = "" if module_name == "builtins" else module_name + "."
    answer = _first_paragraph(module.__doc__)
    if answer and module_name != "builtins":
        yield "module", module_name, answer
    # typing.io and friends warn when touched; the members are only read
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield from _members(module, prefix)


def _members(module: Any, prefix: str) -> Iterator[tuple[str, str, str]]:
    for name, obj in sorted(vars(module).items()):
        if name.startswith("_") or not (inspect.isclass(obj) or inspect.isroutine(obj)):
            continue
        if not _belongs(obj, module.__name__):
            continue
        qual = prefix + name
        answer = _first_paragraph(getattr(obj, "__doc__", None))
        if inspect.isclass(obj):
            if answer:
                kind = "exception" if issubclass(obj, BaseException) else "class"
                yield kind, qual, answer
            for attr, value in sorted(vars(obj).items()):
                if attr.startswith("_"):
                    continue
                target = value.__func__ if isinstance(value, classmethod | staticmethod) else value
                if not (inspect.isroutine(target) or isinstance(target, property)):
                    continue
                doc = _first_paragraph(getattr(target, "__doc__", None))
                if doc and doc != answer:
                    kind = "property" if isinstance(target, property) else "method"
                    yield kind, f"{qual}.{attr}", doc
        elif answer:
            yield "function", qual, answer


def question_text(kind: str, name: str) -> str:
    if kind == "module":
        return f"What is the {name} module for?"
    if kind == "class":
        return f"What is the {name} class?"
    if kind == "exception":
        return f"When is {name} raised?"
    if kind == "property":
        return f"What is {name}?"
    return f"What does {name} do?"


def build_corpus(modules: tuple[str, ...] = MODULES, users: int = USERS) -> Corpus:
    """Every documented name of `modules` as a question, plus the Japanese notes."""
    user_ids = [uuid.uuid5(NAMESPACE, f"user:{i}") for i in range(users)]
    books: dict[str, tuple[uuid.UUID, int]] = {}
    questions: list[Question] = []
    seen_objects: set[str] = set()
    skipped = []
    for module_name in modules:
        if module_name.split(".")[0] in EXCLUDED:
            continue
        module = _import_quietly(module_name)
        if module is None:
            skipped.append(module_name)
            continue
        user = len(books) % users
        books[module_name] = (uuid.uuid5(NAMESPACE, f"book:{module_name}"), user)
        for kind, name, answer in _documented(module_name, module):
            if name in seen_objects:
                continue
            seen_objects.add(name)
            questions.append(Question(uuid.uuid5(NAMESPACE, f"q:{name}"), user, module_name,
                                      kind, name, question_text(kind, name), answer))
    # two users study Japanese notes: the CJK queries have targets for both
    for n, user in enumerate((1, 5)):
        book = f"日本語ノート{n + 1}"
        books[book] = (uuid.uuid5(NAMESPACE, f"book:{book}"), user)
        for i, (topic, answer) in enumerate(JAPANESE):
            if i % 2 != n and i >= 10:  # the first ten topics in both books, the rest split
                continue
            for template in JAPANESE_TEMPLATES:
                text = template.format(topic=topic)
                questions.append(Question(uuid.uuid5(NAMESPACE, f"q:{book}:{text}"), user,
                                          book, "japanese", "", text, answer))
    return Corpus(questions, user_ids, books, skipped)


def sample_corpus(corpus: Corpus, n: int, seed: int) -> Corpus:
    """A smaller corpus: `n` questions drawn with a fixed seed, Japanese ones always kept."""
    rng = random.Random(seed)
    english = [q for q in corpus.questions if q.kind != "japanese"]
    japanese = [q for q in corpus.questions if q.kind == "japanese"]
    keep = {q.id for q in rng.sample(english, min(n, len(english)))}
    kept = [q for q in english if q.id in keep] + japanese
    used_books = {q.book for q in kept}
    return Corpus(kept, corpus.users, {b: v for b, v in corpus.books.items() if b in used_books},
                  corpus.skipped_modules)


def corpus_rows(corpus: Corpus) -> dict[str, list[dict[str, Any]]]:
    """The rows to load, by entity name, with the repository's column names."""
    from datetime import UTC, datetime, timedelta

    base = datetime(2024, 1, 1, tzinfo=UTC)
    users = [{"id": uid, "name": f"Parity user {i}", "email": f"parity{i}@example.com",
              "created_at": base, "updated_at": base} for i, uid in enumerate(corpus.users)]
    books = [{"id": bid, "user_id": corpus.users[user], "title": name, "description": None,
              "created_at": base, "updated_at": base}
             for name, (bid, user) in corpus.books.items()]
    questions = []
    for i, q in enumerate(corpus.questions):
        when = base + timedelta(seconds=i)
        questions.append({
            "id": q.id, "study_book_id": corpus.books[q.book][0],
            "language": "ja" if q.kind == "japanese" else "en", "category": q.book[:100],
            "difficulty": q.kind, "question": q.question, "answer": q.answer,
            "created_at": when, "updated_at": when,
        })
    return {"user": users, "study_book": books, "question": questions}


# -- the queries -----------------------------------------------------------------------------


def words(text: str) -> list[str]:
    return _WORD.findall(text)


def _keywords(text: str) -> list[str]:
    """Words worth searching for: alphabetic, 3+ letters, not stop or template words."""
    return [w for w in words(text) if w.isascii() and w.isalpha() and len(w) >= 3
            and w.casefold() not in STOP_WORDS and w.casefold() not in _TEMPLATE_WORDS]


_KEYBOARD_ROWS = ("qwertyuiop", "asdfghjkl", "zxcvbnm")
_NEIGHBOURS = {
    ch: row[max(0, i - 1)] + row[min(len(row) - 1, i + 1)]
    for row in _KEYBOARD_ROWS for i, ch in enumerate(row)
}


def misspell(word: str, rng: random.Random) -> str:
    """One typo inside the word (never its first letter): what people actually type."""
    w = word
    for _ in range(20):
        i = rng.randrange(1, len(w) - 1)
        kind = rng.randrange(4)
        if kind == 0:  # transposition
            typo = w[:i] + w[i + 1] + w[i] + w[i + 2:]
        elif kind == 1:  # deletion
            typo = w[:i] + w[i + 1:]
        elif kind == 2:  # doubling
            typo = w[:i] + w[i] + w[i:]
        else:  # a neighbouring key
            low = w[i].lower()
            typo = w[:i] + rng.choice(_NEIGHBOURS.get(low, low)) + w[i + 1:]
        if typo.casefold() != w.casefold():
            return typo
    return w[:-1]


def build_queries(corpus: Corpus, seed: int = 1, per_class: dict[str, int] | None = None
                  ) -> list[Query]:
    """The query set: each class's count (defaults below) drawn with `seed`."""
    counts = {"single": 60, "several": 60, "phrase": 50, "misspelling": 60, "dotted": 40,
              "stopword": 40, "operator": 40, "cjk": 30}
    counts.update(per_class or {})
    rng = random.Random(seed)
    english = [q for q in corpus.questions if q.kind != "japanese"]
    japanese = [q for q in corpus.questions if q.kind == "japanese"]
    by_user = corpus.by_user()
    # a user's stems (as both engines index them), so a misspelling is checked against them
    stems: dict[int, set[str]] = {
        u: {stem(w) for q in qs for w in words(q.question + " " + q.answer)}
        for u, qs in by_user.items()
    }
    folded = {q.id: {w.casefold() for w in words(q.question + " " + q.answer)}
              for q in corpus.questions}
    named = [q for q in english if q.kind in ("function", "method", "class")]
    queries: list[Query] = []
    seen: set[tuple[str, int]] = set()

    def add(cls: str, text: str, user: int, target: uuid.UUID | None = None) -> bool:
        text = text.strip()
        if not text or (text, user) in seen or len(text) > 512:
            return False
        seen.add((text, user))
        queries.append(Query(cls, text, user, target))
        return True

    def fill(cls: str, make: Any) -> None:
        made, tries = 0, 0
        while made < counts[cls] and tries < counts[cls] * 50:
            tries += 1
            made += bool(make())

    def single() -> bool:
        q = rng.choice(english)
        pool = _keywords(q.answer) + _keywords(q.name.replace(".", " "))
        return bool(pool) and add("single", rng.choice(pool).lower(), q.user)

    def several() -> bool:
        q = rng.choice(english)
        pool = list(dict.fromkeys(w.lower() for w in _keywords(q.answer)))
        if len(pool) < 2:
            return False
        picked = sorted(rng.sample(range(len(pool)), rng.choice((2, 2, 3)) if len(pool) > 2
                                   else 2))
        return add("several", " ".join(pool[i] for i in picked), q.user)

    def phrase() -> bool:
        q = rng.choice(english)
        return add("phrase", q.question, q.user, q.id)

    def misspelling() -> bool:
        q = rng.choice(named)
        # the name's own last part (dumps in json.dumps, recv_into's recv), so that the query
        # points at this question rather than at every method of its class
        last = q.name.split(".")[-1]
        parts = [p for p in last.split("_") if p.isalpha() and len(p) >= 5]
        if not parts:
            return False
        part = max(parts, key=len)
        context = q.name.split(".")[-2] if q.kind == "method" else q.name.split(".")[0]
        with_context = rng.random() < 0.5 and context.casefold() != part.casefold()
        spelled = f"{context} {part}" if with_context else part
        # a typo test, not an ambiguity test: spelled right, the query must single out at most
        # 10 of the user's questions, this one among them (whole words, no stemming)
        wanted = {w.casefold() for w in words(spelled)}
        matching = [x.id for x in by_user[q.user] if wanted <= folded[x.id]]
        if q.id not in matching or len(matching) > 10:
            return False
        typo = misspell(part, rng)
        if stem(typo) in stems[q.user]:
            return False  # full text would find the typo: a word of its own, not a misspelling
        text = f"{context} {typo}" if with_context else typo
        return add("misspelling", text, q.user, q.id)

    def dotted() -> bool:
        q = rng.choice([x for x in english if "." in x.name and x.kind != "module"])
        return add("dotted", q.name, q.user)

    def stopword() -> bool:
        if rng.random() < 0.15:
            text = rng.choice(("what is the", "how do i", "what does it do", "is it the",
                               "how to", "what is a", "when is it", "it is"))
            return add("stopword", text, rng.randrange(len(corpus.users)))
        q = rng.choice(english)
        pool = _keywords(q.answer) + _keywords(q.name.replace(".", " "))
        if not pool:
            return False
        w = rng.choice(pool).lower()
        template = rng.choice(("what is the {w}", "how do i use the {w}", "what does the {w} do",
                               "what is a {w} for", "how to {w} it", "the {w} of the"))
        return add("stopword", template.format(w=w), q.user)

    def operator() -> bool:
        q = rng.choice(english)
        ws = words(q.answer)
        hyphenated = re.findall(r"\b\w+(?:-\w+)+\b", q.answer)
        form = rng.randrange(7)
        if form == 0 and hyphenated:
            text = rng.choice(hyphenated)
        elif form == 1 and len(ws) >= 2:
            i = rng.randrange(len(ws) - 1)
            text = f"{ws[i]}:{ws[i + 1]}"
        elif form == 2 and len(ws) >= 2:
            i = rng.randrange(len(ws) - 1)
            text = f'"{ws[i]} {ws[i + 1]}"'
        elif form == 3 and _keywords(q.answer):
            text = "-" + rng.choice(_keywords(q.answer)).lower()
        elif form == 4 and _keywords(q.answer):
            text = rng.choice(_keywords(q.answer)).lower()[:5] + "*"
        elif form == 5 and _keywords(q.answer):
            text = rng.choice(_keywords(q.answer)).lower() + "?"
        elif form == 6:
            text = rng.choice(("C++", "C", "C struct", "key:value", "self-study", "AND",
                               "NOT", "OR", "don't", "(file", "a*", "x^2", "100%", "C#"))
        else:
            return False
        return add("operator", text, q.user)

    def cjk() -> bool:
        q = rng.choice(japanese)
        topic = q.question.split("とは")[0].split("について")[0]
        form = rng.randrange(5)
        if form == 0:
            text = topic
        elif form == 1:
            size = rng.choice((2, 2, 3, 4))
            if len(topic) <= size:
                return False
            start = rng.randrange(len(topic) - size + 1)
            text = topic[start:start + size]
        elif form == 2:
            text = q.question
        elif form == 3:
            text = "Python " + topic[:rng.choice((2, 3))]
        else:
            text = topic[:2] + " " + topic[-2:]
        return add("cjk", text, q.user)

    for cls, make in (("single", single), ("several", several), ("phrase", phrase),
                      ("misspelling", misspelling), ("dotted", dotted), ("stopword", stopword),
                      ("operator", operator), ("cjk", cjk)):
        fill(cls, make)
    return queries


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--sample", type=int, default=0, help="questions to keep (0 = all)")
    parser.add_argument("--show", type=int, default=3, help="queries to print per class")
    args = parser.parse_args(argv)
    corpus = build_corpus()
    if args.sample:
        corpus = sample_corpus(corpus, args.sample, args.seed)
    queries = build_queries(corpus, args.seed)
    kinds = Counter(q.kind for q in corpus.questions)
    per_user = Counter(q.user for q in corpus.questions)
    print(f"{len(corpus.questions)} questions from {len(corpus.books)} books, "
          f"{len(corpus.users)} users; by kind: {dict(sorted(kinds.items()))}")
    print(f"per user: {[per_user[i] for i in range(len(corpus.users))]}")
    if corpus.skipped_modules:
        print(f"modules skipped (failed, printed or warned on import): {corpus.skipped_modules}")
    by_class: dict[str, list[Query]] = defaultdict(list)
    for q in queries:
        by_class[q.cls].append(q)
    print(f"{len(queries)} queries")
    for cls, description in QUERY_CLASSES.items():
        shown = ", ".join(repr(q.text) for q in by_class[cls][:args.show])
        print(f"  {cls:<12} {len(by_class[cls]):>3}  {description}\n               e.g. {shown}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
