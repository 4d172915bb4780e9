"""The one place that opens SQLite connections and transactions.

WAL journal (readers never block the writer), `busy_timeout` 5 s, foreign keys on,
`synchronous=FULL` so a commit survives power loss before the server answers 202. A write whose loss
on power failure is harmless (`transaction(durable=False)`: progress, queued -> running, which the
restart policy redoes) commits with `synchronous=NORMAL`: in WAL mode it still survives a crash of the
process and never corrupts, and it skips the fsync (0.6 ms on a quiet disk, several ms beside jobs writing
images; on the event loop's thread). Reads (`read()`) take no write lock.
The file is created 0600 (it holds private prompts and token hashes) in a 0700 folder when
it makes one; SQLite gives the -wal and -shm files the database file's mode.
Two connections per database, each shared across threads behind its own lock: one for writes
(`transaction()`, which commits or rolls back) and one for reads (`read()`), so a read never waits
behind a write that waits for another process's lock.

A write that cannot happen (another process holds the write lock past the busy timeout, or the disk is
full) raises `StoreUnavailable`; nothing was written, and `fault` says why until a write succeeds again
(/health reports it). A request's write (submit, cancel, claim, progress) runs on a thread marked by
`wait_briefly()` (the runner's request writers) and waits at most `BRIEF_WAIT` s, for the lock of this
process and for the database's: the request answers 503 fast and the event loop never waits. A write still
made on the event loop's thread waits at most `BRIEF_WAIT` s too. Other threads (the job-end writer) wait
the full busy timeout.
"""

from __future__ import annotations

import asyncio
import os
import sqlite3
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from .jobs_common import StoreUnavailable

BUSY_TIMEOUT_MS = 5000
BRIEF_WAIT = 0.25  # seconds a request's write may wait (module docstring)
_brief = threading.local()


def wait_briefly() -> None:
    """Mark this thread: its writes wait at most `BRIEF_WAIT` s (a thread pool's `initializer`)."""
    _brief.on = True


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
        self._conn = self._connect()
        if self.path != ":memory:":
            self._conn.execute("PRAGMA journal_mode = WAL")
        self._conn.execute("PRAGMA synchronous = FULL")
        # ":memory:" is one database per connection: there, reads share the writer's.
        self._read_lock = self._lock if self.path == ":memory:" else threading.RLock()
        self._reader = self._conn if self.path == ":memory:" else self._connect()
        self._writing = threading.local()  # a thread inside transaction(): its reads join it
        self.fault: dict | None = None  # {"reason", "since"} while writes fail (module docstring)

    def _connect(self) -> sqlite3.Connection:
        conn = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None, timeout=BUSY_TIMEOUT_MS / 1000)
        conn.row_factory = sqlite3.Row
        conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
        conn.execute("PRAGMA foreign_keys = ON")
        return conn

    @property
    def journal_mode(self) -> str:
        with self.transaction() as cur:
            return cur.execute("PRAGMA journal_mode").fetchone()[0]

    @contextmanager
    def transaction(self, *, durable: bool = True, patient: bool = False) -> Iterator[sqlite3.Cursor]:
        """Yield a cursor inside BEGIN IMMEDIATE ... COMMIT (ROLLBACK on any exception); `durable=False`
        commits without the fsync (module docstring). Raises `StoreUnavailable` when the write cannot
        happen now; `patient` waits the full busy timeout even on the event loop's thread (start-up,
        before any request is served).

        Re-entrant on one thread: a nested call joins the outer transaction (and its durability).
        """
        if getattr(self._writing, "depth", 0):
            with self._lock:
                yield self._conn.cursor()
            return
        brief = not patient and (getattr(_brief, "on", False) or _on_event_loop())
        if not self._lock.acquire(timeout=BRIEF_WAIT if brief else -1):
            raise self._failed("another write of this server holds the database")
        self._writing.depth = 1
        try:
            if brief:
                self._conn.execute(f"PRAGMA busy_timeout = {int(BRIEF_WAIT * 1000)}")
            try:
                with self._begin(self._conn, "BEGIN IMMEDIATE", durable) as cur:
                    yield cur
            except sqlite3.OperationalError as exc:
                unavailable = self._unavailable(exc)
                if unavailable is None:
                    raise
                raise unavailable from exc
            self.fault = None
        finally:
            if brief:
                self._conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
            self._writing.depth = 0
            self._lock.release()

    @contextmanager
    def read(self) -> Iterator[sqlite3.Cursor]:
        """Yield a cursor inside a deferred BEGIN ... COMMIT: one consistent snapshot, no write lock.
        Inside `transaction()` on the same thread it joins that transaction (and sees its writes)."""
        if getattr(self._writing, "depth", 0):
            with self._lock:
                yield self._conn.cursor()
            return
        with self._read_lock, self._begin(self._reader, "BEGIN", True) as cur:
            yield cur

    @staticmethod
    @contextmanager
    def _begin(conn: sqlite3.Connection, begin: str, durable: bool) -> Iterator[sqlite3.Cursor]:
        if conn.in_transaction:  # ":memory:", a read inside a write: join it
            yield conn.cursor()
            return
        cur = conn.cursor()
        if not durable:
            cur.execute("PRAGMA synchronous = NORMAL")
        try:
            cur.execute(begin)
            try:
                yield cur
            except BaseException:
                conn.rollback()
                raise
            else:
                conn.commit()
        finally:
            if not durable:
                cur.execute("PRAGMA synchronous = FULL")
            cur.close()

    def _unavailable(self, exc: sqlite3.OperationalError) -> StoreUnavailable | None:
        """`StoreUnavailable` for a lock, a full disk or an I/O error; None for any other error (a bug)."""
        code = getattr(exc, "sqlite_errorcode", None)
        if code == sqlite3.SQLITE_FULL or "disk is full" in str(exc):
            return self._failed("the disk of the database is full", full=True)
        if code in (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED) or "locked" in str(exc) or "busy" in str(exc):
            return self._failed("the database is locked by another process")
        if code == sqlite3.SQLITE_IOERR or "disk I/O error" in str(exc):
            return self._failed(f"the database cannot be written ({exc})")
        return None

    def _failed(self, reason: str, *, full: bool = False) -> StoreUnavailable:
        if self.fault is None or self.fault["reason"] != reason:
            self.fault = {"reason": reason, "since": time.time()}
        return StoreUnavailable(reason, full=full)

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
        with self._lock, self._read_lock:
            self._conn.close()
            if self._reader is not self._conn:
                self._reader.close()


def _on_event_loop() -> bool:
    """Whether this thread runs an asyncio event loop now (module docstring)."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return False
    return True
