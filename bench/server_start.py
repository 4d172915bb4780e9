"""Server start-up: seconds from `animenb serve` to the first /health answer, the server's RSS, and
whether torch was loaded into the server process (it must not be: GPU facts come from NVML).

Starts a real server (tiny profile, a fresh home, `--no-quality`) `--starts` times; RSS is read
from /proc after the first /health and again `--settle` seconds later (work started in the
background at start-up shows there). Prints medians; asserts nothing.

    python bench/server_start.py [--starts 3] [--settle 5]
"""
from __future__ import annotations

import argparse
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from load import free_port, stop_server
from results import record


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def torch_loaded(pid: int) -> bool:
    return "libtorch" in Path(f"/proc/{pid}/maps").read_text()


def one_start(root: Path, settle: float) -> dict:
    root.mkdir(parents=True)
    port = free_port()
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    t0 = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-m", "animenb.cli", "serve", "--port", str(port), "--models", "tiny",
                             "--home", str(root / "home"), "--outputs", str(root / "outputs"), "--no-quality",
                             "--log-level", "WARNING"], stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT,
                            env=env, cwd=root)
    try:
        deadline = time.monotonic() + 120
        while True:
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"server did not answer /health (exit {proc.poll()})")
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/anime/health", timeout=2) as resp:
                    resp.read()
                break
            except OSError:
                time.sleep(0.02)
        ready = time.perf_counter() - t0
        first = rss_mb(proc.pid)
        time.sleep(settle)
        urllib.request.urlopen(f"http://127.0.0.1:{port}/api/anime/health", timeout=10).read()
        return {"ready_s": ready, "rss_first_mb": first, "rss_settled_mb": rss_mb(proc.pid),
                "torch_loaded": torch_loaded(proc.pid)}
    finally:
        stop_server(proc)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--starts", type=int, default=3)
    parser.add_argument("--settle", type=float, default=5.0)
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory(prefix="animenb-start-") as tmp:
        for i in range(args.starts):
            rows.append(one_start(Path(tmp) / str(i), args.settle))
    med = {k: statistics.median(r[k] for r in rows) for k in ("ready_s", "rss_first_mb", "rss_settled_mb")}
    loaded = any(r["torch_loaded"] for r in rows)
    print(f"server start ({platform.machine()}, {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}), "
          f"median of {args.starts}: ready (first /health) {med['ready_s']:.2f} s; RSS {med['rss_first_mb']:.0f} MB "
          f"then {med['rss_settled_mb']:.0f} MB after {args.settle:.0f} s; torch in the server process: "
          f"{'YES' if loaded else 'no'}")
    record("server_start", {**{k: round(v, 3) for k, v in med.items()}, "torch_loaded": loaded})


if __name__ == "__main__":
    main()
