"""One server per home: `animenb serve` holds an exclusive lock on `<home>/serve.lock` while it runs.

A second server on the same home would run the restart policy over the first one's running
jobs (re-queueing them into the same output folders) and share its queue; it is refused at
start with `HomeInUseError`, naming the holder's pid. The lock is `fcntl.flock` on an open
file: the kernel drops it when the holder exits, however it exits (kill -9 included), so a
stale lock file never blocks a restart.
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

LOCK_NAME = "serve.lock"


class HomeInUseError(RuntimeError):
    """Another live server holds this home."""


class HomeLock:
    def __init__(self, home: Path):
        self.path = Path(home) / LOCK_NAME
        self._fd: int | None = None

    def acquire(self) -> None:
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 64).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise HomeInUseError(
                f"another animenb serve (pid {holder}) is using the home {self.path.parent}; stop "
                f"it first, or give this server another --home."
            ) from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._fd = fd

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing the descriptor drops the lock
            self._fd = None
