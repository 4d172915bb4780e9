"""A sweep as one batch vs the same cells submitted one by one, and on 2 Ray actors vs 1.

Runners share this process's event loop (like bench/ray_dispatch.py), each with its own SQLite store, the
tiny profile, no quality step. The sweep is a tiny character sheet (64 px, 2 steps) over `--cells` seeds.

- parent overhead   the sweep (POSTed as one parent job of kind "sweep") until its last cell finished, vs the
                    same cells submitted as separate jobs until the last finished; alternating rounds on the
                    local executor (one warm kernel). Target <= 1.05x: the parent adds nothing measurable.
                    The parent's results (grid image, record, report notebook) are timed apart.
- here              the same cells as `animenb sweep` runs them without a server (each the phase notebook
                    under papermill into its own folder, all on one warm kernel: `animenb.sweeps.notebooks`),
                    until its last cell finished, vs the same separate jobs. Target <= 1.05x as well.
- Ray scale-out     the same sweep on `ray2` (two actors) vs `ray1` (one actor), alternating rounds.
                    Target <= 0.6x (on a quiet box with a core per actor).

Prints figures and ratios; asserts nothing. Absolute times on a shared box swing 3-4x between runs: only
the ratios of one run mean anything.

    ANIMENB_THREADS=1 python bench/sweep.py [--cells 16] [--rounds 2] [--skip-ray]
"""
from __future__ import annotations

import argparse
import asyncio
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from animenb.runner.events import EventBus, JobFinishedEvent  # noqa: E402
from animenb.runner.runner import JobRunner  # noqa: E402
from animenb.store import SqliteJobStore  # noqa: E402
from animenb.sweeps.local import run_plan  # noqa: E402
from animenb.sweeps.notebooks import SweepKernel  # noqa: E402
from animenb.sweeps.plan import build_plan  # noqa: E402
from animenb.sweeps.report import SWEEP_KIND  # noqa: E402

SHARED = {"prompt": "a girl with red hair", "width": 64, "height": 64, "steps": 2}


class Timed:
    """A runner and the finish time of every job its bus announced."""

    def __init__(self, name: str, runner: JobRunner):
        self.name, self.runner = name, runner
        self.finished: dict[str, tuple[float, str]] = {}
        runner.bus.subscribe(None, self._on_event)

    def _on_event(self, event) -> None:
        if isinstance(event, JobFinishedEvent):
            self.finished[event.job_id] = (time.perf_counter(), event.status)

    async def until(self, ids: list[str], timeout: float = 1200) -> float:
        deadline = time.monotonic() + timeout
        while not all(i in self.finished for i in ids):
            if time.monotonic() > deadline:
                raise TimeoutError(f"{self.name}: jobs did not finish")
            await asyncio.sleep(0.01)
        bad = [i for i in ids if self.finished[i][1] != "succeeded"]
        if bad:
            raise RuntimeError(f"{self.name}: jobs {bad} did not succeed")
        return max(self.finished[i][0] for i in ids)

    async def separate(self, cells: int, seed0: int) -> float:
        t0 = time.perf_counter()
        ids = [self.runner.submit({**SHARED, "seed": seed0 + k}, phase=1).id for k in range(cells)]
        return await self.until(ids) - t0

    async def sweep(self, cells: int, seed0: int) -> tuple[float, float]:
        """(seconds until the last cell finished, seconds until the parent finished: its results written)."""
        plan = build_plan(1, SHARED, {"seed": f"{seed0}-{seed0 + cells - 1}"})
        t0 = time.perf_counter()
        parent = self.runner.submit({**plan.parameters, "sweep": plan.as_dict()}, phase=1, kind=SWEEP_KIND)
        ended = await self.until([parent.id])
        children = self.runner.store.get(parent.id).outputs.children
        return await self.until(children) - t0, ended - t0


def here(kernel: SweepKernel, cells: int, seed0: int, out_dir: Path) -> float:
    """Seconds until the last cell of a sweep run as `animenb sweep` runs it here (no quality step) finished."""
    plan = build_plan(1, SHARED, {"seed": f"{seed0}-{seed0 + cells - 1}"})
    ended = []
    t0 = time.perf_counter()
    run_plan(plan, out_dir, run_cell=kernel.cell_runner(1, models="tiny", score=False),
             on_cell=lambda index, row: ended.append((time.perf_counter(), row["status"])))
    if any(status != "succeeded" for _, status in ended):
        raise RuntimeError(f"here: cells did not succeed: {[status for _, status in ended]}")
    return ended[-1][0] - t0


async def main(args) -> None:
    home = Path(tempfile.mkdtemp(prefix="animenb-bench-sweep-"))
    os.environ.setdefault("ANIMENB_THREADS", "1")
    env = {"ANIMENB_HOME": str(home / "home"), "OMP_NUM_THREADS": "1"}
    print(f"{os.cpu_count()} CPUs, Python {platform.python_version()}, ANIMENB_THREADS={os.environ['ANIMENB_THREADS']}, "
          f"{args.cells} cells x {args.rounds} rounds")
    setups = [("local", "local", None)]
    if not args.skip_ray:
        import ray

        ray.init(num_cpus=4, num_gpus=0, include_dashboard=False, object_store_memory=128 * 1024 * 1024,
                 log_to_driver=False, configure_logging=False)
        setups += [("ray1", "ray", {"slots": 1}), ("ray2", "ray", {"slots": 2})]
    runners: dict[str, Timed] = {}
    kernel = SweepKernel(env=env)
    try:
        for name, executor, options in setups:
            runner = JobRunner(SqliteJobStore(home / f"{name}.sqlite"), EventBus(), outputs_dir=home / name,
                               models="tiny", quality=False, executor=executor, executor_options=options,
                               kernel_env=env)
            await runner.start()
            await runner.wait_ready(300)
            runners[name] = Timed(name, runner)
            await runners[name].separate(2 if name == "ray2" else 1, 1000)  # warm-up: models loaded everywhere

        loop = asyncio.get_running_loop()
        await loop.run_in_executor(None, here, kernel, 1, 1000, home / "here-warm-up")  # models loaded there too

        local = runners["local"]
        separate, swept, results, here_times = [], [], [], []
        for r in range(args.rounds):
            separate.append(await local.separate(args.cells, 100 * r))
            cells_done, ended = await local.sweep(args.cells, 100 * r + 50)
            swept.append(cells_done)
            results.append(ended - cells_done)
            here_times.append(await loop.run_in_executor(None, here, kernel, args.cells, 100 * r + 70,
                                                         home / f"here-{r}"))
        s, p, h = statistics.median(separate), statistics.median(swept), statistics.median(here_times)
        print(f"\nparent overhead (local executor, median of {args.rounds})")
        print(f"  {args.cells} separate jobs  {s:7.2f} s")
        print(f"  one sweep          {p:7.2f} s   ratio {p / s:.3f}x (target <= 1.05x)")
        print(f"  + the sweep's results (grid, record, report notebook) {statistics.median(results):.2f} s")
        print(f"  `animenb sweep` here (notebooks, one kernel) {h:7.2f} s   ratio {h / s:.3f}x (target <= 1.05x)")

        if not args.skip_ray:
            times: dict[str, list[float]] = {"ray1": [], "ray2": []}
            for r in range(args.rounds):
                for name in ("ray1", "ray2"):
                    times[name].append((await runners[name].sweep(args.cells, 200 + 100 * r))[0])
            one, two = statistics.median(times["ray1"]), statistics.median(times["ray2"])
            print(f"\nRay scale-out ({args.cells}-cell sweep, median of {args.rounds}, alternating)")
            print(f"  1 actor   {one:7.2f} s\n  2 actors  {two:7.2f} s   ratio {two / one:.3f}x (target <= 0.6x)")
    finally:
        kernel.close()
        for timed in runners.values():
            await timed.runner.stop()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cells", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--skip-ray", action="store_true", help="only the parent-overhead figure")
    asyncio.run(main(parser.parse_args()))
