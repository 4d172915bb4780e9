"""`JobRunner`: queued jobs -> papermill runs of phase notebooks on warm kernels.

One worker task per warm kernel (one per device) claims the oldest queued job from the
store, runs its notebook with papermill on the kernel's own thread
(`loop.run_in_executor(kernel.executor, ...)`: never `asyncio.to_thread`, never
papermill's `cwd=`), and records the outcome. The outcome comes from the exception, not
from the executed notebook's metadata (after a kill it can claim success):

- no exception, `manifest.json` present and every file it lists on disk -> succeeded
- cancel requested (DELETE) -> cancelled (queued: never started; running: the kernel is
  interrupted, again after `cancel_grace` s, and killed after 3x that)
- `DeadKernelError` -> failed {"type": "KernelDied"}; the kernel is replaced and the next job runs
- a cell error -> failed {"type": <exception name>, "message": ...}

After a phase notebook succeeds, the quality notebook (notebooks/04_quality.ipynb, when
it exists) runs on the same kernel (`_run_quality`, a separate step); its score lands in
manifest.json and in the job's outputs.

Progress display data from the notebook reaches `EventBus` subscribers as
`JobProgressEvent`s (percent kept non-decreasing) and is persisted to the store at most
`1 / progress_interval` times a second, so `/status` shows it too.
"""
from __future__ import annotations

import asyncio
import collections
import json
import logging
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from animenb import config
from animenb.phases.catalog import PHASES, get_phase
from animenb.store import (InvalidTransitionError, JobError, JobNotFoundError, JobRecord,
                           JobStatus, JobStoreBase)
from animenb.store.jobs_sqlite import worker_name

from .events import EventBus, JobFinishedEvent, JobProgressEvent, JobQueuedEvent, JobStartedEvent
from .kernels import KernelPool, WarmKernel
from .orchestration import ORCHESTRATION_KIND, Orchestrator, recover_orchestrations
from .parameters import phase_parameters

log = logging.getLogger(__name__)

NOTEBOOK_NAME = "notebook.ipynb"
QUALITY_NOTEBOOK_NAME = "quality.ipynb"
MANIFEST_NAME = "manifest.json"
QUALITY_NOTEBOOK = "04_quality.ipynb"


class MissingOutputError(RuntimeError):
    """The notebook finished without the files it must write."""


@dataclass
class RunningJob:
    job: JobRecord
    kernel: WarmKernel
    cancel_event: threading.Event = field(default_factory=threading.Event)
    cancel_requested_at: float | None = None
    last_progress: JobProgressEvent | None = None
    percent_floor: float = 0.0
    persisted_at: float = 0.0
    persist_handle: asyncio.TimerHandle | None = None
    stage_prefix: str = ""


def default_notebook_for(notebooks_dir: Path) -> Callable[[JobRecord], Path]:
    def resolve(job: JobRecord) -> Path:
        return notebooks_dir / get_phase(job.phase).notebook
    return resolve


def output_files(out_dir: Path) -> list[str]:
    """Relative paths of the files a job wrote (hidden files excluded)."""
    if not out_dir.is_dir():
        return []
    return sorted(p.relative_to(out_dir).as_posix() for p in out_dir.rglob("*")
                  if p.is_file() and not any(part.startswith(".") for part in p.relative_to(out_dir).parts))


class JobRunner:
    def __init__(self, store: JobStoreBase, bus: EventBus | None = None, *, outputs_dir: str | Path | None = None,
                 kernels: KernelPool | None = None, devices: list[str] | None = None, models: str | None = None,
                 backend: str | None = None, comfyui_url: str | None = None,
                 notebooks_dir: str | Path | None = None,
                 notebook_for: Callable[[JobRecord], Path] | None = None,
                 quality_notebook: str | Path | None | bool = True, quality_threshold: float | None = None,
                 warm: bool = True, progress_interval: float = 0.25, cancel_grace: float = 1.0,
                 execution_timeout: float | None = None, kernel_env: dict | None = None):
        self.store = store
        self.bus = bus or EventBus()
        self.outputs_dir = Path(outputs_dir or config.outputs_dir()).resolve()
        self.models = models or config.default_profile()
        self.backend = backend
        self.comfyui_url = comfyui_url
        self.notebooks_dir = Path(notebooks_dir or config.notebooks_dir())
        self.notebook_for = notebook_for or default_notebook_for(self.notebooks_dir)
        if quality_notebook is True:
            quality_notebook = self.notebooks_dir / QUALITY_NOTEBOOK
        self.quality_notebook = Path(quality_notebook) if quality_notebook else None
        self.quality_threshold = quality_threshold
        self.warm = warm
        self.progress_interval = progress_interval
        self.cancel_grace = cancel_grace
        self.execution_timeout = execution_timeout
        env = {"ANIMENB_MODELS": self.models, "ANIMENB_OUTPUTS": str(self.outputs_dir), **(kernel_env or {})}
        self.kernels = kernels or KernelPool(devices, env=env, cwd=config.repo_root())
        self.running: dict[str, RunningJob] = {}
        self.orchestrations: dict[str, Orchestrator] = {}  # parent job id -> its driving task
        self._priority: collections.deque[str] = collections.deque()  # child jobs, claimed before the queue
        self.started_at = time.time()
        self.recovered: list[JobRecord] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        self._wake: asyncio.Event | None = None
        self._workers: list[asyncio.Task] = []
        self._stopping = False

    # -- lifecycle ---------------------------------------------------------------------
    async def start(self) -> None:
        """Recover jobs a dead process left running, then start one worker per kernel."""
        self._loop = asyncio.get_running_loop()
        self._wake = asyncio.Event()
        self.outputs_dir.mkdir(parents=True, exist_ok=True)
        # Orchestration parents first (their children are settled there), then the store's policy.
        self.recovered = recover_orchestrations(self) + self.store.recover(self._has_output)
        for job in self.recovered:
            log.warning("job %s was left running by a dead process: now %s", job.id, job.status.value)
            if job.terminal:
                self._publish_finished(job)
        self._workers = [asyncio.create_task(self._worker(k), name=f"animenb-worker-{k.device}")
                         for k in self.kernels]

    async def wait_ready(self, timeout: float = 60.0) -> None:
        """Wait until every kernel has started (tests and benchmarks)."""
        deadline = time.monotonic() + timeout
        while not all(k.ready for k in self.kernels):
            if time.monotonic() > deadline:
                raise TimeoutError("warm kernels did not start")
            await asyncio.sleep(0.02)

    async def stop(self) -> None:
        """Stop workers and kernels. A job still running stays `running` in the store; the next
        start applies the restart policy to it (see animenb.store.jobs_sqlite)."""
        self._stopping = True
        orchestrations = [o.task for o in self.orchestrations.values() if o.task is not None]
        for task in orchestrations + self._workers:
            task.cancel()
        for task in orchestrations:
            try:
                await task
            except (asyncio.CancelledError, Exception):
                pass
        for task in self._workers:
            try:
                await task
            except (asyncio.CancelledError, Exception):
                pass
        for kernel in self.kernels:
            if kernel.busy:  # a job still runs on the kernel thread: end it so the thread frees up
                kernel.kill()
        await asyncio.get_running_loop().run_in_executor(None, self.kernels.close)

    def _has_output(self, job: JobRecord) -> bool:
        return any(f != NOTEBOOK_NAME for f in output_files(self.outputs_dir / job.id))

    # -- API used by the server ------------------------------------------------------------
    def submit(self, request: dict[str, Any], *, phase: int | None, owner: str = "anonymous",
               visibility: str = "public", parent_id: str | None = None, kind: str = "phase",
               extra: dict[str, Any] | None = None, priority: bool = False) -> JobRecord:
        """Store a queued job (committed on return) and wake a worker.

        `kind` "orchestration" queues a parent job (see `animenb.runner.orchestration`);
        `priority` (orchestration children) lets the job start before the jobs already queued.
        """
        job = self.store.create(phase=phase, parameters=request, owner=owner, visibility=visibility,
                                parent_id=parent_id, kind=kind, extra=extra)
        if priority:
            self._priority.append(job.id)
        self.bus.publish(JobQueuedEvent(job_id=job.id, phase=phase, queue_position=self.store.queue_position(job.id)))
        if self._wake is not None:
            self._wake.set()
        return job

    async def cancel(self, job_id: str) -> JobRecord:
        """Queued: cancelled at once. Running: interrupted; returns once it has stopped (or ~3 s)."""
        job = self.store.get(job_id)
        orchestration = self.orchestrations.get(job_id)
        if orchestration is not None:  # a running parent: cancel its child, let its task end it
            await orchestration.cancel()
            try:
                await asyncio.wait_for(asyncio.shield(orchestration.task), timeout=3 * self.cancel_grace + 2)
            except (asyncio.TimeoutError, asyncio.CancelledError, Exception):
                pass
            return self.store.get(job_id)
        if job.status is JobStatus.QUEUED:
            try:
                job = self.store.transition(job_id, JobStatus.CANCELLED, expected=[JobStatus.QUEUED],
                                            error=JobError("Cancelled", "Cancelled before it started."))
                self._publish_finished(job)
                return job
            except InvalidTransitionError:
                job = self.store.get(job_id)  # claimed meanwhile: cancel it as a running job
        ctx = self.running.get(job_id)
        if job.status is not JobStatus.RUNNING or ctx is None:
            return job
        if ctx.cancel_requested_at is None:
            ctx.cancel_requested_at = time.monotonic()
            ctx.cancel_event.set()
            await ctx.kernel.interrupt()
            asyncio.get_running_loop().create_task(self._escalate_cancel(ctx))
        deadline = time.monotonic() + 3 * self.cancel_grace + 1
        while job_id in self.running and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        return self.store.get(job_id)

    async def _escalate_cancel(self, ctx: RunningJob) -> None:
        job_id = ctx.job.id
        await asyncio.sleep(self.cancel_grace)
        if self.running.get(job_id) is ctx:  # a cell may have caught the first interrupt
            await ctx.kernel.interrupt()
        await asyncio.sleep(2 * self.cancel_grace)
        if self.running.get(job_id) is ctx:  # e.g. a long C call ignoring SIGINT
            log.warning("job %s ignored interrupts; killing its kernel", job_id)
            ctx.kernel.kill()

    def live_progress(self, job_id: str) -> dict | None:
        orchestration = self.orchestrations.get(job_id)
        if orchestration is not None:
            return orchestration.progress_dict()
        ctx = self.running.get(job_id)
        if ctx is None or ctx.last_progress is None:
            return None
        return ctx.last_progress.progress_dict()

    def queue_length(self) -> int:
        return self.store.count(status=JobStatus.QUEUED)

    def describe(self) -> dict:
        return {"warm": self.warm, "kernels": self.kernels.describe(), "running": sorted(self.running),
                "orchestrations": sorted(self.orchestrations), "models": self.models, "backend": self.backend}

    def children(self, job: JobRecord) -> list[dict] | None:
        """An orchestration parent's children (id, phase, attempt, status, score...); None for other jobs."""
        from .orchestration import children_of

        return children_of(self, job)

    def _claim_priority(self, worker: str) -> JobRecord | None:
        """The oldest still-queued priority job (an orchestration child), moved to running."""
        while self._priority:
            job_id = self._priority.popleft()
            try:
                return self.store.transition(job_id, JobStatus.RUNNING, expected=[JobStatus.QUEUED], worker=worker)
            except (InvalidTransitionError, JobNotFoundError):
                continue  # cancelled, or claimed through the queue meanwhile
        return None

    def _start_orchestration(self, job: JobRecord) -> None:
        """A claimed parent: drive it from a task on the loop; the worker goes back to the queue."""
        orchestration = Orchestrator(self, job)
        self.orchestrations[job.id] = orchestration
        orchestration.start()

    # -- workers ---------------------------------------------------------------------------
    async def _worker(self, kernel: WarmKernel) -> None:
        loop = asyncio.get_running_loop()
        while not self._stopping:
            try:
                await loop.run_in_executor(kernel.executor, kernel.start)
                break
            except Exception:
                log.exception("warm kernel %s failed to start; retrying in 5 s", kernel.device)
                await asyncio.sleep(5)
        name = worker_name(kernel.device)
        while not self._stopping:
            self._wake.clear()
            job = self._claim_priority(name) or self.store.claim_next(name)
            if job is None:
                await self._wake.wait()
                continue
            try:
                if job.kind == ORCHESTRATION_KIND:
                    self._start_orchestration(job)
                    continue
                await self._run_job(kernel, job)
            except asyncio.CancelledError:
                raise
            except Exception:  # never let one job take the worker down
                log.exception("job %s: runner error", job.id)

    async def _run_job(self, kernel: WarmKernel, job: JobRecord) -> None:
        loop = asyncio.get_running_loop()
        out_dir = self.outputs_dir / job.id
        out_dir.mkdir(parents=True, exist_ok=True)
        ctx = RunningJob(job=job, kernel=kernel)
        self.running[job.id] = ctx
        self.bus.publish(JobStartedEvent(job_id=job.id, phase=job.phase, device=kernel.device, attempt=job.attempts))
        t0 = time.perf_counter()
        status, error, outputs = JobStatus.SUCCEEDED, None, None
        try:
            params = phase_parameters(job.parameters, output_dir=out_dir, models=self.models, backend=self.backend,
                                      comfyui_url=self.comfyui_url)
            notebook = Path(self.notebook_for(job))
            await loop.run_in_executor(kernel.executor, self._execute, kernel, ctx, notebook,
                                       out_dir / NOTEBOOK_NAME, params)
            outputs = self._collect_outputs(out_dir)
            if self._quality_applies(job, notebook) and not ctx.cancel_event.is_set():
                outputs["quality"] = await self._run_quality(kernel, ctx, job, out_dir)
        except asyncio.CancelledError:
            # The server is stopping: the job stays `running` in the store and the restart
            # policy (animenb.store.jobs_sqlite) decides its fate at the next start.
            self.running.pop(job.id, None)
            raise
        except Exception as exc:
            status, error = self._classify(ctx, exc)
            outputs = None
        if ctx.persist_handle is not None:
            ctx.persist_handle.cancel()
        progress = ctx.last_progress.progress_dict() if ctx.last_progress else {}
        if status is JobStatus.SUCCEEDED:
            progress.update(percent=100.0, stage="done", eta_seconds=0.0)
        try:
            final = self.store.transition(job.id, status, error=error, outputs=outputs, progress=progress)
        except InvalidTransitionError:
            final = self.store.get(job.id)
        finally:
            self.running.pop(job.id, None)
        kernel.jobs_run += 1
        if self.warm and not self._stopping:  # reset now, off the next job's path (same kernel thread)
            loop.run_in_executor(kernel.executor, kernel.reset_after_job)
        self._publish_finished(final, duration=time.perf_counter() - t0)

    def _execute(self, kernel: WarmKernel, ctx: RunningJob, notebook: Path, output: Path, params: dict,
                 stage_prefix: str = "") -> None:
        """Kernel thread: reset (or, cold, restart) the kernel and run one notebook on it."""
        import papermill as pm
        from nbclient.exceptions import DeadKernelError

        loop = self._loop
        job_id = ctx.job.id

        def on_progress(payload: dict) -> None:
            loop.call_soon_threadsafe(self._on_progress, ctx, payload, stage_prefix)

        kernel.busy = True
        try:
            if ctx.cancel_event.is_set():
                from .engine import JobCancelled
                raise JobCancelled("cancelled before start")
            if self.warm:
                kernel.ensure_clean()   # usually already reset right after the previous job
            else:
                kernel.restart()
            kernel.clean = False
            pm.execute_notebook(
                str(notebook), str(output), parameters=params, engine_name="animenb", progress_bar=False,
                request_save_on_cell_execute=False, warm_kernel=kernel, progress_callback=on_progress,
                cancel_event=ctx.cancel_event, failure_output_path=str(output),
                execution_timeout=self.execution_timeout)
        except DeadKernelError:
            if self._stopping:
                raise
            log.warning("job %s: kernel %s died; starting a new one", job_id, kernel.device)
            try:
                kernel.restart()
            except Exception:
                log.exception("restarting kernel %s failed", kernel.device)
            raise
        finally:
            kernel.busy = False

    def _on_progress(self, ctx: RunningJob, payload: dict, stage_prefix: str = "") -> None:
        """Loop thread: publish a progress event; persist it to the store, throttled."""
        if ctx.job.id not in self.running:
            return
        event = JobProgressEvent.build(ctx.job.id, payload, floor=ctx.percent_floor)
        if stage_prefix:
            event.stage = f"{stage_prefix}{event.stage}"
        ctx.percent_floor = event.percent
        ctx.last_progress = event
        self.bus.publish(event)
        now = time.monotonic()
        if now - ctx.persisted_at >= self.progress_interval:
            self._persist_progress(ctx)
        elif ctx.persist_handle is None:
            delay = self.progress_interval - (now - ctx.persisted_at)
            ctx.persist_handle = self._loop.call_later(delay, self._persist_progress, ctx)

    def _persist_progress(self, ctx: RunningJob) -> None:
        ctx.persist_handle = None
        ctx.persisted_at = time.monotonic()
        if ctx.last_progress is not None and ctx.job.id in self.running:
            self.store.update_progress(ctx.job.id, ctx.last_progress.progress_dict())

    def _collect_outputs(self, out_dir: Path) -> dict:
        manifest_path = out_dir / MANIFEST_NAME
        if not manifest_path.is_file():
            raise MissingOutputError(f"The notebook finished without writing {MANIFEST_NAME} in its output directory.")
        manifest = json.loads(manifest_path.read_text())
        listed = [f.get("path") for f in manifest.get("files", []) if isinstance(f, dict)]
        missing = [p for p in listed if not p or not (out_dir / p).is_file()]
        if missing:
            raise MissingOutputError(f"{MANIFEST_NAME} lists files that are not there: {', '.join(map(str, missing))}")
        return {"files": output_files(out_dir), "manifest": MANIFEST_NAME, "notebook": NOTEBOOK_NAME,
                "listed": manifest.get("files", []), "seed": manifest.get("seed"),
                "quality": manifest.get("quality")}

    # -- quality: a separate step after a phase notebook succeeded -------------------------------
    def _quality_applies(self, job: JobRecord, notebook: Path | None = None) -> bool:
        """Phase jobs that ran their phase's own notebook get scored (not custom/test notebooks)."""
        if job.kind != "phase" or self.quality_notebook is None or not self.quality_notebook.is_file():
            return False
        if job.phase not in {p.id for p in PHASES}:
            return False
        return notebook is None or Path(notebook).name == get_phase(job.phase).notebook

    async def _run_quality(self, kernel: WarmKernel, ctx: RunningJob, job: JobRecord, out_dir: Path) -> dict:
        """Run the quality notebook on the same kernel; returns manifest["quality"] (or an error record).

        A failing quality notebook does not fail the generation: the job succeeds with
        quality {"score": None, "passed": False, "error": ...}.
        """
        loop = asyncio.get_running_loop()
        threshold = self.quality_threshold
        info = job.extra.get("orchestration") if isinstance(job.extra, dict) else None
        if isinstance(info, dict) and info.get("threshold") is not None:  # an orchestration child's gate
            threshold = info["threshold"]
        params = {"output_dir": str(out_dir), "phase": job.phase, "threshold": threshold}
        last = ctx.last_progress
        self._on_progress(ctx, {"percent": 100.0, "stage": "scoring", "step": last.step if last else 0,
                                "total_steps": last.total_steps if last else 0}, "quality: ")
        try:
            await loop.run_in_executor(kernel.executor, self._execute, kernel, ctx, self.quality_notebook,
                                       out_dir / QUALITY_NOTEBOOK_NAME, params, "quality: ")
            quality = json.loads((out_dir / MANIFEST_NAME).read_text()).get("quality")
            if not isinstance(quality, dict):
                raise MissingOutputError(f"the quality notebook wrote no `quality` into {MANIFEST_NAME}")
            return quality
        except Exception as exc:
            if ctx.cancel_event.is_set():
                raise
            _, error = self._classify(ctx, exc)
            log.warning("job %s: quality step failed: %s", job.id, error.message)
            return {"score": None, "passed": False, "threshold": threshold,
                    "error": error.as_dict()}

    # -- outcome -----------------------------------------------------------------------------
    def _classify(self, ctx: RunningJob, exc: Exception) -> tuple[JobStatus, JobError]:
        from nbclient.exceptions import DeadKernelError
        from papermill.exceptions import PapermillExecutionError

        if ctx.cancel_event.is_set():
            return JobStatus.CANCELLED, JobError("Cancelled", "Cancelled while running (kernel interrupted).")
        if isinstance(exc, DeadKernelError):
            return JobStatus.FAILED, JobError(
                "KernelDied", "The kernel running this job died (killed, out of memory, a crash in native code "
                              "or os._exit); it has been restarted and later jobs are unaffected.")
        if isinstance(exc, PapermillExecutionError):
            return JobStatus.FAILED, JobError(exc.ename or "ExecutionError",
                                              f"{exc.ename}: {exc.evalue} (notebook cell {exc.cell_index})")
        return JobStatus.FAILED, JobError(type(exc).__name__, str(exc) or type(exc).__name__)

    def _publish_finished(self, job: JobRecord, duration: float | None = None) -> None:
        files = job.outputs.get("files", []) if isinstance(job.outputs, dict) else []
        self.bus.publish(JobFinishedEvent(
            job_id=job.id, status=job.status.value, error=job.error.as_dict() if job.error else None,
            outputs=list(files), duration_seconds=None if duration is None else round(duration, 3)))
