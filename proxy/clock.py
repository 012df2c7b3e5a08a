"""The clock reading a write brings to its primary: microseconds since the epoch, strictly
increasing within a process.

It is only a floor. The primary gives each write the version `max(the version it replaces + 1,
this reading)` inside its own transaction (see proxy.stores.base), so the order of a row's
versions is the primary's commit order even when this clock steps back or another process's
clock runs ahead; the reading keeps versions close to wall time, which makes them readable.
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
