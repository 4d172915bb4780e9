"""The one place that opens SQLite connections and transactions.

WAL journal (readers never block the writer), `busy_timeout` 5 s, foreign keys on,
`synchronous=FULL` so a commit survives power loss before the server answers 202. A write whose loss
on power failure is harmless (`transaction(durable=False)`: progress, queued -> running, which the
restart policy redoes) commits with `synchronous=NORMAL`: in WAL mode it still survives a crash of the
process and never corrupts, and it skips the fsync (0.6 ms on a quiet disk, several ms beside jobs writing
images; on the event loop's thread). Reads (`read()`) take no write lock.
The file is created 0600 (it holds private prompts and token hashes) in a 0700 folder when
it makes one; SQLite gives the -wal and -shm files the database file's mode.
One connection per database, shared across threads behind an RLock; every read and
write goes through `transaction()`, which commits or rolls back.
"""
from __future__ import annotations

import os
import sqlite3
import threading
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator


def make_private(path: Path) -> None:
    """Create `path` (and a missing parent, 0700) readable by its owner only; tighten an existing one to 0600."""
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.close(os.open(path, os.O_CREAT | os.O_RDWR, 0o600))
    for part in (path, path.with_name(path.name + "-wal"), path.with_name(path.name + "-shm")):
        if part.exists():
            os.chmod(part, 0o600)


class SqliteDatabase:
    def __init__(self, path: str | Path = ":memory:"):
        self.path = str(path)
        if self.path != ":memory:":
            make_private(Path(self.path))
        self._lock = threading.RLock()
        self._conn = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None, timeout=5.0)
        self._conn.row_factory = sqlite3.Row
        self._conn.execute("PRAGMA busy_timeout = 5000")
        self._conn.execute("PRAGMA foreign_keys = ON")
        if self.path != ":memory:":
            self._conn.execute("PRAGMA journal_mode = WAL")
        self._conn.execute("PRAGMA synchronous = FULL")

    @property
    def journal_mode(self) -> str:
        with self.transaction() as cur:
            return cur.execute("PRAGMA journal_mode").fetchone()[0]

    @contextmanager
    def transaction(self, *, durable: bool = True) -> Iterator[sqlite3.Cursor]:
        """Yield a cursor inside BEGIN IMMEDIATE ... COMMIT (ROLLBACK on any exception); `durable=False`
        commits without the fsync (module docstring).

        Re-entrant on one thread: a nested call joins the outer transaction (and its durability).
        """
        with self._begin("BEGIN IMMEDIATE", durable) as cur:
            yield cur

    @contextmanager
    def read(self) -> Iterator[sqlite3.Cursor]:
        """Yield a cursor inside a deferred BEGIN ... COMMIT: one consistent snapshot, no write lock."""
        with self._begin("BEGIN", True) as cur:
            yield cur

    @contextmanager
    def _begin(self, begin: str, durable: bool) -> Iterator[sqlite3.Cursor]:
        with self._lock:
            if self._conn.in_transaction:
                yield self._conn.cursor()
                return
            cur = self._conn.cursor()
            if not durable:
                cur.execute("PRAGMA synchronous = NORMAL")
            cur.execute(begin)
            try:
                yield cur
            except BaseException:
                self._conn.rollback()
                raise
            else:
                self._conn.commit()
            finally:
                if not durable:
                    cur.execute("PRAGMA synchronous = FULL")
                cur.close()

    @contextmanager
    def cache_size(self, kib: int) -> Iterator[None]:
        """Use a page cache of `kib` KiB for the duration (a bulk write), then SQLite's default again."""
        with self._lock:
            previous = self._conn.execute("PRAGMA cache_size").fetchone()[0]
            self._conn.execute(f"PRAGMA cache_size = {-int(kib)}")
            try:
                yield
            finally:
                self._conn.execute(f"PRAGMA cache_size = {int(previous)}")

    def checkpoint(self) -> None:
        """Fold the WAL into the main file (before copying it as a backup)."""
        with self._lock:
            self._conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")

    def close(self) -> None:
        with self._lock:
            self._conn.close()
