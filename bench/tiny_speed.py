"""The tiny profile at the sizes people ask for: the contract's example and phases 2 and 3 at 512 px.

1. In this process, models loaded first (the load is printed apart): the contract's example
   (phase 1, 512x512, 10 steps, 8 poses) through `character_sheet`, then, with `--phases`,
   phase 2 (20 frames rendered for a 16-frame loop) and phase 3 (an SVD source image, then 25
   frames) at 512 px with their default 15 steps. Prints wall and CPU seconds per phase and the
   split the manifest records (generate / write).
2. With `--server`: a real `animenb serve --models tiny` (jobs scored by the quality gate, as `make serve`),
   the contract's own request `POST /generate {"prompt":"anime girl","width":512,"height":512,
   "steps":10}`, submit -> terminal WebSocket event, after one warm-up job of the same size.

Target (issue 16): the contract's example <= 20 s on 2 CPUs; phases 2 and 3 in proportion
(per frame-step: 20 s / 80 image-steps gives 75 s for phase 2's 300 and 94 s for phase 3's 375).
Prints figures; asserts nothing.

    python bench/tiny_speed.py [--phases 1,2,3] [--server] [--threads 1]
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

from job_overhead import one_job  # bench/job_overhead.py: submit, then follow the job's WebSocket to its end
from load import free_port, stop_server, wait_ready  # bench/load.py: the same server start and stop
from results import record

TARGET_SECONDS = 20.0
IMAGE_STEPS = 8 * 10  # the contract's example: 8 poses x 10 steps
RUNS = {  # phase: (function name, kwargs, frame-steps of work)
    1: ("character_sheet", dict(steps=10), IMAGE_STEPS),
    2: ("animation_loop", dict(), 20 * 15),
    3: ("full_video", dict(), 25 * 15),
}


def load_tiny(root: Path, threads: int, kinds: tuple[str, ...]) -> float:
    """Pin torch's threads, home the tiny models under `root` (unless ANIMENB_HOME is set), load the
    pipelines `kinds` of the tiny profile; returns the build + load seconds."""
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ["ANIMENB_THREADS"] = str(threads)
    os.environ.setdefault("ANIMENB_HOME", str(root / "home"))

    import torch

    from animenb.models import pipeline

    torch.set_num_threads(threads)
    started = time.perf_counter()
    for kind in kinds:
        pipeline(kind, "tiny")
    return time.perf_counter() - started


def run_phase(phase: int, root: Path) -> dict:
    import animenb.phases as phases

    name, kwargs, work = RUNS[phase]
    wall, cpu = time.perf_counter(), time.process_time()
    result = getattr(phases, name)("anime girl", models="tiny", width=512, height=512, seed=1, display=None,
                                   output_dir=root / f"phase{phase}", **kwargs)
    timings = result.manifest["timings"]
    return {"phase": phase, "wall_s": time.perf_counter() - wall, "cpu_s": time.process_time() - cpu,
            "generate_s": timings["generate_seconds"], "write_s": timings["write_seconds"],
            "budget_s": TARGET_SECONDS * work / IMAGE_STEPS}


async def server_job(root: Path, threads: int) -> dict:
    import subprocess

    from tornado.httpclient import AsyncHTTPClient

    port = free_port()
    base = f"http://127.0.0.1:{port}"
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "ANIMENB_THREADS": str(threads)}
    log = open(root / "serve.log", "wb")
    started = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-m", "animenb.cli", "serve", "--port", str(port), "--models", "tiny",
                             "--home", os.environ["ANIMENB_HOME"], "--outputs", str(root / "served"),
                             "--log-level", "WARNING"], stdout=log, stderr=subprocess.STDOUT, env=env, cwd=root)
    client = AsyncHTTPClient(force_instance=True)
    body = json.dumps({"prompt": "anime girl", "width": 512, "height": 512, "steps": 10}).encode()
    times = []
    try:
        await wait_ready(client, base, proc, timeout=180)
        ready = time.perf_counter() - started
        for _ in range(2):  # the first loads the models into the warm kernel
            row = await one_job(client, base, body, root / "served", timeout=600)
            times.append((row["total"] / 1000, row["phase"] / 1000))
    finally:
        stop_server(proc)
        client.close()
    return {"server_ready_s": ready, "first_job_s": times[0][0], "warm_job_s": times[1][0],
            "warm_job_phase_s": times[1][1]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--phases", default="1", help="comma list of phases to run at 512 px (1,2,3)")
    parser.add_argument("--server", action="store_true", help="also the contract's request through `animenb serve`")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    phases = [int(p) for p in args.phases.split(",") if p]
    if not set(phases) <= set(RUNS):
        parser.error(f"--phases must name phases among 1,2,3, got {args.phases!r}")
    root = Path(tempfile.mkdtemp(prefix="animenb-tiny-speed-"))
    load = load_tiny(root, args.threads, ("sd", "animatediff", "svd"))
    print(f"tiny profile at 512 px ({platform.machine()}, {os.cpu_count()} CPUs, torch threads {args.threads}, "
          f"load average {os.getloadavg()[0]:.1f}); build+load of the three pipelines {load:.1f} s")
    print(f"  {'phase':<32}{'wall s':>9}{'cpu s':>9}{'generate':>10}{'write':>8}{'budget s':>10}{'wall/budget':>13}")
    rows = []
    for phase in phases:
        row = run_phase(phase, root)
        rows.append(row)
        label = {1: "1 sheet, 8 poses, 10 steps", 2: "2 loop, 20 frames, 15 steps",
                 3: "3 video, 25 frames, 15 steps"}[phase]
        print(f"  {label:<32}{row['wall_s']:9.1f}{row['cpu_s']:9.1f}{row['generate_s']:10.1f}{row['write_s']:8.1f}"
              f"{row['budget_s']:10.0f}{row['wall_s'] / row['budget_s']:13.2f}", flush=True)
    figures = {f"phase{r['phase']}_512_wall_s": round(r["wall_s"], 2) for r in rows}
    figures.update({f"phase{r['phase']}_512_cpu_s": round(r["cpu_s"], 2) for r in rows})
    if args.server:
        served = asyncio.run(server_job(root, args.threads))
        print(f"  through `animenb serve` (quality gate on): the contract's POST /generate 512x512, 10 steps: "
              f"first job {served['first_job_s']:.1f} s (loads the models), warm job {served['warm_job_s']:.1f} s "
              f"(phase function {served['warm_job_phase_s']:.1f} s of it); server ready in "
              f"{served['server_ready_s']:.1f} s")
        figures.update({k: round(v, 2) for k, v in served.items()})
    print(f"  target: the contract's example <= {TARGET_SECONDS:.0f} s (wall/budget <= 1 for every phase)")
    record("tiny_speed", figures)


if __name__ == "__main__":
    main()
