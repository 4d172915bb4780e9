"""Job overhead: (submit-to-done through the server) - (the same phase function called directly).

For the tiny character-sheet job (64x64, 2 steps, fixed seed), median over N jobs, warm
kernels (the default) and cold kernels (a fresh kernel per job) side by side. Each
server runs on a free loopback port in this process; "done" is the terminal WebSocket
event. The quality step is left out (it is measured by its own benchmark). Prints
milliseconds and ratios; asserts nothing. Targets: warm overhead <= 50 ms median,
warm/cold speed-up >= 5x.

    python bench/job_overhead.py [--jobs 10] [--threads 1]
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


def direct_ms(n: int, out_root: Path, args) -> list[float]:
    import torch
    from animenb.phases import character_sheet

    torch.set_num_threads(args.threads)
    times = []
    for i in range(n + 1):  # the first call loads the models: not counted, like the warm kernel's
        t0 = time.perf_counter()
        character_sheet("anime girl", seed=1, steps=args.steps, width=64, height=64, models="tiny",
                        output_dir=str(out_root / f"direct-{i}"))
        if i:
            times.append(1000 * (time.perf_counter() - t0))
    return times


async def server_ms(n: int, root: Path, warm: bool, args) -> list[float]:
    from tornado.httpclient import AsyncHTTPClient
    from tornado.httpserver import HTTPServer
    from tornado.testing import bind_unused_port
    from tornado.websocket import websocket_connect

    from animenb.server.app import AnimeService, ServerConfig, make_app

    service = AnimeService(ServerConfig(home=root / "home", outputs=root / "outputs", models="tiny", warm=warm,
                                        quality_notebook=False,
                                        kernel_env={"OMP_NUM_THREADS": str(args.threads),
                                                    "MKL_NUM_THREADS": str(args.threads)}))
    sock, port = bind_unused_port()
    server = HTTPServer(make_app(service))
    server.add_sockets([sock])
    await service.start()
    await service.runner.wait_ready(120)
    client = AsyncHTTPClient()
    body = json.dumps({"prompt": "anime girl", "seed": 1, "steps": args.steps, "width": 64, "height": 64}).encode()
    times = []
    try:
        for i in range(n + 1):  # the first job loads the models into the kernel: not counted
            t0 = time.perf_counter()
            resp = await client.fetch(f"http://127.0.0.1:{port}/api/anime/generate", method="POST", body=body)
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
            if i:
                times.append(elapsed)
    finally:
        server.stop()
        await service.stop()
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=10)
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    root = Path(tempfile.mkdtemp(prefix="animenb-bench-"))
    os.environ["ANIMENB_HOME"] = str(root / "home")  # tiny models are built once, shared by all three

    direct = direct_ms(args.jobs, root, args)
    warm = asyncio.run(server_ms(args.jobs, root / "warm", True, args))
    cold = asyncio.run(server_ms(args.jobs, root / "cold", False, args))
    d, w, c = (statistics.median(x) for x in (direct, warm, cold))
    print(f"job overhead: tiny CHARACTER_SHEET 64x64, {args.steps} steps, median of {args.jobs} jobs "
          f"({platform.machine()}, {os.cpu_count()} CPUs, torch threads {args.threads})")
    print(f"  direct phase function       {d:9.1f} ms")
    print(f"  server, warm kernel         {w:9.1f} ms   overhead {w - d:8.1f} ms (target <= 50)")
    print(f"  server, cold kernel         {c:9.1f} ms   overhead {c - d:8.1f} ms")
    print(f"  warm/cold speed-up (job)    {c / w:9.2f} x")
    print(f"  warm/cold speed-up (overhead) {(c - d) / max(w - d, 1e-9):7.2f} x (target >= 5)")


if __name__ == "__main__":
    main()
