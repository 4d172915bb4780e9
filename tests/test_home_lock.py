"""One server per home: a second `animenb serve` on the same --home refuses to start, with a message naming the
first; the lock goes with its holder (a clean stop or kill -9), so the next server starts."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from animenb.server.home_lock import HomeInUseError, HomeLock
from serverkit import free_port
from test_serve_kill_restart import start_server

pytestmark = [pytest.mark.timeout(240)]


def test_a_second_lock_on_a_home_is_refused(tmp_path):
    first, second = HomeLock(tmp_path), HomeLock(tmp_path)
    first.acquire()
    with pytest.raises(HomeInUseError, match=rf"pid {os.getpid()}\b.*{tmp_path}"):
        second.acquire()
    first.release()
    second.acquire()  # free again once released
    second.release()


def test_a_second_serve_on_the_same_home_refuses_to_start(tmp_path):
    first = start_server(tmp_path, free_port())
    try:
        env = {**os.environ, "OMP_NUM_THREADS": "1"}
        second = subprocess.run([sys.executable, "-m", "animenb.cli", "serve", "--port", str(free_port()),
                                 "--models", "tiny", "--home", str(tmp_path / "home"),
                                 "--outputs", str(tmp_path / "outputs2")],
                                capture_output=True, text=True, timeout=120, env=env, cwd=tmp_path)
        assert second.returncode == 2, second.stderr[-2000:]
        assert f"another animenb serve (pid {first.pid}) is using the home {tmp_path / 'home'}" in second.stderr
        assert "Traceback" not in second.stderr
        assert first.poll() is None  # the first one is untouched
    finally:
        first.send_signal(signal.SIGKILL)  # the kernel drops a dead holder's lock
        first.wait(10)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:  # its kernels exit by themselves within ~2 s; the lock is free at once
        try:
            HomeLock(Path(tmp_path / "home")).acquire()
            break
        except HomeInUseError:
            time.sleep(0.2)
    else:
        raise AssertionError("the home stayed locked after its server was killed")
