"""Faults from outside a server, for tests and bench/chaos.py: another process holding the database's write
lock, a SIGKILL of a server and its kernels; a real `animenb serve` to inflict them on (`start_server`: its
phase-1 notebook is tests/notebooks/progress.ipynb)."""
from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import psutil

from animenb.phases.catalog import get_phase
from serverkit import free_port  # noqa: F401  (re-exported for the fault tests)

TEST_NOTEBOOKS = Path(__file__).parent / "notebooks"
API = "/api/anime"

# Another process holds the database's write lock until it reads a line on stdin (or for argv[2] seconds).
LOCKER = """\
import sqlite3, sys, time
conn = sqlite3.connect(sys.argv[1], isolation_level=None)
conn.execute("BEGIN IMMEDIATE")
print("locked", flush=True)
time.sleep(float(sys.argv[2])) if len(sys.argv) > 2 else sys.stdin.readline()
conn.execute("COMMIT")
"""


@contextlib.contextmanager
def database_locked_by_another_process(path: str | Path, seconds: float | None = None):
    """Another process holds `path`'s write lock from entering until leaving (or for `seconds`)."""
    held = [] if seconds is None else [str(seconds)]
    locker = subprocess.Popen([sys.executable, "-c", LOCKER, str(path), *held], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True)
    try:
        assert locker.stdout.readline().strip() == "locked"
        yield
    finally:
        locker.communicate("\n", timeout=30)


# Another process that takes the database's write lock on "lock" and lets it go on "release" (one line each on
# stdin), answering "done" once it did.
LOCKER_ON_DEMAND = """\
import sqlite3, sys
conn = sqlite3.connect(sys.argv[1], isolation_level=None, timeout=30)
print("done", flush=True)
for line in sys.stdin:
    conn.execute("BEGIN IMMEDIATE" if line.strip() == "lock" else "COMMIT")
    print("done", flush=True)
"""


class DatabaseLocker:
    """Another process holding `path`'s write lock between `lock()` and `release()`, at a moment a test picks
    (e.g. inside an event callback: `lock()` returns once the lock is held)."""

    def __init__(self, path: str | Path):
        self.process = subprocess.Popen([sys.executable, "-c", LOCKER_ON_DEMAND, str(path)], stdin=subprocess.PIPE,
                                        stdout=subprocess.PIPE, text=True)
        self.locked = False
        self._tell(None)

    def _tell(self, line: str | None) -> None:
        if line is not None:
            self.process.stdin.write(line + "\n")
            self.process.stdin.flush()
        assert self.process.stdout.readline().strip() == "done"

    def lock(self) -> None:
        if not self.locked:
            self._tell("lock")
            self.locked = True

    def release(self) -> None:
        if self.locked:
            self._tell("release")
            self.locked = False

    def close(self) -> None:
        self.release()
        self.process.stdin.close()
        self.process.wait(30)


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


def http(port: int, method: str, path: str, body=None):
    req = urllib.request.Request(f"http://127.0.0.1:{port}{path}", method=method,
                                 data=None if body is None else json.dumps(body).encode(),
                                 headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def start_server(tmp_path: Path, port: int) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "ANIMENB_THREADS": "1"}
    notebooks = tmp_path / "notebooks"
    notebooks.mkdir(exist_ok=True)
    (notebooks / get_phase(1).notebook).write_bytes((TEST_NOTEBOOKS / "progress.ipynb").read_bytes())
    log = open(tmp_path / f"serve-{time.time_ns()}.log", "wb")
    proc = subprocess.Popen([sys.executable, "-m", "animenb.cli", "serve", "--port", str(port), "--models", "tiny",
                             "--home", str(tmp_path / "home"), "--outputs", str(tmp_path / "outputs"),
                             "--notebooks", str(notebooks)],
                            stdout=log, stderr=subprocess.STDOUT, env=env, cwd=tmp_path)
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        assert proc.poll() is None, (tmp_path / log.name).read_text()[-3000:]
        try:
            code, health = http(port, "GET", f"{API}/health")
            if code == 200 and health["components"]["kernels"]["ready"] >= 1:
                return proc
        except (OSError, ValueError):
            pass
        time.sleep(0.2)
    raise AssertionError("animenb serve did not become ready")


def wait_terminal(port: int, ids: list[str], timeout: float) -> list[dict]:
    """The /status bodies of jobs `ids` once none is queued or running (AssertionError after `timeout` s)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        statuses = [http(port, "GET", f"{API}/generation/{job_id}/status")[1] for job_id in ids]
        if all(s["status"] not in ("queued", "running") for s in statuses):
            return statuses
        time.sleep(0.2)
    raise AssertionError(f"the jobs did not finish: {[s['status'] for s in statuses]}")
