"""Write versions: microseconds since the epoch, strictly increasing within a process.

A mirror keeps a row's highest version, so a replay of an older write is ignored. Wall-clock
based versions stay ordered across restarts and across processes writing the same rows
(the CLI beside the service), as long as clocks do not step back by more than a write's gap.
"""

from __future__ import annotations

import threading
import time

_lock = threading.Lock()
_last = 0


def next_version() -> int:
    global _last
    with _lock:
        _last = max(_last + 1, time.time_ns() // 1000)
        return _last
