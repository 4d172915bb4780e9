"""Job overhead: (submit-to-done through the server) - (the same phase function called directly).

For the tiny character-sheet job (64x64, 2 steps, fixed seed), median over N jobs. Each
server runs on a free loopback port in this process; "done" is the terminal WebSocket
event. Three server modes, like against like:

- warm          the phase notebook on a warm kernel (no quality step): the issue's target
- warm+quality  the same, followed by the quality notebook (what every real job runs)
- cold          a fresh kernel per job (no quality step)

Two overhead figures per mode, because a shared CPU makes the phase function's own time
swing by a second between runs:

- paired        job time - the phase function's time inside that same job (manifest
                `timings.total_seconds`, measured in the kernel): what the server, papermill
                and the notebook's other cells add. Both halves see the same load.
- vs direct     median job time - median time of the phase function called directly in
                this process, interleaved job by job with the warm runs (the issue's formula).

`--breakdown` prints where the paired overhead goes (from the executed notebooks' papermill
cell timings and the runner's timestamps). Prints milliseconds and ratios; asserts nothing.
Targets: warm overhead <= 50 ms median, warm/cold speed-up >= 5x.

    python bench/job_overhead.py [--jobs 10] [--cold-jobs 5] [--threads 1] [--breakdown]
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path


def direct_call(out_dir: Path, args) -> float:
    from animenb.phases import character_sheet

    t0 = time.perf_counter()
    character_sheet("anime girl", seed=1, steps=args.steps, width=64, height=64, models="tiny",
                    output_dir=str(out_dir), display=None)
    return 1000 * (time.perf_counter() - t0)


def cell_times(nb_path: Path) -> list[float]:
    import nbformat

    nb = nbformat.read(nb_path, as_version=4)
    return [1000 * float(c.metadata.get("papermill", {}).get("duration") or 0.0) for c in nb.cells
            if c.cell_type == "code"]


async def server_runs(n: int, root: Path, args, *, warm: bool, quality: bool, direct: list | None = None) -> list[dict]:
    """One server; n counted jobs (after one uncounted job that loads the models). With `direct`, a
    direct phase-function call runs before each job (the loop is idle then) and is appended there."""
    from tornado.httpclient import AsyncHTTPClient
    from tornado.httpserver import HTTPServer
    from tornado.testing import bind_unused_port
    from tornado.websocket import websocket_connect

    from animenb.server.app import AnimeService, ServerConfig, make_app

    service = AnimeService(ServerConfig(home=root / "home", outputs=root / "outputs", models="tiny", warm=warm,
                                        quality_notebook=True if quality else False,
                                        kernel_env={"OMP_NUM_THREADS": str(args.threads),
                                                    "MKL_NUM_THREADS": str(args.threads),
                                                    "ANIMENB_THREADS": str(args.threads)}))
    sock, port = bind_unused_port()
    server = HTTPServer(make_app(service))
    server.add_sockets([sock])
    await service.start()
    await service.runner.wait_ready(120)
    client = AsyncHTTPClient()
    body = json.dumps({"prompt": "anime girl", "seed": 1, "steps": args.steps, "width": 64, "height": 64}).encode()
    rows = []
    try:
        for i in range(n + 1):  # the first job loads the models into the kernel: not counted
            if direct is not None:
                d = direct_call(root / f"direct-{i}", args)
                if i:
                    direct.append(d)
            t0 = time.perf_counter()
            resp = await client.fetch(f"http://127.0.0.1:{port}/api/anime/generate", method="POST", body=body,
                                      headers={"Content-Type": "application/json"})
            job = json.loads(resp.body)
            conn = await websocket_connect(job["ws_url"])
            status = None
            while (msg := await conn.read_message()) is not None:
                event = json.loads(msg)
                if event["event"] == "finished":
                    status = event["status"]
                elif event["event"] == "state" and event["state"]["status"] not in ("queued", "running"):
                    status = event["state"]["status"]
            elapsed = 1000 * (time.perf_counter() - t0)
            if status != "succeeded":
                raise RuntimeError(f"job {job['job_id']} ended {status}")
            out = service.outputs_dir / job["job_id"]
            manifest = json.loads((out / "manifest.json").read_text())
            phase_ms = 1000 * manifest["timings"]["total_seconds"]
            row = {"total": elapsed, "phase": phase_ms, "paired": elapsed - phase_ms,
                   "cells": cell_times(out / "notebook.ipynb")}
            if quality and (out / "quality.ipynb").is_file():
                row["quality_cells"] = cell_times(out / "quality.ipynb")
            if i:
                rows.append(row)
    finally:
        server.stop()
        await service.stop()
    return rows


def med(values) -> float:
    values = list(values)
    return statistics.median(values) if values else float("nan")


def breakdown(rows: list[dict], label: str) -> None:
    cells = [r["cells"] for r in rows]
    width = max(len(c) for c in cells)
    per_cell = [med(c[i] for c in cells if len(c) > i) for i in range(width)]
    phase_cell = max(range(width), key=lambda i: per_cell[i])
    inside_phase_cell = med(r["cells"][phase_cell] - r["phase"] for r in rows)
    other_cells = med(sum(c) - c[phase_cell] for c in cells)
    outside_cells = med(r["total"] - sum(r["cells"]) for r in rows)
    print(f"  {label}: paired overhead {med(r['paired'] for r in rows):.1f} ms =")
    print(f"      other cells {other_cells:6.1f} ms  (medians per code cell: "
          + ", ".join(f"{x:.1f}" for x in per_cell) + ")")
    print(f"      phase cell beyond the phase function {inside_phase_cell:6.1f} ms")
    print(f"      outside the cells (server, store, WS, reset, papermill load/save) {outside_cells:6.1f} ms")
    if any("quality_cells" in r for r in rows):
        print(f"      quality notebook cells {med(sum(r.get('quality_cells', [])) for r in rows):6.1f} ms")


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
    os.environ["ANIMENB_HOME"] = str(root / "home")  # tiny models are built once, shared by all runs

    import torch

    torch.set_num_threads(args.threads)
    direct_call(root / "direct-warmup", args)  # loads the models in this process
    direct: list[float] = []
    warm = asyncio.run(server_runs(args.jobs, root / "warm", args, warm=True, quality=False, direct=direct))
    wq = [] if "quality" in skip else asyncio.run(server_runs(args.jobs, root / "wq", args, warm=True, quality=True))
    cold = [] if "cold" in skip else asyncio.run(server_runs(args.cold_jobs, root / "cold", args, warm=False,
                                                             quality=False))
    d = med(direct)
    print(f"job overhead: tiny CHARACTER_SHEET 64x64, {args.steps} steps, median of {args.jobs} jobs "
          f"({args.cold_jobs} cold; {platform.machine()}, {os.cpu_count()} CPUs, torch threads {args.threads}, "
          f"load average {os.getloadavg()[0]:.1f})")
    print(f"  direct phase function (interleaved with the warm jobs) {d:9.1f} ms")
    print(f"  {'mode':<14}{'job':>10}{'phase fn in job':>17}{'paired overhead':>17}{'vs direct':>12}")
    for label, rows in (("warm", warm), ("warm+quality", wq), ("cold", cold)):
        if rows:
            total = med(r["total"] for r in rows)
            print(f"  {label:<14}{total:10.1f}{med(r['phase'] for r in rows):17.1f}"
                  f"{med(r['paired'] for r in rows):17.1f}{total - d:12.1f}")
    print("  target: warm overhead <= 50 ms")
    if cold:
        w, c = med(r["paired"] for r in warm), med(r["paired"] for r in cold)
        print(f"  warm/cold speed-up (job)      {med(r['total'] for r in cold) / med(r['total'] for r in warm):7.2f} x")
        print(f"  warm/cold speed-up (overhead) {c / max(w, 1e-9):7.2f} x (target >= 5)")
    if args.breakdown:
        for label, rows in (("warm", warm), ("warm+quality", wq), ("cold", cold)):
            if rows:
                breakdown(rows, label)


if __name__ == "__main__":
    main()
