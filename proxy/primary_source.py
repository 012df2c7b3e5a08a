"""Where the primary comes from: the control record, and before it READ_PRIMARY_FILE or
READ_PRIMARY (the rule between them is proxy.control's). The one reader of each, for the
repository and for the commands that act beside the running processes.
"""

from __future__ import annotations

import os
from pathlib import Path

from config import Settings
from config.settings import BACKENDS, Backend
from proxy.connect import open_store
from proxy.control import Control, newest
from proxy.errors import PrimaryUnknown, StoreUnavailable


def read_primary_file(path: Path) -> Backend:
    """The word in READ_PRIMARY_FILE; `OSError` when the file is missing or unreadable,
    `ValueError` when it names no store."""
    word = path.read_text(encoding="utf-8").strip()
    if word not in BACKENDS:
        raise ValueError(f"{path} holds {word[:40]!r}: allowed values are sqlite or postgres")
    return word


def write_primary_file(path: Path, backend: Backend) -> None:
    """Rewrite READ_PRIMARY_FILE atomically (a reader sees the old word or the new one)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(backend + "\n", encoding="utf-8")
    os.replace(tmp, path)


def primary_before_record(settings: Settings) -> Backend:
    """The primary before any process has made the control record: the word in
    READ_PRIMARY_FILE when that is set, else READ_PRIMARY. `PrimaryUnknown` for a bad file."""
    path = settings.read_primary_file
    if path is None:
        return settings.read_primary
    try:
        return read_primary_file(path)
    except OSError as exc:
        raise PrimaryUnknown(
            f"READ_PRIMARY_FILE={path}: cannot read it ({exc.strerror or exc})") from None
    except ValueError as exc:
        raise PrimaryUnknown(f"READ_PRIMARY_FILE={exc}") from None


async def read_record(settings: Settings) -> Control | None:
    """The control record (the newest copy of the two stores'), for a command that acts
    beside the running processes; None when neither store holds one yet."""
    records = []
    for backend in BACKENDS:
        try:
            async with open_store(settings, backend) as store:
                records.append(await store.read_control())
        except StoreUnavailable:
            continue  # the other copy answers
    return newest(*records)


async def current_primary(settings: Settings) -> Backend:
    """The primary every process follows: the control record's, else `primary_before_record`."""
    record = await read_record(settings)
    return primary_before_record(settings) if record is None else record.primary
