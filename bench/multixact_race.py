"""PostgreSQL's multixact race, step by step: a primary write refused with XX000 "new multixact
has more than one updating member" (see proxy.stores.postgres.MULTIXACT_RACE), and the store
running it again.

    .venv/bin/python bench/multixact_race.py [--dsn postgresql://...]

Needs gdb, allowed to attach to the server's backends (root, or the server's user). On the
app's schema (migrations, vocabulary triggers, foreign keys), one question q:

  A: BEGIN; UPDATE questions SET study_book_id = other WHERE id = q   (an update that aborts)
  B: BEGIN; INSERT INTO typing_logs (.., question_id = q)  -- its FK check: q FOR KEY SHARE,
                                      q's xmax is now a multixact {A no-key update, B key share}
  A: ROLLBACK, held by gdb at ProcArrayEndTransaction: the abort is in pg_xact, A still in the
     ProcArray (in the soak this lasts a few instructions)
  C: the store's update_question(q, study_book_id=other): PostgreSQL skips A as aborted
     (DoesMultiXactIdConflict) and then keeps it as running (MultiXactIdExpand) -> XX000

First with A held throughout (every attempt of C fails: the statement as PostgreSQL logs it),
then with A let go once C's first attempt failed (the store's second attempt succeeds).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import asyncpg

from bench._pg import scratch_database
from proxy.stores import postgres
from proxy.stores.postgres import PostgresStore


class Held:
    """A backend stopped by gdb at its next ProcArrayEndTransaction, until `release`."""

    def __init__(self, pid: int) -> None:
        self._go = Path(tempfile.mkdtemp(prefix="mxrace-")) / "go"
        self._gdb = subprocess.Popen(
            ["gdb", "-p", str(pid), "-batch", "-ex", "break ProcArrayEndTransaction",
             "-ex", "continue", "-ex", f"shell while [ ! -f {self._go} ]; do sleep 0.01; done",
             "-ex", "detach"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        time.sleep(3)  # attached, the breakpoint set

    def release(self) -> None:
        self._go.touch()

    def wait(self) -> str:
        out, _ = self._gdb.communicate(timeout=60)
        return out


async def race(dsn: str, store: PostgresStore, *, let_go_after_first: bool) -> str:
    user = await store.create_user(name="Aiko", email=f"{uuid.uuid4().hex}@example.com")
    book = await store.create_study_book(user_id=user.id, title="one")
    other = await store.create_study_book(user_id=user.id, title="two")
    q = await store.create_question(study_book_id=book.id, language="en", category="c",
                                    difficulty="d", question="json dumps", answer="serialize")
    a, b = await asyncpg.connect(dsn), await asyncpg.connect(dsn)
    held = None
    try:
        await a.execute("BEGIN")
        await a.execute("UPDATE questions SET study_book_id = $1 WHERE id = $2", other.id, q.id)
        await b.execute("BEGIN")
        await b.execute(
            "INSERT INTO typing_logs (id, user_id, question_id, wpm, accuracy, took_ms, "
            "created_at, row_version) VALUES ($1, $2, $3, 1, 1, 1, now(), 1)",
            uuid.uuid4(), user.id, q.id)
        held = Held(await a.fetchval("SELECT pg_backend_pid()"))
        rollback = asyncio.create_task(a.execute("ROLLBACK"))
        await asyncio.sleep(1.0)
        assert not rollback.done(), "A was not held in its abort"
        lost = postgres._lost_multixact_race
        losses = 0

        def counted(exc: BaseException) -> bool:
            nonlocal losses
            if not lost(exc):
                return False
            losses += 1
            if let_go_after_first and losses == 1:
                held.release()
                time.sleep(0.5)  # (blocking: the retry must not come before A has left)
            return True

        postgres._lost_multixact_race = counted
        try:
            moved = await store.update_question(q.id, study_book_id=other.id)
            outcome = f"moved after {losses} lost attempt(s): {moved.study_book_id == other.id}"
        except asyncpg.InternalServerError as exc:
            outcome = f"refused, all {postgres.MULTIXACT_RETRIES} attempts lost: {exc}"
        finally:
            postgres._lost_multixact_race = lost
        held.release()
        held.wait()
        await rollback
        await b.execute("ROLLBACK")
        return outcome
    finally:
        if held is not None:
            held.release()
        await a.close()
        await b.close()


async def main(server_dsn: str | None) -> None:
    async with scratch_database(server_dsn) as dsn:
        store = PostgresStore(dsn)
        try:
            await store.init_schema()
            print("A held throughout:     ", await race(dsn, store, let_go_after_first=False))
            print("A let go after a loss: ", await race(dsn, store, let_go_after_first=True))
        finally:
            await store.close()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dsn", help="a PostgreSQL server to create a database on")
    args: Any = parser.parse_args()
    if os.geteuid() != 0:
        print("(gdb must be allowed to attach to the server's backends)", file=sys.stderr)
    asyncio.run(main(args.dsn))
