"""Faults from outside a server, for tests and bench/chaos.py: another process holding the database's write
lock, a SIGKILL of a server and its kernels."""
from __future__ import annotations

import contextlib
import subprocess
import sys
from pathlib import Path

import psutil

# Another process holds the database's write lock until it reads a line on stdin.
LOCKER = """\
import sqlite3, sys
conn = sqlite3.connect(sys.argv[1], isolation_level=None)
conn.execute("BEGIN IMMEDIATE")
print("locked", flush=True)
sys.stdin.readline()
conn.execute("COMMIT")
"""


@contextlib.contextmanager
def database_locked_by_another_process(path: str | Path):
    locker = subprocess.Popen([sys.executable, "-c", LOCKER, str(path)], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True)
    try:
        assert locker.stdout.readline().strip() == "locked"
        yield
    finally:
        locker.communicate("\n", timeout=30)


def kill_group(proc: subprocess.Popen) -> list[int]:
    """SIGKILL a server and its kernels, as a machine crash, the OOM killer or `docker kill` would; returns
    the pids of the children killed."""
    children = psutil.Process(proc.pid).children(recursive=True)
    proc.kill()
    proc.wait(10)
    for child in children:
        try:
            child.kill()
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(children, timeout=10)
    return [c.pid for c in children]
