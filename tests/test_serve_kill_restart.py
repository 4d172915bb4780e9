"""kill -9 of a real `animenb serve` mid-job, then a restart on the same store: no accepted job vanishes,
each ends terminal (or runs again), and none claims success without its files.

The phase-1 notebook is tests/notebooks/progress.ipynb (`animenb serve --notebooks DIR`): a
few seconds of per-step progress, then one PNG and a manifest, so the test stays quick; the
real phase notebooks are covered in process by test_server_restart.py.

The server is killed with SIGKILL and so is its kernel (what a machine crash, the OOM killer
or `docker kill` does to the whole group); an orphan kernel is not left writing into the
re-run job's directory.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from animenb.phases.catalog import get_phase
from faultkit import kill_group

TEST_NOTEBOOKS = Path(__file__).parent / "notebooks"

pytestmark = [pytest.mark.timeout(240)]
API = "/api/anime"


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


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


def test_kill_9_mid_job_then_restart(tmp_path):
    port = free_port()
    proc = start_server(tmp_path, port)
    ids = []
    try:
        # one long phase-1 job (60 steps of 0.05 s), then two short ones queued behind it
        for steps in (60, 2, 2):
            code, data = http(port, "POST", f"{API}/generate", {"prompt": "anime 0.05", "width": 64, "height": 64,
                                                                "steps": steps, "seed": steps})
            assert code == 202, data
            ids.append(data["job_id"])
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            status = http(port, "GET", f"{API}/generation/{ids[0]}/status")[1]
            if status["status"] == "running" and status["progress"]["percent"] > 5:
                break
            assert status["status"] in ("queued", "running"), status
            time.sleep(0.05)
        else:
            raise AssertionError("the first job never got going")
    finally:
        killed = kill_group(proc)
    assert killed, "the kernel process should have been a child of the server"

    proc = start_server(tmp_path, port)
    try:
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            statuses = [http(port, "GET", f"{API}/generation/{i}/status")[1] for i in ids]
            if all(s["status"] not in ("queued", "running") for s in statuses):
                break
            time.sleep(0.2)
        else:
            raise AssertionError(f"jobs did not finish after the restart: {statuses}")
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            kill_group(proc)

    first = statuses[0]
    assert first["status"] == "succeeded" and first["attempts"] == 2, first  # it had written nothing: run again
    assert [s["status"] for s in statuses[1:]] == ["succeeded", "succeeded"]
    for s in statuses:
        if s["status"] == "succeeded":  # success means every file in its manifest is on disk
            out = tmp_path / "outputs" / s["job_id"]
            manifest = json.loads((out / "manifest.json").read_text())
            assert manifest["files"] and all((out / f["path"]).is_file() for f in manifest["files"])
