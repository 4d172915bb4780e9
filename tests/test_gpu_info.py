"""GPU facts from NVML without torch: cached, honouring CUDA_VISIBLE_DEVICES, and a real `animenb serve`
whose process never loads torch, through /health, a job and /admin/stats."""
from __future__ import annotations

import importlib.metadata
import json
import os
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from animenb import gpu_info
from animenb.phases.catalog import get_phase
from serverkit import free_port

TEST_NOTEBOOKS = Path(__file__).parent / "notebooks"


def test_facts_without_a_driver_say_why_and_import_no_torch():
    code = ("import sys, json; from animenb.gpu_info import gpu_facts, cuda_devices; "
            "print(json.dumps([gpu_facts(), cuda_devices(), 'torch' in sys.modules]))")
    env = {k: v for k, v in os.environ.items() if k != "CUDA_VISIBLE_DEVICES"}
    facts, devices, torch_imported = json.loads(subprocess.check_output([sys.executable, "-c", code], env=env))
    assert not torch_imported
    assert facts["torch"] == importlib.metadata.version("torch") and facts["source"] == "nvml"
    if not facts["available"]:  # this machine: no NVIDIA driver
        assert facts["device"] == "cpu" and "NVML" in facts["reason"] and devices == ["cpu"]
    else:
        assert len(facts["gpus"]) == facts["count"] >= 1 and devices[0] == "cuda:0"
        assert {"name", "memory_total_mb", "memory_used_mb", "uuid"} <= set(facts["gpus"][0])


def test_facts_are_read_at_most_once_per_ttl(monkeypatch):
    reads = []
    real_read = gpu_info._read

    def counted_read():
        reads.append(time.monotonic())
        return real_read()

    monkeypatch.setattr(gpu_info, "_read", counted_read)
    monkeypatch.setattr(gpu_info, "_cached", None)
    first = gpu_info.gpu_facts()
    for _ in range(50):
        assert gpu_info.gpu_facts() == first
    assert len(reads) == 1
    first["available"] = "changed by a caller"
    assert gpu_info.gpu_facts()["available"] != "changed by a caller"  # callers get copies
    gpu_info.gpu_facts(max_age=0.0)
    assert len(reads) == 2


@pytest.mark.parametrize("visible, index, uuid, expected", [
    (None, 3, "GPU-abc", True),
    ("0,2", 2, "GPU-abc", True),
    ("0,2", 1, "GPU-abc", False),
    ("GPU-ab", 5, "GPU-abc123", True),
    ("GPU-ff", 0, "GPU-abc123", False),
    ("", 0, "GPU-abc", False),
])
def test_visible_devices_follow_cuda_visible_devices(monkeypatch, visible, index, uuid, expected):
    if visible is None:
        monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    else:
        monkeypatch.setenv("CUDA_VISIBLE_DEVICES", visible)
    assert gpu_info._visible(index, uuid) is expected


def _get(port: int, path: str, token: str | None = None):
    req = urllib.request.Request(f"http://127.0.0.1:{port}{path}",
                                 headers={"Authorization": f"Bearer {token}"} if token else {})
    with urllib.request.urlopen(req, timeout=10) as resp:
        return json.loads(resp.read())


@pytest.mark.timeout(180)
def test_serve_process_never_loads_torch(tmp_path):
    port = free_port()
    notebooks = tmp_path / "notebooks"
    notebooks.mkdir()
    (notebooks / get_phase(1).notebook).write_bytes((TEST_NOTEBOOKS / "progress.ipynb").read_bytes())
    home = tmp_path / "home"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "ANIMENB_THREADS": "1"}
    token = subprocess.check_output([sys.executable, "-m", "animenb.cli", "token", "--home", str(home), "create",
                                     "--name", "t", "--role", "admin"], env=env, text=True).split()[0]
    log = open(tmp_path / "serve.log", "wb")
    proc = subprocess.Popen([sys.executable, "-m", "animenb.cli", "serve", "--port", str(port), "--models", "tiny",
                             "--home", str(home), "--outputs", str(tmp_path / "outputs"), "--notebooks",
                             str(notebooks), "--no-quality", "--log-level", "WARNING"],
                            stdout=log, stderr=subprocess.STDOUT, env=env)
    try:
        deadline = time.monotonic() + 90
        while True:
            assert proc.poll() is None and time.monotonic() < deadline, (tmp_path / "serve.log").read_text()
            try:
                health = _get(port, "/api/anime/health")
                break
            except OSError:
                time.sleep(0.05)
        gpu = health["components"]["gpu"]
        assert gpu["source"] == "nvml" and gpu["torch"] == importlib.metadata.version("torch")
        req = urllib.request.Request(f"http://127.0.0.1:{port}/api/anime/generate", method="POST",
                                     data=json.dumps({"prompt": "x", "steps": 2}).encode(),
                                     headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=10) as resp:
            job_id = json.loads(resp.read())["job_id"]
        while _get(port, f"/api/anime/generation/{job_id}/status")["status"] in ("queued", "running"):
            assert time.monotonic() < deadline + 60
            time.sleep(0.1)
        assert _get(port, f"/api/anime/generation/{job_id}/status")["status"] == "succeeded"
        assert "available" in _get(port, "/api/anime/admin/stats", token)["gpu"]
        maps = Path(f"/proc/{proc.pid}/maps").read_text()
        assert "libtorch" not in maps and "libc10" not in maps  # the kernel (a child) loads torch; the server never
    finally:
        proc.terminate()
        proc.wait(30)
