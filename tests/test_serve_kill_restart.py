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
import signal
import subprocess
import time

import pytest

from faultkit import free_port, http, kill_group, start_server, wait_terminal

pytestmark = [pytest.mark.timeout(240)]
API = "/api/anime"


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
        statuses = wait_terminal(port, ids, timeout=180)
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
