"""One writer process of tests/test_fleet.py: writes through the repository until told to
stop, and reports every acknowledged write with the store and epoch it committed under.

    python tests/fleet_writer.py INDEX SHARED_IDS_JSON STOP_FILE OUT_FILE
    (SQLITE_PATH, POSTGRES_DSN set)

Writes to OUT_FILE one JSON line per acknowledged write ({"t", "kind", "id", "value", "backend",
"epoch"}), one per epoch change it sees ({"t", "seen_epoch", "primary"}), and at the end
{"final_primary", "final_epoch"}.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from config import Settings
from proxy import NotFoundError, open_repository

OUT: list[str] = []


def emit(**fields: object) -> None:
    OUT.append(json.dumps(fields, default=str))


async def main(index: int, shared: list[str], stop: Path) -> None:
    settings = Settings.from_env()
    async with open_repository(settings, init_schema=False) as repo:
        user = await repo.create_user(name=f"w{index}", email=f"w{index}@example.com")
        own = [(await repo.create_study_book(user_id=user.id, title="start")).id
               for _ in range(3)]
        seen = repo.epoch
        n = 0
        while not stop.exists():
            n += 1
            if n % 2:
                row_id, kind = own[n % len(own)], "own"
            else:
                row_id, kind = uuid.UUID(shared[n % len(shared)]), "shared"
            value = f"w{index}-{n}"
            try:
                await repo.update_study_book(row_id, title=value)
            except NotFoundError:
                continue
            assert repo.last_write is not None
            backend, epoch = repo.last_write
            emit(t=time.time(), kind=kind, id=str(row_id), value=value, backend=backend,
                 epoch=epoch)
            if repo.epoch != seen:
                seen = repo.epoch
                emit(t=time.time(), seen_epoch=seen, primary=repo.read_primary)
            await asyncio.sleep(0.01)  # about 100 writes a second a process
        await asyncio.sleep(1.0)  # long enough to follow the last flip
        emit(final_primary=repo.read_primary, final_epoch=repo.epoch)


if __name__ == "__main__":
    try:
        asyncio.run(main(int(sys.argv[1]), json.loads(sys.argv[2]), Path(sys.argv[3])))
    finally:  # written at the end: a pipe nobody reads yet would stall the writer
        Path(sys.argv[4]).write_text("\n".join(OUT) + "\n")
