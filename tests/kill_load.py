"""A write load that prints every acknowledged write; the SIGKILL test kills it mid-run."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

from config import Settings
from proxy import open_repository


async def main(sqlite_path: str, dsn: str) -> None:
    settings = Settings(sqlite_path=Path(sqlite_path), postgres_dsn=dsn, shadow_sample_rate=0.0)
    async with open_repository(settings) as repo:
        user = await repo.create_user(name="k", email="k@example.com")
        print("ACK user", user.id, flush=True)
        book = await repo.create_study_book(user_id=user.id, title="k")
        print("ACK study_book", book.id, flush=True)
        i = 0
        while True:
            i += 1
            q = await repo.create_question(study_book_id=book.id, language="en", category="c",
                                           difficulty="easy", question=f"q{i}", answer="a")
            print("ACK question", q.id, flush=True)
            t = await repo.record_typing_log(user_id=user.id, question_id=q.id, wpm=i,
                                             accuracy="50.5", took_ms=i)
            print("ACK typing_log", t.id, flush=True)


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2]))
