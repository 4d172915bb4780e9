"""ComfyUI and animenb side by side, in one run, with one client: the four rows of issue 16's table.

Starts the real ComfyUI the tests install (tests/comfyui/install.sh, cached under
${ANIMENB_HOME:-~/.cache/animenb}/comfyui) and `animenb serve` on loopback, then measures:

1. GET health-class endpoint: ComfyUI `/system_stats` vs `/api/anime/health`, req/s with 16
   keep-alive connections (a raw HTTP/1.1 client: one request in flight per connection).
2. GET list: ComfyUI `/queue` vs `/api/anime/jobs` (as many jobs as the run made), the same way.
   Rows 1 and 2 run in A-B-B-A order and average the two runs of each side.
3. A trivial job: ComfyUI EmptyImage 64 px -> ImageInvert -> SaveImage (a new colour each time,
   so its cache never answers), POST /prompt -> `executing {node: null}` on its WebSocket;
   against animenb's warm in-job overhead (bench/job_overhead.py's definition: a tiny 64 px
   character sheet through `serve --no-quality`, job time - the phase function's own time).
   Measured in interleaved pairs, one job on each side in turn, so both see the same load.
4. Progress fan-out to 200 WebSocket subscribers, p95: ComfyUI's `status` broadcast after a
   POST /prompt (POST sent -> the last of 200 clients has it) against animenb's progress events
   (the kernel's timestamp -> the last of 200 subscribers; bench/load.py's measure, on the
   tests' progress notebook).

Prints each row's figures and the ratio animenb / ComfyUI, with its direction ("ahead" or
"behind"). Absolute figures on a shared box move 3-4x between days; only the ratios of one
run mean anything. Bounded: about 3-5 minutes on 2 CPUs. Asserts nothing.

    python bench/comfyui_side_by_side.py [--duration 3] [--jobs 10] [--rounds 20] [--subscribers 200]
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
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

import job_overhead  # noqa: E402  (bench/: the warm in-job overhead, measured as that bench does)
from comfyui_overhead import Direct  # noqa: E402  (bench/: a bare ComfyUI client)
from load import API, free_port, pct, stop_server, subscribers, wait_ready  # noqa: E402
from results import record  # noqa: E402


# -- a raw keep-alive HTTP/1.1 client ------------------------------------------------------------
async def _read_response(reader: asyncio.StreamReader) -> tuple[int, dict]:
    status = await reader.readline()
    if not status:
        raise ConnectionError("connection closed")
    headers = {}
    while (line := await reader.readline()) not in (b"\r\n", b"\n", b""):
        key, _, value = line.decode("latin-1").partition(":")
        headers[key.strip().lower()] = value.strip()
    if "content-length" in headers:
        await reader.readexactly(int(headers["content-length"]))
    elif headers.get("transfer-encoding", "").lower() == "chunked":
        while True:
            size = int((await reader.readline()).split(b";")[0], 16)
            await reader.readexactly(size + 2)
            if size == 0:
                break
    return int(status.split()[1]), headers


async def keepalive_rate(port: int, path: str, connections: int, duration: float) -> dict:
    """Closed loop: `connections` persistent connections, each sending its next GET when answered."""
    request = f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: keep-alive\r\n\r\n".encode()
    latencies: list[float] = []
    errors = 0
    stop = time.perf_counter() + duration

    async def connection() -> None:
        nonlocal errors
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            while time.perf_counter() < stop:
                t0 = time.perf_counter()
                writer.write(request)
                code, headers = await _read_response(reader)
                latencies.append(1000 * (time.perf_counter() - t0))
                errors += code != 200
                if headers.get("connection", "").lower() == "close":
                    writer.close()
                    reader, writer = await asyncio.open_connection("127.0.0.1", port)
        finally:
            writer.close()

    t0 = time.perf_counter()
    await asyncio.gather(*(connection() for _ in range(connections)))
    elapsed = time.perf_counter() - t0
    return {"rps": len(latencies) / elapsed, "p50_ms": pct(latencies, 50), "p99_ms": pct(latencies, 99),
            "errors": errors, "requests": len(latencies)}


async def abba(a: tuple[int, str], b: tuple[int, str], connections: int, duration: float) -> tuple[dict, dict]:
    """A, B, B, A: each side's two runs averaged, so a drift in the machine's load hits both alike."""
    runs = {0: [], 1: []}
    for side in (0, 1, 1, 0):
        port, path = (a, b)[side]
        runs[side].append(await keepalive_rate(port, path, connections, duration))
    merged = []
    for side in (0, 1):
        rows = runs[side]
        merged.append({"rps": statistics.mean(r["rps"] for r in rows),
                       "p50_ms": statistics.mean(r["p50_ms"] for r in rows),
                       "errors": sum(r["errors"] for r in rows), "rps_runs": [round(r["rps"]) for r in rows]})
    return merged[0], merged[1]


# -- ComfyUI ---------------------------------------------------------------------------------------
def trivial_prompt(colour: int) -> dict:
    return {"1": {"class_type": "EmptyImage", "inputs": {"width": 64, "height": 64, "batch_size": 1,
                                                          "color": colour}},
            "2": {"class_type": "ImageInvert", "inputs": {"image": ["1", 0]}},
            "3": {"class_type": "SaveImage", "inputs": {"images": ["2", 0], "filename_prefix": "side_by_side"}}}


async def comfy_trivial_job(comfy: Direct, colour: int) -> float:
    """Submit -> done (ms) of one trivial prompt; a new `colour` each time, so its cache never answers."""
    t0 = time.perf_counter()
    await comfy.submit_and_wait(trivial_prompt(colour), timeout=30)
    return 1000 * (time.perf_counter() - t0)


async def comfy_status_fanout(client, url: str, n: int, rounds: int) -> dict:
    """POST /prompt -> the last of `n` WebSocket clients has the `status` broadcast it causes (ms)."""
    from tornado.websocket import websocket_connect

    ws_url = url.replace("http", "ws", 1)
    ids = [uuid.uuid4().hex for _ in range(n)]
    conns = await asyncio.gather(*(websocket_connect(f"{ws_url}/ws?clientId={i}") for i in ids))
    round_start = [float("inf")]  # the current round's POST time
    last_seen = [0.0] * n  # per client: when it last had a status from the current round
    have = [0]
    everyone = asyncio.Event()

    async def reader(k: int, conn) -> None:
        while (message := await conn.read_message()) is not None:
            now = time.perf_counter()
            if isinstance(message, str) and now > round_start[0] and last_seen[k] < round_start[0] \
                    and json.loads(message).get("type") == "status":
                last_seen[k] = now
                have[0] += 1
                if have[0] == n:
                    everyone.set()

    readers = [asyncio.ensure_future(reader(k, c)) for k, c in enumerate(conns)]
    delays = []
    try:
        await asyncio.sleep(1.0)  # each socket's own greeting `status` arrives first
        for index in range(rounds):
            body = json.dumps({"prompt": trivial_prompt(0x10000 + index), "client_id": ids[0]}).encode()
            have[0] = 0
            everyone.clear()
            round_start[0] = t0 = time.perf_counter()
            await client.fetch(url + "/prompt", method="POST", body=body)
            await asyncio.wait_for(everyone.wait(), timeout=10)
            delays.append(1000 * (max(last_seen) - t0))
            round_start[0] = float("inf")
            await asyncio.sleep(0.4)  # the prompt finishes and its closing broadcast passes before the next round
    finally:
        for conn in conns:
            conn.close()
        for task in readers:
            task.cancel()
    return {"subscribers": n, "rounds": rounds, "p50_ms": pct(delays, 50), "p95_ms": pct(delays, 95)}


# -- animenb ---------------------------------------------------------------------------------------
def start_animenb(root: Path, port: int, subscribers: int) -> subprocess.Popen:
    """`serve` on the tests' progress notebook (phase 1 = N short steps, no models): rows 1, 2 and 4."""
    from animenb.phases.catalog import get_phase

    notebooks = root / "notebooks"
    notebooks.mkdir(parents=True, exist_ok=True)
    (notebooks / get_phase(1).notebook).write_bytes((ROOT / "tests" / "notebooks" / "progress.ipynb").read_bytes())
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    log = open(root / "serve.log", "wb")
    return subprocess.Popen([sys.executable, "-m", "animenb.cli", "serve", "--port", str(port), "--models", "tiny",
                             "--home", str(root / "home"), "--outputs", str(root / "outputs"), "--notebooks",
                             str(notebooks), "--no-quality", "--max-websockets-per-client", str(subscribers + 8),
                             "--log-level", "WARNING"],
                            stdout=log, stderr=subprocess.STDOUT, env=env, cwd=root)


def ratio_text(animenb: float, comfy: float, higher_is_better: bool) -> tuple[float, str]:
    ratio = animenb / comfy
    ahead = ratio >= 1 if higher_is_better else ratio <= 1
    factor = ratio if higher_is_better else 1 / ratio
    return ratio, (f"{factor:.2f}x ahead" if ahead else f"{1 / factor:.2f}x behind")


async def trivial_jobs_interleaved(client, comfy_url: str, root: Path, pairs: int) -> dict:
    """Row 3 as pairs: one trivial ComfyUI prompt and one warm animenb job, in turn (the order flips every
    pair), so a change in the machine's load hits both sides alike. animenb's figure is job_overhead.py's
    in-job overhead: its `serve --no-quality` and its tiny 64 px sheet, job time - the phase function's time
    in that job - the part of the function its manifest does not time (from direct calls here)."""
    args = argparse.Namespace(threads=1, steps=2)
    root = root / "warm"  # its home is $ANIMENB_HOME: the direct calls and the server share the tiny models
    direct = [job_overhead.direct_call(root / "direct" / f"{i}", args) for i in range(4)]  # the first loads models
    untimed = statistics.median(wall - timed for wall, timed in direct[1:])
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    proc = job_overhead.start_server(root, "warm", port, args)
    comfy, ours, totals = [], [], []
    comfy_client = Direct(comfy_url)  # one WebSocket for all its prompts, as ComfyUI's own frontend
    try:
        await wait_ready(client, base, proc, timeout=180)
        await comfy_client.connect()
        body = job_overhead.job_body(args)
        for colour in range(2):  # uncounted: models into the kernel, ComfyUI's first prompts
            await job_overhead.one_job(client, base, body, root / "warm")
            await comfy_trivial_job(comfy_client, colour)
        for index in range(pairs):
            for side in ("comfyui", "animenb") if index % 2 == 0 else ("animenb", "comfyui"):
                if side == "comfyui":
                    comfy.append(await comfy_trivial_job(comfy_client, (index + 2) * 9973 % 0xFFFFFF))
                else:
                    row = await job_overhead.one_job(client, base, body, root / "warm")
                    ours.append(row["total"] - row["phase"] - untimed)
                    totals.append(row["total"])
    finally:
        if comfy_client.ws is not None:
            comfy_client.ws.close()
        stop_server(proc)
    return {"comfyui_ms": comfy, "animenb_overhead_ms": ours, "animenb_total_ms": totals,
            "pair_ratios": [a / c for a, c in zip(ours, comfy)]}


async def measure(args, root: Path, comfy_url: str) -> dict:
    from tornado.httpclient import AsyncHTTPClient

    client = AsyncHTTPClient(force_instance=True, defaults={"request_timeout": 60})
    comfy_port = int(comfy_url.rsplit(":", 1)[1])
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    proc = start_animenb(root / "progress-server", port, args.subscribers)
    out = {}
    try:
        await wait_ready(client, base, proc, timeout=180)
        # Row 4 first: it also leaves two finished jobs in the store for the list row.
        out["fanout_comfyui"] = await comfy_status_fanout(client, comfy_url, args.subscribers, args.rounds)
        out["fanout_animenb"] = await subscribers(client, base, base.replace("http", "ws", 1), args.subscribers,
                                                  args.fanout_steps, timeout=300)
        out["health_comfyui"], out["health_animenb"] = await abba(
            (comfy_port, "/system_stats"), (port, f"{API}/health"), args.connections, args.duration)
        out["list_comfyui"], out["list_animenb"] = await abba(
            (comfy_port, "/queue"), (port, f"{API}/jobs"), args.connections, args.duration)
        out["list_animenb"]["jobs_listed"] = len(json.loads((await client.fetch(base + f"{API}/jobs")).body)["jobs"])
    finally:
        stop_server(proc)
    try:
        out["trivial"] = await trivial_jobs_interleaved(client, comfy_url, root, args.jobs)
    finally:
        client.close()
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=3.0, help="seconds per keep-alive load run")
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--jobs", type=int, default=16, help="row 3: pairs of trivial jobs (one on each side)")
    parser.add_argument("--rounds", type=int, default=20, help="ComfyUI status broadcasts measured")
    parser.add_argument("--subscribers", type=int, default=200)
    parser.add_argument("--fanout-steps", type=int, default=40, help="progress events of animenb's fan-out job")
    args = parser.parse_args()
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ["ANIMENB_THREADS"] = "1"
    from comfyui.fixtures import ComfyUIProcess, ensure_install  # tests/comfyui: the tests' own install

    started = time.perf_counter()
    install = ensure_install()
    root = Path(tempfile.mkdtemp(prefix="animenb-side-by-side-"))
    (root / "warm").mkdir()
    os.environ["ANIMENB_HOME"] = str(root / "warm" / "home")  # job_overhead's servers and direct calls share it
    comfy = ComfyUIProcess(root=install, workdir=root / "comfyui").start()
    try:
        import torch

        torch.set_num_threads(1)
        out = asyncio.run(measure(args, root, comfy.url))
    finally:
        comfy.stop()
    med = statistics.median
    rows = [
        ("1. GET health-class, 16 keep-alive conns (req/s)", "/system_stats", f"{API}/health",
         out["health_comfyui"]["rps"], out["health_animenb"]["rps"], True),
        ("2. GET list, 16 keep-alive conns (req/s)", "/queue", f"{API}/jobs ({out['list_animenb']['jobs_listed']} jobs)",
         out["list_comfyui"]["rps"], out["list_animenb"]["rps"], True),
        ("3. trivial job: submit->done vs warm in-job overhead (ms, median)", "EmptyImage->Invert->Save",
         "tiny sheet 64 px", med(out["trivial"]["comfyui_ms"]), med(out["trivial"]["animenb_overhead_ms"]), False),
        (f"4. progress to {args.subscribers} WebSockets, p95 (ms)", "status broadcast after POST",
         "kernel event -> last subscriber", out["fanout_comfyui"]["p95_ms"], out["fanout_animenb"]["last_p95_ms"],
         False),
    ]
    print(f"ComfyUI vs animenb, one run ({platform.machine()}, {os.cpu_count()} CPUs, "
          f"load average {os.getloadavg()[0]:.1f}; {time.perf_counter() - started:.0f} s)")
    print(f"  {'measure':<66}{'ComfyUI':>10}{'animenb':>10}{'animenb/ComfyUI':>17}")
    figures = {}
    for label, comfy_what, ours, comfy_value, our_value, higher in rows:
        ratio, verdict = ratio_text(our_value, comfy_value, higher)
        print(f"  {label:<66}{comfy_value:10.1f}{our_value:10.1f}{ratio:9.2f} ({verdict})")
        print(f"      ComfyUI: {comfy_what}; animenb: {ours}")
        figures[label.split(".")[0]] = {"comfyui": round(comfy_value, 2), "animenb": round(our_value, 2),
                                        "ratio": round(ratio, 3), "verdict": verdict}
    ratios = sorted(out["trivial"]["pair_ratios"])
    print(f"  row 3 in {len(ratios)} interleaved pairs: median of the pairs' ratios {med(ratios):.2f}x, quartiles "
          f"{pct(ratios, 25):.2f}-{pct(ratios, 75):.2f}x; animenb's whole submit->done median "
          f"{med(out['trivial']['animenb_total_ms']):.1f} ms")
    print(f"  errors in the load runs: "
          f"ComfyUI {out['health_comfyui']['errors'] + out['list_comfyui']['errors']}, "
          f"animenb {out['health_animenb']['errors'] + out['list_animenb']['errors']}")
    print(f"  fan-out p50: ComfyUI {out['fanout_comfyui']['p50_ms']:.1f} ms over {args.rounds} broadcasts, animenb "
          f"{out['fanout_animenb']['last_p50_ms']:.1f} ms over {out['fanout_animenb']['events_to_all']} events; "
          f"animenb p95 without the job's last two events (a burst just before the job ends) "
          f"{out['fanout_animenb']['last_p95_mid_job_ms']:.1f} ms")
    print("  targets (issue 16): row 3 <= 4x ComfyUI (moonshot 2x); row 4 <= 1x ComfyUI")
    figures["4"]["animenb_p95_mid_job_ms"] = round(out["fanout_animenb"]["last_p95_mid_job_ms"], 2)
    record("comfyui_side_by_side", figures)
    return 0


if __name__ == "__main__":
    sys.exit(main())
