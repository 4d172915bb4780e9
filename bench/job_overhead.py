"""Job overhead: (submit-to-done through the server) - (the same phase function called directly).

For the tiny character-sheet job (64x64, 2 steps, fixed seed), median over N jobs. Each mode
runs a real `animenb serve` subprocess on a free loopback port (the client, like a real one,
is another process: this one); "done" is the terminal WebSocket event. Three modes, like
against like:

- warm          `serve --no-quality`: the phase notebook on a warm kernel: the issue's target
- warm+quality  `serve`: the same, scored by the quality gate's cell in the same kernel (what real jobs run)
- cold          `serve --cold-kernels --no-quality`: a fresh kernel per job

Overhead figures:

- vs direct     the issue's formula: job time - the phase function called directly in this
                process (display=None), one direct call just before each warm job; the median
                of those pairs. A shared CPU makes the function's own time swing by +-25%, so
                this moves by tens of ms between runs.
- in-job        job time - the phase function's time inside that same job, where the function
                time is its manifest `timings.total_seconds` (measured in the kernel) plus the
                part the manifest cannot time (input checks, file hashes, the manifest write;
                the median of wall - manifest time over the direct calls). Both halves see the
                same load: this is what the server, papermill, the kernel round trips and the
                progress messages add.

`--breakdown` prints where the in-job overhead goes (the executed notebooks' papermill cell
timings). Prints milliseconds and ratios; asserts nothing.
Targets: warm overhead <= 50 ms median, warm/cold speed-up >= 5x.

    python bench/job_overhead.py [--jobs 10] [--cold-jobs 5] [--threads 1] [--breakdown] [--skip quality,cold]
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from load import free_port, stop_server, wait_ready  # bench/load.py: the same server start and stop

MODES = {"warm": ["--no-quality"], "warm+quality": [], "cold": ["--cold-kernels", "--no-quality"]}


def direct_call(out_dir: Path, args) -> tuple[float, float]:
    """(wall ms, the manifest's own timed ms) of one direct phase-function call."""
    from animenb.phases import character_sheet

    t0 = time.perf_counter()
    result = character_sheet("anime girl", seed=1, steps=args.steps, width=64, height=64, models="tiny",
                             output_dir=str(out_dir), display=None)
    return 1000 * (time.perf_counter() - t0), 1000 * result.manifest["timings"]["total_seconds"]


def cell_times(nb_path: Path) -> tuple[list[float], list[float]]:
    """(ms per code cell of the notebook itself, ms per cell the runner appended: the quality gate's)."""
    import nbformat

    nb = nbformat.read(nb_path, as_version=4)
    own, appended = [], []
    for cell in nb.cells:
        if cell.cell_type == "code":
            ms = 1000 * float(cell.metadata.get("papermill", {}).get("duration") or 0.0)
            (appended if "animenb-job-step" in cell.metadata.get("tags", []) else own).append(ms)
    return own, appended


def start_server(root: Path, mode: str, port: int, args) -> subprocess.Popen:
    threads = str(args.threads)
    env = {**os.environ, "OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads, "ANIMENB_THREADS": threads}
    log = open(root / f"serve-{mode}.log", "wb")
    return subprocess.Popen([sys.executable, "-m", "animenb.cli", "serve", "--port", str(port), "--models", "tiny",
                             "--home", str(root / "home"), "--outputs", str(root / mode), "--log-level", "WARNING",
                             *MODES[mode]], stdout=log, stderr=subprocess.STDOUT, env=env, cwd=root)


async def one_job(client, base: str, body: bytes, outputs: Path, timeout: float = 120) -> dict:
    """Submit one job and follow it on its WebSocket to the end: {total, phase, cells, quality_cells} in ms."""
    from tornado.websocket import websocket_connect

    t0 = time.perf_counter()
    resp = await client.fetch(f"{base}/api/anime/generate", method="POST", body=body,
                              headers={"Content-Type": "application/json"})
    job = json.loads(resp.body)
    conn = await websocket_connect(job["ws_url"])
    status = None
    deadline = time.monotonic() + timeout
    while (msg := await asyncio.wait_for(conn.read_message(), max(0.1, deadline - time.monotonic()))) is not None:
        event = json.loads(msg)
        if event["event"] == "finished":
            status = event["status"]
        elif event["event"] == "state" and event["state"]["status"] not in ("queued", "running"):
            status = event["state"]["status"]
    elapsed = 1000 * (time.perf_counter() - t0)
    if status != "succeeded":
        raise RuntimeError(f"job {job['job_id']} ended {status}")
    out = outputs / job["job_id"]
    manifest = json.loads((out / "manifest.json").read_text())
    own, appended = cell_times(out / "notebook.ipynb")
    return {"total": elapsed, "phase": 1000 * manifest["timings"]["total_seconds"], "cells": own,
            "quality_cells": appended}


def job_body(args) -> bytes:
    return json.dumps({"prompt": "anime girl", "seed": 1, "steps": args.steps, "width": 64, "height": 64}).encode()


async def server_runs(n: int, root: Path, mode: str, args, direct: list | None = None) -> list[dict]:
    """n counted jobs (after one uncounted job that loads the models into the kernel). With `direct`,
    a direct phase-function call runs just before each job (the server is idle then)."""
    from tornado.httpclient import AsyncHTTPClient

    port = free_port()
    base = f"http://127.0.0.1:{port}"
    proc = start_server(root, mode, port, args)
    client = AsyncHTTPClient(force_instance=True)
    rows = []
    try:
        await wait_ready(client, base, proc, timeout=180)
        for i in range(n + 1):
            d = direct_call(root / "direct" / f"{mode}-{i}", args) if direct is not None else None
            row = await one_job(client, base, job_body(args), root / mode)
            if i:
                rows.append(row)
                if d is not None:
                    direct.append(d)
                    row["direct"] = d[0]
    finally:
        stop_server(proc)
        client.close()
    return rows


def med(values) -> float:
    values = list(values)
    return statistics.median(values) if values else float("nan")


def breakdown(rows: list[dict], label: str, untimed: float) -> None:
    cells = [r["cells"] for r in rows]
    width = max(len(c) for c in cells)
    per_cell = [med(c[i] for c in cells if len(c) > i) for i in range(width)]
    phase_cell = max(range(width), key=lambda i: per_cell[i])
    print(f"  {label}: in-job overhead {med(r['total'] - r['phase'] - untimed for r in rows):.1f} ms =")
    print(f"      other cells {med(sum(c) - c[phase_cell] for c in cells):6.1f} ms  (medians per code cell: "
          + ", ".join(f"{x:.1f}" for x in per_cell) + ")")
    print(f"      phase cell beyond the phase function {med(r['cells'][phase_cell] - r['phase'] - untimed for r in rows):6.1f}"
          " ms (kernel round trip, progress messages, result display)")
    print(f"      outside the cells (HTTP, store, queue, papermill load/save, WebSocket) "
          f"{med(r['total'] - sum(r['cells']) - sum(r['quality_cells']) for r in rows):6.1f} ms")
    if any(r["quality_cells"] for r in rows):
        print(f"      the quality gate's cell (scoring, recording, its round trip) "
              f"{med(sum(r['quality_cells']) for r in rows):6.1f} ms")


async def run_all(args, root: Path, skip: set[str]) -> tuple[dict[str, list[dict]], list[tuple[float, float]]]:
    direct: list[tuple[float, float]] = []
    results = {"warm": await server_runs(args.jobs, root, "warm", args, direct=direct)}
    if "quality" not in skip:
        results["warm+quality"] = await server_runs(args.jobs, root, "warm+quality", args)
    if "cold" not in skip:
        results["cold"] = await server_runs(args.cold_jobs, root, "cold", args)
    return results, direct


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=10)
    parser.add_argument("--cold-jobs", type=int, default=5)
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--breakdown", action="store_true")
    parser.add_argument("--skip", default="", help="comma list of modes to skip: quality,cold")
    args = parser.parse_args()
    skip = set(filter(None, args.skip.split(",")))
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ["ANIMENB_THREADS"] = str(args.threads)
    root = Path(tempfile.mkdtemp(prefix="animenb-bench-"))
    os.environ["ANIMENB_HOME"] = str(root / "home")  # tiny models are built once, shared with the servers

    import torch

    torch.set_num_threads(args.threads)
    direct_call(root / "direct" / "warmup", args)  # builds the tiny models and loads them in this process
    results, direct = asyncio.run(run_all(args, root, skip))
    warm = results["warm"]
    untimed = med(wall - timed for wall, timed in direct)
    print(f"job overhead: tiny CHARACTER_SHEET 64x64, {args.steps} steps, median of {args.jobs} jobs "
          f"({args.cold_jobs} cold; {platform.machine()}, {os.cpu_count()} CPUs, torch threads {args.threads}, "
          f"load average {os.getloadavg()[0]:.1f})")
    print(f"  direct phase function (one before each warm job) {med(w for w, _ in direct):9.1f} ms "
          f"(of which the manifest does not time {untimed:.1f} ms)")
    print(f"  {'mode':<14}{'job':>10}{'phase fn in job':>17}{'in-job overhead':>17}{'vs direct':>12}")
    for label, rows in results.items():
        total = med(r["total"] for r in rows)
        versus = med(r["total"] - r["direct"] for r in rows) if label == "warm" else float("nan")
        print(f"  {label:<14}{total:10.1f}{med(r['phase'] + untimed for r in rows):17.1f}"
              f"{med(r['total'] - r['phase'] - untimed for r in rows):17.1f}{versus:12.1f}")
    print("  target: warm overhead <= 50 ms")
    if "cold" in results:
        w = med(r["total"] - r["phase"] - untimed for r in warm)
        c = med(r["total"] - r["phase"] - untimed for r in results["cold"])
        print(f"  warm/cold speed-up (job)      {med(r['total'] for r in results['cold']) / med(r['total'] for r in warm):7.2f} x")
        print(f"  warm/cold speed-up (overhead) {c / max(w, 1e-9):7.2f} x (target >= 5)")
    if args.breakdown:
        for label, rows in results.items():
            breakdown(rows, label, untimed)


if __name__ == "__main__":
    main()
