"""`GET /api/anime/admin/stats`: what the service knows about its own work, and where each figure comes from.

- queue and jobs by state: the job store (exact counts, kept by the store as jobs change).
- recent: jobs finished in the last hour and day, by state (an index on finish time: the
  cost follows the window, not the history).
- per-phase durations (p50/p95 of started -> finished of succeeded jobs), step rate
  (denoising steps per second: the last progress event's `step / elapsed_seconds`, else
  `parameters.steps / duration`) and quality pass rate (`outputs.quality.passed`, copied
  from each job's manifest.json): the newest `WINDOW` finished jobs.
- GPU name / memory used / total / utilisation: NVML (animenb.gpu_info, cached ~1.5 s; the
  server never imports torch or creates a CUDA context), else CPU count, load and memory.
- model cache: the models live in the warm kernel processes, not in the server. Each idle
  kernel is asked, with a silent `user_expressions` request on its own thread, for
  `animenb.models.cache_info()` (pipelines, dtype, parameter bytes) and torch's CUDA
  allocator figures; a busy kernel is not disturbed and its last answer is shown with its
  age (`as_of`). Kernel RSS comes from psutil.
- warm kernels, uptime: the runner. Disk: free space and the store file, live; the outputs
  directory's size is walked in a thread at most every `DISK_WALK_SECONDS` (a year of outputs
  takes a while), and shown with its age.
"""

from __future__ import annotations

import ast
import asyncio
import json
import os
import shutil
import time
from pathlib import Path
from typing import Any

from animenb.phases.catalog import get_phase
from animenb.retention import dir_bytes
from animenb.store import JobStatus

WINDOW = 500
RECENT = {"last_hour": 3600.0, "last_day": 86400.0}
DISK_WALK_SECONDS = 60.0
KERNEL_QUERY_TIMEOUT = 2.0
# One expression, evaluated in the kernel; defines no names (the namespace reset stays trivial).
KERNEL_EXPRESSION = (
    "(lambda sys, json: json.dumps({"
    "'models': sys.modules['animenb.models'].cache_info() if 'animenb.models' in sys.modules else [], "
    "'torch_loaded': 'torch' in sys.modules, "
    "'cuda': (lambda t: {'allocated_bytes': t.cuda.memory_allocated(), 'reserved_bytes': t.cuda.memory_reserved(), "
    "'max_allocated_bytes': t.cuda.max_memory_allocated()} if t is not None and t.cuda.is_available() "
    "and t.cuda.is_initialized() else None)(sys.modules.get('torch'))}, default=str))"
    "(__import__('sys'), __import__('json'))"
)

_kernel_cache: dict[int, dict] = {}  # id(kernel) -> last answer
_disk_walks: dict[str, dict] = {}  # outputs dir -> {"outputs_bytes", "output_dirs", "as_of"}
_disk_walking: set[str] = set()


def percentile(values: list[float], q: float) -> float | None:
    """Nearest-rank percentile (q in [0, 100]); None for no values."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, min(len(ordered), int(-(-q * len(ordered) // 100))))
    return ordered[rank - 1]


def _step_rate(job) -> float | None:
    progress = job.progress or {}
    step, elapsed = progress.get("step"), progress.get("elapsed_seconds")
    if isinstance(step, (int, float)) and isinstance(elapsed, (int, float)) and step > 0 and elapsed > 0:
        return step / elapsed
    steps = job.parameters.get("steps")
    if isinstance(steps, int) and job.started_at and job.finished_at and job.finished_at > job.started_at:
        return steps / (job.finished_at - job.started_at)
    return None


def job_figures(store) -> dict:
    finished, _ = store.list(status=[JobStatus.SUCCEEDED, JobStatus.FAILED], limit=WINDOW)
    phases: dict[str, dict[str, Any]] = {}
    scored = passed = 0
    for job in finished:
        key = str(job.phase) if job.kind == "phase" else job.kind
        entry = phases.setdefault(key, {"durations": [], "rates": [], "failed": 0, "scored": 0, "passed": 0})
        if job.status is JobStatus.FAILED:
            entry["failed"] += 1
            continue
        if job.started_at and job.finished_at:
            entry["durations"].append(job.finished_at - job.started_at)
        rate = _step_rate(job)
        if rate is not None:
            entry["rates"].append(rate)
        quality = job.outputs.quality
        if quality is not None and isinstance(quality.get("passed"), bool):
            entry["scored"] += 1
            entry["passed"] += quality["passed"]
    per_phase = {}
    for key, e in sorted(phases.items()):
        scored += e["scored"]
        passed += e["passed"]
        name = None
        if key.isdigit():
            try:
                name = get_phase(int(key)).name
            except ValueError:
                pass
        r = lambda v: None if v is None else round(v, 3)  # noqa: E731
        per_phase[key] = {
            "name": name,
            "succeeded": len(e["durations"]),
            "failed": e["failed"],
            "duration_seconds": {"p50": r(percentile(e["durations"], 50)), "p95": r(percentile(e["durations"], 95))},
            "steps_per_second": {"p50": r(percentile(e["rates"], 50)), "p95": r(percentile(e["rates"], 95))},
            "quality": {
                "scored": e["scored"],
                "passed": e["passed"],
                "pass_rate": round(e["passed"] / e["scored"], 3) if e["scored"] else None,
            },
        }
    return {
        "window": len(finished),
        "phases": per_phase,
        "quality": {"scored": scored, "passed": passed, "pass_rate": round(passed / scored, 3) if scored else None},
    }


def typical_duration(store, default: float = 5.0) -> float:
    """Median run time of the last 20 succeeded jobs (for Retry-After)."""
    jobs, _ = store.list(status=JobStatus.SUCCEEDED, limit=20)
    durations = [j.finished_at - j.started_at for j in jobs if j.started_at and j.finished_at]
    return percentile(durations, 50) or default


def _ask_kernel(kernel) -> dict:
    """Kernel thread: evaluate KERNEL_EXPRESSION silently and return its JSON answer."""
    from jupyter_core.utils import run_sync

    async def query() -> dict:
        kc = kernel.kc
        if kc is None:
            raise RuntimeError("kernel is not running")
        msg_id = kc.execute(
            "", silent=True, store_history=False, allow_stdin=False, user_expressions={"stats": KERNEL_EXPRESSION}
        )
        deadline = time.monotonic() + KERNEL_QUERY_TIMEOUT
        while time.monotonic() < deadline:
            try:
                reply = await kc.get_shell_msg(timeout=max(0.05, deadline - time.monotonic()))
            except Exception:
                break
            if reply.get("parent_header", {}).get("msg_id") == msg_id:
                result = reply["content"].get("user_expressions", {}).get("stats", {})
                if result.get("status") != "ok":
                    raise RuntimeError(f"{result.get('ename')}: {result.get('evalue')}")
                return json.loads(ast.literal_eval(result["data"]["text/plain"]))
        raise TimeoutError("no answer from the kernel")

    return run_sync(query)()


def _rss(pid: int | None) -> int | None:
    if not pid:
        return None
    try:
        import psutil

        return psutil.Process(pid).memory_info().rss
    except Exception:
        return None


async def slot_figures(runner) -> list[dict]:
    loop = asyncio.get_running_loop()
    out = []
    for slot in runner.slots:
        info = slot.describe()
        kernel = getattr(slot, "kernel", None)  # a warm kernel of this process (the local executor)
        if kernel is None:  # a Ray actor's: what it reported (its node, GPU, loaded models, busy, jobs run)
            out.append(info)
            continue
        info["rss_bytes"] = _rss(info.get("pid"))
        cached = _kernel_cache.get(id(kernel))
        if kernel.ready and not kernel.busy:
            try:
                answer = await asyncio.wait_for(
                    loop.run_in_executor(kernel.thread, _ask_kernel, kernel), KERNEL_QUERY_TIMEOUT + 0.5
                )
                cached = _kernel_cache[id(kernel)] = {**answer, "as_of": time.time()}
            except Exception as exc:
                info["model_cache_error"] = str(exc) or type(exc).__name__
        if cached:
            models = cached.get("models") or []
            info["model_cache"] = {
                "pipelines": models,
                "count": len(models),
                "bytes": sum(int(m.get("bytes") or 0) for m in models),
                "cuda": cached.get("cuda"),
                "torch_loaded": cached.get("torch_loaded"),
                "age_seconds": round(time.time() - cached["as_of"], 1),
            }
        else:
            info["model_cache"] = None  # busy since start-up: asked again when it is idle
        out.append(info)
    return out


def host_figures() -> dict:
    info: dict[str, Any] = {"cpu_count": os.cpu_count()}
    try:
        info["load_average"] = [round(x, 2) for x in os.getloadavg()]
    except OSError:
        pass
    try:
        import psutil

        vm = psutil.virtual_memory()
        info["memory_total_bytes"], info["memory_used_bytes"] = vm.total, vm.total - vm.available
        info["server_rss_bytes"] = psutil.Process().memory_info().rss
    except Exception:
        pass
    return info


def recent_figures(store, now: float) -> dict:
    return {name: store.finished_since(now - seconds) for name, seconds in RECENT.items()}


def walk_outputs(outputs_dir: Path) -> dict:
    jobs = [p for p in outputs_dir.iterdir() if p.is_dir()] if outputs_dir.is_dir() else []
    return {"outputs_bytes": dir_bytes(outputs_dir), "output_dirs": len(jobs), "as_of": time.time()}


async def outputs_size(outputs_dir: Path) -> dict:
    """The last walk of the outputs directory; the first request waits for one, later ones start a new
    walk in the background once it is `DISK_WALK_SECONDS` old."""
    loop = asyncio.get_running_loop()
    key = str(outputs_dir)

    async def walk() -> None:
        _disk_walking.add(key)
        try:
            _disk_walks[key] = await loop.run_in_executor(None, walk_outputs, outputs_dir)
        finally:
            _disk_walking.discard(key)

    if key not in _disk_walks:
        await walk()
    elif time.time() - _disk_walks[key]["as_of"] > DISK_WALK_SECONDS and key not in _disk_walking:
        _disk_walking.add(key)  # before the task runs: one walk at a time
        asyncio.ensure_future(walk())
    last = _disk_walks[key]
    return {
        "outputs_bytes": last["outputs_bytes"],
        "output_dirs": last["output_dirs"],
        "outputs_age_seconds": round(time.time() - last["as_of"], 1),
    }


def disk_figures(outputs_dir: Path, store_path: str) -> dict:
    usage = shutil.disk_usage(outputs_dir)
    info = {"outputs_dir": str(outputs_dir), "free_bytes": usage.free, "total_bytes": usage.total}
    if store_path and store_path != ":memory:":
        info["store_bytes"] = sum(os.path.getsize(p) for p in (store_path, store_path + "-wal") if os.path.exists(p))
    return info


async def admin_stats(service) -> dict:
    loop = asyncio.get_running_loop()
    store, runner = service.store, service.runner
    counts = store.counts_by_status()
    gpu = await service.gpu.info()
    figures = await loop.run_in_executor(None, job_figures, store)
    recent = await loop.run_in_executor(None, recent_figures, store, time.time())
    disk = await loop.run_in_executor(None, disk_figures, service.outputs_dir, getattr(store.db, "path", ""))
    disk.update(await outputs_size(service.outputs_dir))
    slots = await slot_figures(runner)
    return {
        "uptime_seconds": round(time.time() - service.started_at, 1),
        "queue": {
            "length": counts["queued"],
            "running": counts["running"],
            "max_queue": service.config.max_queue,
            "max_queued_per_user": service.config.max_queued_per_user,
        },
        "jobs": {"by_status": counts, "total": sum(counts.values())},
        "phases": figures["phases"],
        "quality": figures["quality"],
        "window": {"finished_jobs": figures["window"], "limit": WINDOW},
        "recent": recent,
        "gpu": gpu,
        "host": host_figures(),
        "kernels": {
            "warm": runner.warm,
            "ready": sum(s["ready"] for s in slots),
            "total": len(slots),
            "devices": slots,
        },
        "executor": runner.describe_executor(),
        "models": {
            "profile": service.models,
            "cache": [m for s in slots for m in ((s.get("model_cache") or {}).get("pipelines") or [])],
            "cache_bytes": sum((s.get("model_cache") or {}).get("bytes", 0) for s in slots),
        },
        "disk": disk,
    }
