"""Listing cost vs history: the same `animenb serve` over a job store of 1k, 100k and 1M finished jobs.

One store file grows between the sizes (`store.import_records` with tests/history.py's jobs:
phases 1-3, a tenth failed, a quarter private to seven users); at each size a fresh server
starts on it (start-up time: to the first ready /health) and answers each endpoint `--requests`
times, one request at a time, after two warm-up requests. Prints p50 per endpoint and size, and
the growth from the smallest size to each larger one (target: <= 2x at 1M). Asserts nothing.

    python bench/store_scale.py [--sizes 1000,100000,1000000] [--requests 15]
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))

from history import history_records  # noqa: E402  (tests/history.py)
from load import free_port, start_server, stop_server, wait_ready  # noqa: E402  (bench/load.py)

API = "/api/anime"


def grow(home: Path, size: int, have: int) -> float:
    """Import jobs until the store holds `size`, each batch older than the last; returns the seconds taken."""
    from animenb.server.app import STORE_NAME
    from animenb.store import SqliteJobStore

    store = SqliteJobStore(home / STORE_NAME)
    t0 = time.perf_counter()
    store.import_records(history_records(size - have, start=have, now=time.time() - 10.0 * have))
    seconds = time.perf_counter() - t0
    store.close()
    return seconds


def admin_token(home: Path) -> str:
    from animenb.server.app import STORE_NAME
    from animenb.store.tokens_sqlite import SqliteTokenStore

    tokens = SqliteTokenStore(home / STORE_NAME)
    _, token = tokens.create("bench", "admin")
    tokens.close()
    return token


async def measure(base: str, token: str, requests: int) -> dict[str, float]:
    from tornado.httpclient import AsyncHTTPClient

    client = AsyncHTTPClient()
    auth = {"Authorization": f"Bearer {token}"}
    first = json.loads((await client.fetch(base + f"{API}/jobs?limit=50")).body)
    cursor = first["next_cursor"]
    for _ in range(2):  # the cursor of page 4
        cursor = json.loads((await client.fetch(base + f"{API}/jobs?limit=50&cursor={cursor}")).body)["next_cursor"]
    endpoints = {
        "/health": (f"{API}/health", {}),
        "/jobs (first page)": (f"{API}/jobs?limit=50", {}),
        "/jobs?status=succeeded": (f"{API}/jobs?limit=50&status=succeeded", {}),
        "/jobs?cursor= (page 4)": (f"{API}/jobs?limit=50&cursor={cursor}", {}),
        "/gallery": (f"{API}/gallery", {}),
        "/gallery?phase=2": (f"{API}/gallery?phase=2", {}),
        "/admin/stats": (f"{API}/admin/stats", auth),
    }
    out = {}
    for name, (path, headers) in endpoints.items():
        times = []
        for i in range(requests + 2):
            t0 = time.perf_counter()
            resp = await client.fetch(base + path, headers=headers, raise_error=False, request_timeout=120)
            if resp.code != 200:
                raise RuntimeError(f"{path}: {resp.code} {resp.body[:200]!r}")
            if i >= 2:
                times.append(1000 * (time.perf_counter() - t0))
        out[name] = statistics.median(times)
    return out


async def main(args) -> None:
    from tornado.httpclient import AsyncHTTPClient

    sizes = sorted(int(s) for s in args.sizes.split(","))
    print(f"store_scale: {platform.node()}, {os.cpu_count()} CPUs, Python {platform.python_version()}, "
          f"load {os.getloadavg()[0]:.1f}; p50 of {args.requests} requests (ms)")
    results: dict[int, dict[str, float]] = {}
    with tempfile.TemporaryDirectory(prefix="animenb-store-scale-") as tmp:
        root = Path(tmp)
        home = root / "home"
        home.mkdir(mode=0o700)
        token, have = admin_token(home), 0
        server_args = argparse.Namespace(max_queue=64, subscribers=8, slow_timeout=30)
        for size in sizes:
            fill_s, have = grow(home, size, have), size
            port = free_port()
            shutil.rmtree(root / "notebooks", ignore_errors=True)  # start_server writes it afresh
            t0 = time.perf_counter()
            proc = start_server(root, port, server_args)
            try:
                await wait_ready(AsyncHTTPClient(), f"http://127.0.0.1:{port}", proc, timeout=300)
                start_s = time.perf_counter() - t0
                results[size] = await measure(f"http://127.0.0.1:{port}", token, args.requests)
                results[size]["start (s)"] = start_s
            finally:
                stop_server(proc)
            db = home / "jobs.sqlite"
            print(f"  {size:>9,} jobs: imported in {fill_s:.1f} s, store {db.stat().st_size / 1e6:.0f} MB, "
                  f"server ready in {start_s:.1f} s; p50 ms: "
                  + ", ".join(f"{k} {v:.1f}" for k, v in results[size].items() if k != "start (s)"), flush=True)
    base = sizes[0]
    header = f"{'endpoint':<26}" + "".join(f"{f'{s:,} jobs':>16}" for s in sizes) + \
        "".join(f"{f'growth {s:,}':>18}" for s in sizes[1:])
    print(header)
    for name in results[base]:
        row = f"{name:<26}" + "".join(f"{results[s][name]:>16.1f}" for s in sizes)
        row += "".join(f"{results[s][name] / results[base][name]:>17.2f}x" for s in sizes[1:])
        print(row)
    print("target: every listing endpoint within 2x of its figure at the smallest size")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="1000,100000,1000000", help="store sizes, comma-separated")
    parser.add_argument("--requests", type=int, default=15, help="measured requests per endpoint and size")
    asyncio.run(main(parser.parse_args()))
