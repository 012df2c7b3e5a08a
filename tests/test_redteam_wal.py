"""Red team of the WAL switch (0ac6aa7): opening a file whose journal mode never becomes WAL
must end, with the file open or an error, never spin."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_a_shadow_store_whose_file_cannot_be_in_wal_mode_opens_or_fails_never_spins(
        tmp_path: Path) -> None:
    """`PRAGMA journal_mode=WAL` on an in-memory database answers `memory`, without an error.
    ShadowStore._use_wal retries only on an error, so its loop never ends (one core at 100%;
    before 0ac6aa7 the store opened). Run in a child with a time limit: the suite must not hang."""
    code = ("from shadow.store import ShadowStore\n"
            "try:\n"
            "    ShadowStore(':memory:').close()\n"
            "    print('opened')\n"
            "except Exception as exc:\n"
            "    print('raised', type(exc).__name__, exc)\n")
    try:
        done = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, timeout=20,
                              capture_output=True, text=True, env={"PYTHONPATH": str(ROOT)})
    except subprocess.TimeoutExpired:
        raise AssertionError("ShadowStore(':memory:') still opening after 20 s "
                             "(shadow/store.py ShadowStore._use_wal)") from None
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith(("opened", "raised OperationalError")), done.stdout
