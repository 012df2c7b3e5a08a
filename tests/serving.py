"""`cutover serve` as a real process, for the tests that talk HTTP to it."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from pathlib import Path


def start_serve(env: dict[str, str], cwd: Path) -> tuple[subprocess.Popen[str], str]:
    """`cutover serve` on a free loopback port, and its URL once it listens. Its log (stderr)
    is read to the end in a thread, so a full pipe never stalls it."""
    proc = subprocess.Popen(
        [sys.executable, "-c", "from proxy.app.cli import app; app()", "serve", "--port", "0"],
        env=env, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True, cwd=cwd)
    assert proc.stderr is not None
    for line in proc.stderr:
        if '"service.listening"' in line:
            threading.Thread(target=proc.stderr.read, daemon=True).start()
            return proc, str(json.loads(line)["url"])
    raise AssertionError(f"the service never said where it listens (exit {proc.wait()})")
