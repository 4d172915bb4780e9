"""Chaos on a real `animenb serve` (a subprocess, tiny notebook jobs): faults must never stop the queue.

`--jobs` tiny jobs (default 200) from 4 callers (3 tokens and an anonymous client, the first token
queueing its whole share at once) while faults land: random cancels, kernel kills (SIGKILL), another
process holding the database's write lock for `--lock` seconds, and a SIGKILL of the server (and its
kernel) in the middle, then a restart on the same home. Clients retry a submit the server refused
(503 while the database is locked, or no answer while it restarts), as `Retry-After` asks.

Prints, from one run:
- jobs by terminal state;
- invariants broken (target 0): a job not terminal at the end, a `succeeded` job whose manifest or
  listed files are missing, a `lost` job whose outputs are complete;
- p95 queue wait per caller (fairness: the largest <= 2x the smallest);
- /health p99 while the faults land (target <= 50 ms).

Phase-1 jobs run tests/notebooks/progress.ipynb (`serve --notebooks`), no models are loaded.

    python bench/chaos.py [--jobs 200] [--lock 10] [--seed 0]
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import random
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil
from tornado.httpclient import AsyncHTTPClient, HTTPClientError

from load import API, REPO, free_port, pct, wait_ready
from results import record

sys.path.insert(0, str(REPO / "tests"))
from faultkit import database_locked_by_another_process, kill_group  # noqa: E402 (the tests' fault helpers)

CALLERS = ("flood", "bob", "carol", "anonymous")


def start_server(root: Path, port: int) -> subprocess.Popen:
    from animenb.phases.catalog import get_phase

    notebooks = root / "notebooks"
    notebooks.mkdir(exist_ok=True)
    (notebooks / get_phase(1).notebook).write_bytes((REPO / "tests" / "notebooks" / "progress.ipynb").read_bytes())
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    log = open(root / "serve.log", "ab")
    return subprocess.Popen([sys.executable, "-m", "animenb.cli", "serve", "--port", str(port), "--models", "tiny",
                             "--home", str(root / "home"), "--outputs", str(root / "outputs"), "--no-quality",
                             "--notebooks", str(notebooks), "--max-queue", "1000", "--max-queued-per-user", "1000",
                             "--log-level", "WARNING"], stdout=log, stderr=subprocess.STDOUT, env=env, cwd=root)


def kernels_of(proc: subprocess.Popen) -> list[psutil.Process]:
    try:
        return [c for c in psutil.Process(proc.pid).children(recursive=True) if "ipykernel" in " ".join(c.cmdline())]
    except psutil.NoSuchProcess:
        return []


def make_tokens(home: Path) -> dict[str, str | None]:
    """A user token for each named caller (made in the home's database before the server opens it)."""
    from animenb.store import SqliteJobStore
    from animenb.store.tokens_sqlite import SqliteTokenStore

    store = SqliteJobStore(home / "jobs.sqlite")
    tokens = SqliteTokenStore(store.db)
    made = {name: (None if name == "anonymous" else tokens.create(name, "user")[1]) for name in CALLERS}
    store.close()
    return made


class Chaos:
    def __init__(self, args, root: Path):
        self.args, self.root = args, root
        self.rng = random.Random(args.seed)
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.client = AsyncHTTPClient(max_clients=64)
        self.tokens = make_tokens(root / "home")
        self.proc = start_server(root, self.port)
        self.accepted: dict[str, str] = {}       # job id -> caller
        self.cancel_tokens: dict[str, str] = {}  # anonymous job id -> its cancel token
        self.health_ms: list[float] = []
        self.faulting = False
        self.faults: dict[str, int] = {"cancels": 0, "kernel_kills": 0, "locks": 0, "server_kills": 0}

    async def request(self, method: str, path: str, body=None, token: str | None = None):
        headers = {"Content-Type": "application/json"}
        if token:
            headers["Authorization"] = f"Bearer {token}"
        try:
            resp = await self.client.fetch(self.base + path, method=method, raise_error=False, headers=headers,
                                           body=None if body is None else json.dumps(body), request_timeout=30,
                                           allow_nonstandard_methods=True)
        except (OSError, HTTPClientError):  # the server is restarting (refused, or a stream closed mid-answer)
            return 0, {}, {}
        data = json.loads(resp.body) if resp.body and resp.headers.get("Content-Type", "").startswith(
            "application/json") else {}
        return resp.code, data, resp.headers

    async def submit(self, caller: str) -> None:
        """Queue one job for `caller`, retrying while the server cannot take it (503, restarting)."""
        body = {"prompt": "chaos 0.01", "steps": 2, "width": 64, "height": 64,
                "seed": self.rng.randrange(1 << 30), "visibility": "public"}
        while True:
            code, data, headers = await self.request("POST", f"{API}/generate", body, self.tokens[caller])
            if code == 202:
                self.accepted[data["job_id"]] = caller
                if "cancel_token" in data:
                    self.cancel_tokens[data["job_id"]] = data["cancel_token"]
                return
            if code not in (0, 503, 507):
                raise RuntimeError(f"submit answered {code}: {data}")
            await asyncio.sleep(float(headers.get("Retry-After", 0.5)) if headers else 0.5)

    async def callers(self) -> None:
        share = self.args.jobs // len(CALLERS)
        await asyncio.gather(*(self.submit("flood") for _ in range(share)))  # one caller's whole share at once
        for _ in range(share):
            await asyncio.gather(*(self.submit(c) for c in CALLERS[1:]))
            await asyncio.sleep(0.05)

    async def cancel_some(self) -> None:
        while self.faulting:
            await asyncio.sleep(self.rng.uniform(0.5, 2.0))
            if not self.accepted:
                continue
            job_id = self.rng.choice(list(self.accepted))
            caller = self.accepted[job_id]
            query = f"?cancel_token={self.cancel_tokens[job_id]}" if job_id in self.cancel_tokens else ""
            code, _, _ = await self.request("DELETE", f"{API}/generation/{job_id}{query}", token=self.tokens[caller])
            self.faults["cancels"] += code == 200

    async def sample_health(self) -> None:
        while self.faulting:
            t0 = time.perf_counter()
            code, _, _ = await self.request("GET", f"{API}/health")
            if code == 200:
                self.health_ms.append(1000 * (time.perf_counter() - t0))
            await asyncio.sleep(0.05)

    async def faults_in_order(self) -> None:
        await asyncio.sleep(2)
        for _ in range(2):  # kernel kills
            for kernel in kernels_of(self.proc):
                kernel.kill()
                self.faults["kernel_kills"] += 1
            await asyncio.sleep(self.rng.uniform(1, 3))
        with database_locked_by_another_process(self.root / "home" / "jobs.sqlite"):
            self.faults["locks"] += 1
            await asyncio.sleep(self.args.lock)
        await asyncio.sleep(self.rng.uniform(1, 3))
        kill_group(self.proc)  # the server, mid-run
        self.faults["server_kills"] += 1
        self.proc = start_server(self.root, self.port)
        await wait_ready(self.client, self.base, self.proc, timeout=120)

    async def run(self) -> None:
        await wait_ready(self.client, self.base, self.proc)
        self.faulting = True
        background = [asyncio.ensure_future(self.cancel_some()), asyncio.ensure_future(self.sample_health())]
        await asyncio.gather(self.callers(), self.faults_in_order())
        self.faulting = False
        await asyncio.gather(*background)
        deadline = time.monotonic() + self.args.timeout
        while time.monotonic() < deadline:
            code, health, _ = await self.request("GET", f"{API}/health")
            if code == 200 and health["components"]["jobs"]["active_count"] == 0:
                break
            await asyncio.sleep(0.5)
        self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(30)


def complete(out: Path) -> bool:
    try:
        manifest = json.loads((out / "manifest.json").read_text())
    except (OSError, ValueError):
        return False
    return bool(manifest.get("files")) and all((out / f["path"]).is_file() for f in manifest["files"])


def report(chaos: Chaos) -> dict:
    from animenb.store import SqliteJobStore

    store = SqliteJobStore(chaos.root / "home" / "jobs.sqlite")
    jobs = [store.get(job_id) for job_id in chaos.accepted]
    store.close()
    states: dict[str, int] = {}
    broken: list[str] = []
    waits: dict[str, list[float]] = {c: [] for c in CALLERS}
    for job in jobs:
        states[job.status.value] = states.get(job.status.value, 0) + 1
        out = chaos.root / "outputs" / job.id
        if not job.terminal:
            broken.append(f"{job.id} still {job.status.value}")
        elif job.status.value == "succeeded" and not complete(out):
            broken.append(f"{job.id} succeeded without its files")
        elif job.status.value == "lost" and complete(out):
            broken.append(f"{job.id} lost with complete outputs")
        if job.started_at is not None:
            waits[chaos.accepted[job.id]].append(job.started_at - job.created_at)
    p95 = {caller: pct(values, 95) for caller, values in waits.items()}
    finite = [v for v in p95.values() if v == v]
    return {"jobs": len(jobs), "states": states, "faults": chaos.faults, "invariants_broken": broken,
            "p95_wait_s": p95, "fairness_ratio": max(finite) / max(min(finite), 1e-3) if finite else None,
            "health_p50_ms": pct(chaos.health_ms, 50), "health_p99_ms": pct(chaos.health_ms, 99),
            "health_samples": len(chaos.health_ms)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jobs", type=int, default=200)
    parser.add_argument("--lock", type=float, default=10.0, help="seconds another process holds the write lock")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--timeout", type=float, default=600.0, help="seconds to wait for the queue to drain")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="animenb-chaos-") as tmp:
        root = Path(tmp)
        (root / "home").mkdir()
        chaos = Chaos(args, root)
        try:
            asyncio.run(chaos.run())
        finally:
            if chaos.proc.poll() is None:
                kill_group(chaos.proc)
        figures = report(chaos)
    print(f"machine: {platform.machine()} {os.cpu_count()} CPUs, Python {platform.python_version()}")
    print(f"jobs: {figures['jobs']} by terminal state: {figures['states']}  faults: {figures['faults']}")
    print(f"invariants broken: {len(figures['invariants_broken'])} (target 0)")
    for line in figures["invariants_broken"][:20]:
        print(f"  {line}")
    print("p95 queue wait per caller: " + ", ".join(f"{c} {v:.2f} s" for c, v in figures["p95_wait_s"].items()))
    print(f"fairness (largest / smallest p95 wait): {figures['fairness_ratio']:.2f} (target <= 2)")
    print(f"/health p99 during the faults: {figures['health_p99_ms']:.1f} ms (median {figures['health_p50_ms']:.1f} ms) "
          f"over {figures['health_samples']} samples (target <= 50 ms)")
    record("chaos", figures)
    return 0 if not figures["invariants_broken"] else 1


if __name__ == "__main__":
    sys.exit(main())
