"""Loopback load on a real `animenb serve` (a subprocess, tiny notebook jobs); stops by itself.

1. GET /health and GET /jobs: requests per second and p50/p99 latency at 1, 16 and 64
   concurrent clients (each level runs `--duration` seconds).
2. 200 concurrent POST /generate: each answered 202 or 429 (queue bound `--max-queue`);
   every 202 must end terminal: none lost.
3. 200 WebSocket subscribers on one job: for each progress event, the delay from the
   kernel's timestamp (`kernel_time`, set when the notebook publishes it) to the moment the
   last of the 200 subscribers has it; p50/p95 over the job's events. Server, kernel and
   clients share one machine and clock; the clients share one event loop, so the figure
   includes their own scheduling.
4. Abuse: 4 POSTs declaring 100 MB bodies (each sending as fast as the server lets it) and
   150 slow connections (half stuck in their headers, half in their bodies) while 16 clients
   load GET /health: the server's memory growth (peak RSS during the abuse - RSS before;
   target <= 20 MB), /health p99 under abuse vs. without it (target <= 2x), and how many
   slow connections the server closed by itself (`--slow-timeout`, its body/idle timeouts).

Phase-1 jobs run tests/notebooks/progress.ipynb (`serve --notebooks`): N steps of a short
sleep, one PNG and a manifest; no models are loaded. Prints figures; asserts nothing
except "none lost" (which it reports).

    python bench/load.py [--duration 3] [--clients 1,16,64] [--generate 200] [--subscribers 200]
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
API = "/api/anime"


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[max(0, min(len(ordered) - 1, int(round(q / 100 * len(ordered) + 0.5)) - 1))]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(root: Path, port: int, args) -> subprocess.Popen:
    from animenb.phases.catalog import get_phase

    notebooks = root / "notebooks"
    notebooks.mkdir()
    (notebooks / get_phase(1).notebook).write_bytes((REPO / "tests" / "notebooks" / "progress.ipynb").read_bytes())
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    log = open(root / "serve.log", "wb")
    proc = subprocess.Popen([sys.executable, "-m", "animenb.cli", "serve", "--port", str(port), "--models", "tiny",
                             "--home", str(root / "home"), "--outputs", str(root / "outputs"),
                             "--notebooks", str(notebooks), "--max-queue", str(args.max_queue),
                             "--max-queued-per-user", str(args.max_queue), "--log-level", "WARNING",
                             "--max-websockets-per-client", str(args.subscribers + 8),
                             "--body-timeout", str(args.slow_timeout), "--idle-timeout", str(args.slow_timeout)],
                            stdout=log, stderr=subprocess.STDOUT, env=env, cwd=root)
    return proc


def stop_server(proc: subprocess.Popen) -> None:
    """SIGTERM (the server's clean stop), then kill after 30 s."""
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        proc.kill()


async def wait_ready(client, base: str, proc, timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError("animenb serve exited")
        try:
            resp = await client.fetch(base + f"{API}/health", raise_error=False, request_timeout=2)
            if resp.code == 200 and json.loads(resp.body)["components"]["kernels"]["ready"]:
                return
        except Exception:
            pass
        await asyncio.sleep(0.2)
    raise TimeoutError("server not ready")


async def closed_loop(client, url: str, concurrency: int, duration: float) -> tuple[int, int, list[float], float]:
    """`concurrency` clients, each sending the next request when its last one is answered."""
    latencies: list[float] = []
    errors = 0
    stop = time.perf_counter() + duration

    async def one() -> None:
        nonlocal errors
        while time.perf_counter() < stop:
            t0 = time.perf_counter()
            resp = await client.fetch(url, raise_error=False, request_timeout=30)
            latencies.append(1000 * (time.perf_counter() - t0))
            errors += resp.code != 200

    t0 = time.perf_counter()
    await asyncio.gather(*(one() for _ in range(concurrency)))
    return len(latencies), errors, latencies if latencies else [float("nan")], time.perf_counter() - t0


async def generate_burst(client, base: str, n: int, timeout: float) -> dict:
    body = json.dumps({"prompt": "load 0.001", "steps": 2, "width": 64, "height": 64})

    async def post():
        resp = await client.fetch(base + f"{API}/generate", method="POST", body=body, raise_error=False,
                                  headers={"Content-Type": "application/json"}, request_timeout=60)
        return resp.code, json.loads(resp.body) if resp.body else {}, resp.headers.get("Retry-After")

    t0 = time.perf_counter()
    results = await asyncio.gather(*(post() for _ in range(n)))
    answered = time.perf_counter() - t0
    accepted = [r[1]["job_id"] for r in results if r[0] == 202]
    codes: dict[int, int] = {}
    for code, _, _ in results:
        codes[code] = codes.get(code, 0) + 1
    retry_after = sorted({int(r[2]) for r in results if r[0] == 429 and r[2]})
    pending, final, missing = set(accepted), {}, []
    deadline = time.monotonic() + timeout
    while pending and time.monotonic() < deadline:
        for job_id in list(pending):
            resp = await client.fetch(base + f"{API}/generation/{job_id}/status", raise_error=False)
            if resp.code == 404:
                missing.append(job_id)
                pending.discard(job_id)
                continue
            status = json.loads(resp.body)["status"]
            if status not in ("queued", "running"):
                final[status] = final.get(status, 0) + 1
                pending.discard(job_id)
        await asyncio.sleep(0.2)
    return {"requests": n, "codes": codes, "answered_s": answered, "accepted": len(accepted), "final": final,
            "missing": len(missing), "unfinished": len(pending), "drained_s": time.perf_counter() - t0,
            "retry_after": retry_after}


async def subscribers(client, base: str, ws_base: str, n: int, steps: int, timeout: float) -> dict:
    from tornado.websocket import websocket_connect

    body = json.dumps({"prompt": "load 0.05", "steps": 30, "width": 64, "height": 64})
    headers = {"Content-Type": "application/json"}
    blocker = json.loads((await client.fetch(base + f"{API}/generate", method="POST", body=body, headers=headers)).body)
    body = json.dumps({"prompt": "load 0.05", "steps": steps, "width": 64, "height": 64})
    job = json.loads((await client.fetch(base + f"{API}/generate", method="POST", body=body, headers=headers)).body)
    t0 = time.perf_counter()
    conns = await asyncio.gather(*(websocket_connect(f"{ws_base}/ws/job/{job['job_id']}") for _ in range(n)))
    connect_s = time.perf_counter() - t0
    received: dict[int, list[float]] = {}   # event seq -> arrival times (wall clock)
    kernel_time: dict[int, float] = {}
    finished = 0

    async def reader(conn):
        nonlocal finished
        while True:
            msg = await conn.read_message()
            now = time.time()
            if msg is None:
                return
            event = json.loads(msg)
            if event["event"] == "progress" and event.get("kernel_time"):
                kernel_time[event["seq"]] = event["kernel_time"]
                received.setdefault(event["seq"], []).append(now)
            if event["event"] == "finished":
                finished += 1

    await asyncio.wait_for(asyncio.gather(*(reader(c) for c in conns)), timeout)
    complete = {seq: times for seq, times in received.items() if len(times) == n}
    delays = [1000 * (max(times) - kernel_time[seq]) for seq, times in complete.items()]
    # The job's last two events (its last step, then "done") come a moment apart, just before the job
    # finishes and 200 sockets close: a burst that a single status broadcast has no counterpart of.
    mid_job = [1000 * (max(times) - kernel_time[seq]) for seq, times in sorted(complete.items())[:-2]]
    first = [1000 * (min(times) - kernel_time[seq]) for seq, times in complete.items()]
    await client.fetch(base + f"{API}/generation/{blocker['job_id']}/status")
    return {"subscribers": n, "connect_s": connect_s, "events": len(received), "events_to_all": len(complete),
            "finished_seen": finished, "last_p50_ms": pct(delays, 50), "last_p95_ms": pct(delays, 95),
            "last_p95_mid_job_ms": pct(mid_job, 95),
            "first_p50_ms": pct(first, 50)}


def rss_mb(pid: int) -> float:
    import psutil

    return psutil.Process(pid).memory_info().rss / 2**20


async def big_body(port: int, megabytes: int) -> tuple[str, int]:
    """POST a body declared as `megabytes` MB, sending it as fast as the server takes it:
    (the status line it got, bytes it managed to send before the server closed)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    size = megabytes * 2**20
    writer.write(f"POST {API}/generate HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                 f"Content-Length: {size}\r\n\r\n".encode())
    chunk, sent = b"x" * 2**20, 0

    async def status_line() -> str:  # read while writing: a reset would discard an unread answer
        try:
            return (await asyncio.wait_for(reader.readline(), timeout=15)).decode(errors="replace").strip()
        except (ConnectionError, asyncio.TimeoutError, OSError):
            return "(connection closed)"

    answer = asyncio.ensure_future(status_line())
    try:
        while sent < size and not answer.done():
            writer.write(chunk)
            await asyncio.wait_for(writer.drain(), timeout=10)
            sent += len(chunk)
    except (ConnectionError, asyncio.TimeoutError, OSError):
        pass
    status = await answer
    writer.close()
    return status or "(connection closed)", sent


def slow_sockets(port: int, n: int) -> list[socket.socket]:
    """`n` connections that stop half way: even ones in their headers, odd ones in their bodies."""
    socks = []
    for i in range(n):
        sock = socket.create_connection(("127.0.0.1", port))
        sock.setblocking(False)
        if i % 2:
            sock.sendall(f"POST {API}/generate HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                         f"Content-Length: 1000\r\n\r\n{{\"prompt\": \"".encode())
        else:
            sock.sendall(f"GET {API}/health HTTP/1.1\r\nHost: x\r\nX-Slow: ".encode())
        socks.append(sock)
    return socks


def closed_by_server(socks: list[socket.socket]) -> int:
    closed = 0
    for sock in socks:
        try:
            data = sock.recv(4096)
        except BlockingIOError:
            continue
        except OSError:
            data = b""
        closed += not data or data.startswith(b"HTTP/1.1 4")
    return closed


async def abuse(client, base: str, port: int, pid: int, args) -> dict:
    url = base + f"{API}/health"
    _, _, calm, _ = await closed_loop(client, url, 16, args.duration)
    rss_before = rss_mb(pid)
    peak = rss_before
    stop = asyncio.Event()

    async def sample() -> None:
        nonlocal peak
        while not stop.is_set():
            peak = max(peak, rss_mb(pid))
            await asyncio.sleep(0.05)

    sampler = asyncio.get_running_loop().create_task(sample())
    socks = slow_sockets(port, args.slow)
    t0 = time.monotonic()
    try:
        bodies = [asyncio.ensure_future(big_body(port, args.body_mb)) for _ in range(args.bodies)]
        _, _, abused, _ = await closed_loop(client, url, 16, args.duration)
        answers = await asyncio.gather(*bodies)
        _, _, calm_after, _ = await closed_loop(client, url, 16, args.duration)
        deadline = t0 + args.slow_timeout * 2 + 10
        while closed_by_server(socks) < len(socks) and time.monotonic() < deadline:
            await asyncio.sleep(0.5)
        closed, waited = closed_by_server(socks), time.monotonic() - t0
    finally:
        for sock in socks:
            sock.close()
        stop.set()
        await sampler
    return {"calm_p99": pct(calm, 99), "calm_after_p99": pct(calm_after, 99), "abused_p99": pct(abused, 99),
            "calm_p50": pct(calm, 50),
            "abused_p50": pct(abused, 50), "rss_before": rss_before, "rss_peak": peak, "answers": answers,
            "slow_closed": closed, "slow_waited": waited}


async def main(args) -> None:
    from tornado.httpclient import AsyncHTTPClient

    root = Path(tempfile.mkdtemp(prefix="animenb-load-"))
    port = free_port()
    base, ws_base = f"http://127.0.0.1:{port}", f"ws://127.0.0.1:{port}"
    proc = start_server(root, port, args)
    levels = [int(c) for c in args.clients.split(",")]
    client = AsyncHTTPClient(force_instance=True, max_clients=max(levels + [args.generate]))
    try:
        await wait_ready(client, base, proc)
        print(f"animenb load on {platform.node()} ({os.cpu_count()} CPUs, Python {platform.python_version()}); "
              f"server pid {proc.pid}, one warm CPU kernel; {args.duration:.0f} s per level")
        # a few finished jobs so /jobs has rows to render
        for _ in range(5):
            await client.fetch(base + f"{API}/generate", method="POST", headers={"Content-Type": "application/json"},
                               body=json.dumps({"prompt": "load 0.001", "steps": 2}))
        await asyncio.sleep(1.0)
        print(f"\n{'endpoint':<14}{'clients':>8}{'requests':>10}{'req/s':>10}{'p50 ms':>10}{'p99 ms':>10}{'errors':>8}")
        for path in ("/health", "/jobs"):
            for level in levels:
                n, errors, lat, elapsed = await closed_loop(client, base + API + path, level, args.duration)
                print(f"{path:<14}{level:>8}{n:>10}{n / elapsed:>10.0f}{pct(lat, 50):>10.1f}{pct(lat, 99):>10.1f}"
                      f"{errors:>8}")
        burst = await generate_burst(client, base, args.generate, timeout=args.drain_timeout)
        print(f"\n{burst['requests']} concurrent POST /generate (max queue {args.max_queue}): answers {burst['codes']} "
              f"in {burst['answered_s']:.2f} s; Retry-After values {burst['retry_after'][:5]}")
        print(f"  accepted {burst['accepted']}: final {burst['final']}, unfinished {burst['unfinished']}, "
              f"lost {burst['missing']} (all drained after {burst['drained_s']:.1f} s)")
        subs = await subscribers(client, base, ws_base, args.subscribers, args.ws_steps, timeout=120)
        print(f"\n{subs['subscribers']} WebSocket subscribers on one job (connected in {subs['connect_s']:.2f} s): "
              f"{subs['events_to_all']}/{subs['events']} progress events reached all, {subs['finished_seen']} saw "
              f"'finished'")
        print(f"  kernel event -> last subscriber: p50 {subs['last_p50_ms']:.1f} ms, p95 {subs['last_p95_ms']:.1f} ms "
              f"(-> first subscriber p50 {subs['first_p50_ms']:.1f} ms)")
        bad = await abuse(client, base, port, proc.pid, args)
        statuses = sorted({status for status, _ in bad["answers"]})
        sent = max(n for _, n in bad["answers"]) / 2**20
        print(f"\nabuse: {args.bodies} x {args.body_mb} MB bodies + {args.slow} slow connections during 16-client "
              f"/health load")
        print(f"  big bodies answered {statuses}; at most {sent:.1f} MB of a body got out of the client")
        print(f"  server memory: {bad['rss_before']:.0f} MB before, peak {bad['rss_peak']:.0f} MB during: "
              f"+{bad['rss_peak'] - bad['rss_before']:.1f} MB (target <= 20)")
        print(f"  /health p99 {bad['calm_p99']:.1f} ms calm before, {bad['abused_p99']:.1f} ms under abuse, "
              f"{bad['calm_after_p99']:.1f} ms calm after: {bad['abused_p99'] / bad['calm_p99']:.2f}x / "
              f"{bad['abused_p99'] / bad['calm_after_p99']:.2f}x (target <= 2x; p50 {bad['calm_p50']:.1f} -> "
              f"{bad['abused_p50']:.1f} ms)")
        print(f"  slow connections closed by the server: {bad['slow_closed']}/{args.slow} after "
              f"{bad['slow_waited']:.1f} s (its body/idle timeouts: {args.slow_timeout:g} s)")
    finally:
        stop_server(proc)
        client.close()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=3.0, help="seconds per concurrency level")
    parser.add_argument("--clients", default="1,16,64")
    parser.add_argument("--generate", type=int, default=200)
    parser.add_argument("--max-queue", type=int, default=100)
    parser.add_argument("--subscribers", type=int, default=200)
    parser.add_argument("--ws-steps", type=int, default=40)
    parser.add_argument("--drain-timeout", type=float, default=180.0)
    parser.add_argument("--bodies", type=int, default=4, help="abuse: concurrent oversized POST bodies")
    parser.add_argument("--body-mb", type=int, default=100, help="abuse: declared size of each body (MB)")
    parser.add_argument("--slow", type=int, default=150, help="abuse: slow connections")
    parser.add_argument("--slow-timeout", type=float, default=5.0, help="the server's --body-timeout/--idle-timeout")
    asyncio.run(main(parser.parse_args()))
