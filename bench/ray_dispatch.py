"""Ray executor vs the in-process executor, in one run, interleaved (issue 15's benchmark).

On a local CPU-only Ray cluster started here (4 logical CPUs on however many real cores), three
runners share this process's event loop, each with its own SQLite store: `local` (one warm kernel
here), `ray1` (one actor) and `ray2` (two actors). Jobs are the tiny character sheet (64x64, 2 steps,
fixed seed, no quality step), submitted to `JobRunner` directly and timed from submit to the
terminal event on the event bus (what the server's WebSocket sends).

- per-job overhead   local and ray1 jobs alternate one by one; median job time of each, their ratio
                     (target <= 1.25x) and the difference (target <= 30 ms added per job). The same
                     for a trivial notebook (tests/notebooks/echo.ipynb: writes one small file), whose
                     job time is mostly dispatch, so the added milliseconds are not lost in the
                     sheet's own run-to-run swing on a shared machine
- progress latency   every progress event's bus arrival time minus its `kernel_time` (the notebook's
                     clock, same machine); p50/p95 per executor and the p95 added by Ray (target <= 10 ms)
- throughput         a batch of jobs on ray1, then the same batch on ray2, alternating rounds; jobs
                     per second and the 2-actor / 1-actor ratio (target >= 1.5x with ANIMENB_THREADS=1)
- placement          ray2's model hits: jobs placed on an actor that had already run their models

`--two-nodes`: the same runners on a two-node cluster started like an operator's (tests/raycluster.py:
`ray start --head` and `ray start --address`, each node one logical GPU, one CPU and its own object
store) instead: throughput of ray2 (one actor per node) vs ray1 (one actor; each runs alone, as the
cluster has two GPUs; target >= 1.5x), and the progress latency p95 on two nodes vs local (the node
hop and object-store return; target <= 15 ms added).

Prints figures and ratios; asserts nothing. Absolute times on a shared 2-core box swing 3-4x between
runs: only the ratios of one run mean anything.

    ANIMENB_THREADS=1 python bench/ray_dispatch.py [--jobs 10] [--batch 8] [--rounds 2] [--two-nodes]
"""
from __future__ import annotations

import argparse
import asyncio
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from animenb.runner.events import EventBus, JobFinishedEvent, JobProgressEvent  # noqa: E402
from animenb.runner.runner import JobRunner  # noqa: E402
from animenb.store import SqliteJobStore  # noqa: E402

SHEET = {"prompt": "a girl with red hair", "width": 64, "height": 64, "steps": 2, "seed": 11}
TRIVIAL = {"prompt": "echo", "seed": 1}
ECHO_NOTEBOOK = Path(__file__).resolve().parent.parent / "tests" / "notebooks" / "echo.ipynb"


def notebook_for(job):
    from animenb import config
    from animenb.phases.catalog import get_phase

    if job.parameters.get("prompt") == TRIVIAL["prompt"]:
        return ECHO_NOTEBOOK
    return config.notebooks_dir() / get_phase(job.phase).notebook


class Timed:
    """A runner plus what its bus saw: finish times per job, progress latencies."""

    def __init__(self, name: str, runner: JobRunner):
        self.name, self.runner = name, runner
        self.done: dict[str, asyncio.Future] = {}
        self.latencies: list[float] = []
        runner.bus.subscribe(None, self._on_event)

    def _on_event(self, event) -> None:
        if isinstance(event, JobProgressEvent) and event.kernel_time:
            self.latencies.append(time.time() - event.kernel_time)
        elif isinstance(event, JobFinishedEvent):
            future = self.done.get(event.job_id)
            if future is not None and not future.done():
                future.set_result(event)

    async def run(self, count: int = 1, request: dict = SHEET) -> float:
        """Submit `count` jobs at once; seconds until the last one finished."""
        t0 = time.perf_counter()
        futures = []
        for _ in range(count):
            job = self.runner.submit(dict(request), phase=1)
            futures.append(self.done.setdefault(job.id, asyncio.get_running_loop().create_future()))
        finished = await asyncio.wait_for(asyncio.gather(*futures), 600)
        bad = [f.job_id for f in finished if f.status != "succeeded"]
        if bad:
            raise RuntimeError(f"{self.name}: jobs {bad} did not succeed: {finished[0]}")
        return time.perf_counter() - t0


def pct(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(round(q * (len(values) - 1))))]


async def start_runner(name: str, home: Path, env: dict, executor: str, options: dict | None) -> Timed:
    store = SqliteJobStore(home / f"{name}.sqlite")
    runner = JobRunner(store, EventBus(), outputs_dir=home / name, models="tiny", quality=False,
                       executor=executor, executor_options=options, kernel_env=env, notebook_for=notebook_for)
    await runner.start()
    await runner.wait_ready(300)
    return Timed(name, runner)


async def stop_runner(timed: Timed) -> None:
    await timed.runner.stop()
    timed.runner.store.close()


async def two_nodes(args, home: Path, env: dict) -> None:
    from raycluster import RayNode, free_port, token_env  # tests/raycluster.py

    root = Path(f"/tmp/anr-bench-{os.getpid()}")  # short: Ray's socket paths must fit in 107 bytes
    root.mkdir(exist_ok=True)
    port = free_port()
    ray_env = token_env(root)
    os.environ.update(ray_env)  # this process is the driver; Ray reads these when imported
    import ray

    nodes = [RayNode(root / "head", head_port=port, env=ray_env)]
    try:
        await asyncio.sleep(5)
        nodes.append(RayNode(root / "worker", address=f"127.0.0.1:{port}", env=ray_env))
        ray.init(address=f"127.0.0.1:{port}", log_to_driver=False, configure_logging=False)
        while sum(1 for n in ray.nodes() if n["Alive"]) < 2:
            await asyncio.sleep(0.5)
        print(f"Ray {ray.__version__}: two nodes on this machine; {os.cpu_count()} CPUs, "
              f"Python {platform.python_version()}, ANIMENB_THREADS={os.environ['ANIMENB_THREADS']}")
        local = await start_runner("local", home, env, "local", None)
        await local.run(1)
        local.latencies.clear()
        rates, latencies = {}, {}
        for name, slots in (("ray1", 1), ("ray2", 2)):  # one at a time: the cluster has two GPUs
            timed = await start_runner(name, home, env, "ray", {"address": f"127.0.0.1:{port}", "slots": slots})
            try:
                await timed.run(2 * slots)  # warm-up: models built and loaded on every actor
                timed.latencies.clear()
                spans = [await timed.run(args.batch) for _ in range(args.rounds)]
                rates[name] = args.batch / statistics.median(spans)
                latencies[name] = timed.latencies
                placed = {s.info["node_id"] for s in timed.runner.slots if s.info}
                print(f"  {name}: {slots} actor(s) on {len(placed)} node(s), {rates[name]:.2f} jobs/s")
            finally:
                await stop_runner(timed)
        for _ in range(args.rounds):  # the local baseline for progress latency
            await local.run(args.batch)
        await stop_runner(local)
        print(f"\nthroughput, two nodes: 2 actors / 1 actor {rates['ray2'] / rates['ray1']:.2f}x (target >= 1.5x)")
        lat = {"local": local.latencies, **latencies}
        for name, values in lat.items():
            ms = [1000 * x for x in values]
            print(f"  progress {name:6s} p50 {pct(ms, 0.5):6.2f} ms   p95 {pct(ms, 0.95):6.2f} ms ({len(ms)} events)")
        added = 1000 * (pct(lat["ray2"], 0.95) - pct(lat["local"], 0.95))
        print(f"  added by two nodes at p95 {added:+.2f} ms (target <= 15 ms)")
    finally:
        ray.shutdown()
        for node in reversed(nodes):
            node.stop()
        shutil.rmtree(root, ignore_errors=True)
        shutil.rmtree(home, ignore_errors=True)


async def main(args) -> None:
    if args.two_nodes:
        home = Path(tempfile.mkdtemp(prefix="animenb-bench-ray-"))
        os.environ.setdefault("ANIMENB_THREADS", "1")
        await two_nodes(args, home, {"ANIMENB_HOME": os.environ.get("ANIMENB_HOME", str(home / "home")),
                                     "OMP_NUM_THREADS": "1"})
        return
    import ray

    home = Path(tempfile.mkdtemp(prefix="animenb-bench-ray-"))
    os.environ.setdefault("ANIMENB_THREADS", "1")
    env = {"ANIMENB_HOME": os.environ.get("ANIMENB_HOME", str(home / "home")), "OMP_NUM_THREADS": "1"}
    t0 = time.perf_counter()
    ray.init(num_cpus=4, num_gpus=0, include_dashboard=False, object_store_memory=128 * 1024 * 1024,
             log_to_driver=False, configure_logging=False)
    print(f"Ray {ray.__version__} local cluster up in {time.perf_counter() - t0:.1f} s; "
          f"{os.cpu_count()} CPUs, Python {platform.python_version()}, ANIMENB_THREADS={os.environ['ANIMENB_THREADS']}")
    runners = {}
    try:
        for name, executor, options in (("local", "local", None), ("ray1", "ray", {"slots": 1}),
                                        ("ray2", "ray", {"slots": 2})):
            runners[name] = await start_runner(name, home, env, executor, options)
        local, ray1, ray2 = runners["local"], runners["ray1"], runners["ray2"]
        for timed in (local, ray1, ray2, ray2):  # warm-up: models built and loaded (both ray2 actors)
            await timed.run(2 if timed is ray2 else 1)
            await timed.run(1, TRIVIAL)
        for timed in runners.values():
            timed.latencies.clear()
        ray2.runner.placements.update(placed=0, model_hits=0)

        for label, request in (("tiny sheet 64 px, 2 steps", SHEET), ("trivial notebook", TRIVIAL)):
            times = {"local": [], "ray1": []}
            for _ in range(args.jobs):
                for timed in (local, ray1):
                    times[timed.name].append(await timed.run(1, request))
            med = {k: statistics.median(v) for k, v in times.items()}
            print(f"\nper-job ({label}; median of {args.jobs}, interleaved)")
            for name, value in med.items():
                print(f"  {name:6s} {1000 * value:8.1f} ms  (min {1000 * min(times[name]):.1f}, "
                      f"max {1000 * max(times[name]):.1f})")
            ratio, added = med["ray1"] / med["local"], 1000 * (med["ray1"] - med["local"])
            print(f"  ray/local {ratio:.3f}x (target <= 1.25x)   added {added:+.1f} ms per job (target <= 30 ms)")

        print(f"\nprogress latency (kernel -> event bus), {len(local.latencies)} / {len(ray1.latencies)} events")
        for timed in (local, ray1):
            lat = [1000 * x for x in timed.latencies]
            print(f"  {timed.name:6s} p50 {pct(lat, 0.5):6.2f} ms   p95 {pct(lat, 0.95):6.2f} ms")
        added95 = 1000 * (pct(ray1.latencies, 0.95) - pct(local.latencies, 0.95))
        print(f"  added by Ray at p95 {added95:+.2f} ms (target <= 10 ms)")

        spans = {"ray1": [], "ray2": []}
        for _ in range(args.rounds):
            for timed in (ray1, ray2):
                spans[timed.name].append(await timed.run(args.batch))
        rate = {k: args.batch / statistics.median(v) for k, v in spans.items()}
        print(f"\nthroughput ({args.batch} jobs at once, median of {args.rounds} rounds, alternating)")
        for name, value in rate.items():
            print(f"  {name:6s} {value:6.2f} jobs/s")
        print(f"  2 actors / 1 actor {rate['ray2'] / rate['ray1']:.2f}x (target >= 1.5x)")
        placed = ray2.runner.placements
        print(f"\nplacement on 2 actors: {placed['model_hits']}/{placed['placed']} jobs on an actor that had "
              f"already run their models")
    finally:
        for timed in runners.values():
            await stop_runner(timed)
        ray.shutdown()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=10, help="per-job pairs (local, ray1) to time")
    parser.add_argument("--batch", type=int, default=8, help="jobs per throughput batch")
    parser.add_argument("--rounds", type=int, default=2, help="throughput rounds per executor")
    parser.add_argument("--two-nodes", action="store_true", help="two Ray nodes started with `ray start` instead")
    asyncio.run(main(parser.parse_args()))
