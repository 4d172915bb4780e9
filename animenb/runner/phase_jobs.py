"""Phase jobs: the phase notebook, then the quality notebook, on the claiming worker's warm kernel.

The driver of job kind "phase" (see `animenb.runner.drivers`). It runs the job's notebook with papermill
on the kernel's own thread (`loop.run_in_executor(kernel.executor, ...)`: never `asyncio.to_thread`,
never papermill's `cwd=`) and records the outcome. The outcome comes from the exception, not from the
executed notebook's metadata (after a kill it can claim success):

- no exception, `manifest.json` present and every file it lists on disk -> succeeded
- cancel requested (DELETE) -> cancelled (queued: never started; running: the kernel is
  interrupted, again after `cancel_grace` s, and killed after 3x that)
- `DeadKernelError` -> failed {"type": "KernelDied"}; the kernel is replaced and the next job runs
- a cell error -> failed {"type": <exception name>, "message": ...}

After a phase notebook succeeds, the quality notebook (notebooks/04_quality.ipynb, when it exists)
runs on the same kernel (`_run_quality`, a separate step) with the job's gate (`extra["quality_threshold"]`,
else the runner's); its score lands in manifest.json and in the job's outputs.

Progress display data from the notebook reaches `EventBus` subscribers as `JobProgressEvent`s (percent
kept non-decreasing; `part` "generation" for the phase notebook, "quality" for the quality notebook) and
is persisted to the store at most `1 / progress_interval` times a second, so `/status` shows it too.

papermill and nbclient are imported where a notebook runs, not at import: they cost about a second, and
`animenb.runner` is imported by every `animenb` command.
"""
from __future__ import annotations

import asyncio
import logging
import threading
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable

from animenb.manifest import MANIFEST_NAME, read_manifest
from animenb.phases.catalog import PHASES, get_phase
from animenb.store import InvalidTransitionError, JobError, JobOutputs, JobRecord, JobStatus

from .drivers import JobDriver, output_files
from .events import JobProgressEvent, JobStartedEvent
from .kernels import WarmKernel
from .parameters import phase_parameters

log = logging.getLogger(__name__)

PHASE_KIND = "phase"
NOTEBOOK_NAME = "notebook.ipynb"
QUALITY_NOTEBOOK_NAME = "quality.ipynb"
QUALITY_NOTEBOOK = "04_quality.ipynb"


class MissingOutputError(RuntimeError):
    """The notebook finished without the files it must write."""


class JobCancelledBeforeStart(RuntimeError):
    """The job was cancelled before its notebook started."""


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


def default_notebook_for(notebooks_dir: Path) -> Callable[[JobRecord], Path]:
    def resolve(job: JobRecord) -> Path:
        return notebooks_dir / get_phase(job.phase).notebook
    return resolve


class PhaseJobDriver(JobDriver):
    """Runs phase jobs (module docstring); the runner's settings (models, notebooks, quality, warm,
    cancel_grace, execution_timeout) are read from the host when a job starts."""
    kind = PHASE_KIND

    def __init__(self, host):
        super().__init__(host)
        self.running: dict[str, RunningJob] = {}
        self._loop: asyncio.AbstractEventLoop | None = None

    def active(self) -> list[str]:
        return list(self.running)

    def describe(self) -> dict:
        return {"running": sorted(self.running)}

    def live_progress(self, job_id: str) -> dict | None:
        ctx = self.running.get(job_id)
        if ctx is None or ctx.last_progress is None:
            return None
        return ctx.last_progress.progress_dict()

    async def start(self, job: JobRecord, kernel: WarmKernel) -> None:
        self._loop = asyncio.get_running_loop()
        await self._run_job(kernel, job)

    async def cancel(self, job: JobRecord) -> JobRecord:
        """Interrupt the kernel (again after `cancel_grace`, killed after 3x); returns once stopped (or ~3 s)."""
        job_id = job.id
        ctx = self.running.get(job_id)
        if job.status is not JobStatus.RUNNING or ctx is None:
            return job
        if ctx.cancel_requested_at is None:
            ctx.cancel_requested_at = time.monotonic()
            ctx.cancel_event.set()
            await ctx.kernel.interrupt()
            asyncio.get_running_loop().create_task(self._escalate_cancel(ctx))
        deadline = time.monotonic() + 3 * self.host.cancel_grace + 1
        while job_id in self.running and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        return self.host.store.get(job_id)

    async def _escalate_cancel(self, ctx: RunningJob) -> None:
        job_id = ctx.job.id
        await asyncio.sleep(self.host.cancel_grace)
        if self.running.get(job_id) is ctx:  # a cell may have caught the first interrupt
            await ctx.kernel.interrupt()
        await asyncio.sleep(2 * self.host.cancel_grace)
        if self.running.get(job_id) is ctx:  # e.g. a long C call ignoring SIGINT
            log.warning("job %s ignored interrupts; killing its kernel", job_id)
            ctx.kernel.kill()

    async def _run_job(self, kernel: WarmKernel, job: JobRecord) -> None:
        loop = asyncio.get_running_loop()
        out_dir = self.host.outputs_dir / job.id
        out_dir.mkdir(parents=True, exist_ok=True)
        ctx = RunningJob(job=job, kernel=kernel)
        self.running[job.id] = ctx
        self.host.bus.publish(JobStartedEvent(job_id=job.id, phase=job.phase, device=kernel.device,
                                              attempt=job.attempts))
        t0 = time.perf_counter()
        status, error, outputs = JobStatus.SUCCEEDED, None, None
        try:
            params = phase_parameters(job.parameters, output_dir=out_dir, models=self.host.models,
                                      backend=self.host.backend, comfyui_url=self.host.comfyui_url)
            notebook = Path(self.host.notebook_for(job))
            await loop.run_in_executor(kernel.executor, self._execute, kernel, ctx, notebook,
                                       out_dir / NOTEBOOK_NAME, params)
            outputs = self._collect_outputs(out_dir)
            if self.quality_applies(job, notebook) and not ctx.cancel_event.is_set():
                outputs = replace(outputs, quality=await self._run_quality(kernel, ctx, job, out_dir))
        except asyncio.CancelledError:
            # The server is stopping: the job stays `running` in the store and the restart
            # policy (animenb.store.jobs_sqlite) decides its fate at the next start.
            self.running.pop(job.id, None)
            raise
        except Exception as exc:
            status, error = self._classify(ctx, exc)
            outputs = None
        for name in (NOTEBOOK_NAME, QUALITY_NOTEBOOK_NAME):  # readers of the job see no server paths
            await loop.run_in_executor(None, self.host.public_paths.scrub_file, out_dir / name)
        if ctx.persist_handle is not None:
            ctx.persist_handle.cancel()
        progress = ctx.last_progress.progress_dict() if ctx.last_progress else {}
        if status is JobStatus.SUCCEEDED:
            progress.update(percent=100.0, stage="done", eta_seconds=0.0)
        try:
            final = self.host.store.transition(job.id, status, error=error, outputs=outputs, progress=progress)
        except InvalidTransitionError:
            final = self.host.store.get(job.id)
        finally:
            self.running.pop(job.id, None)
        kernel.jobs_run += 1
        if self.host.warm and not self.host.stopping:  # reset now, off the next job's path (same kernel thread)
            loop.run_in_executor(kernel.executor, kernel.reset_after_job)
        self.host.finished(final, duration=time.perf_counter() - t0)

    def _execute(self, kernel: WarmKernel, ctx: RunningJob, notebook: Path, output: Path, params: dict,
                 part: str = "generation") -> None:
        """Kernel thread: reset (or, cold, restart) the kernel and run one notebook on it."""
        import papermill as pm
        from nbclient.exceptions import DeadKernelError

        from . import engine  # registers the "animenb" engine with papermill, installed or not

        loop = self._loop
        job_id = ctx.job.id

        def on_progress(payload: dict) -> None:
            loop.call_soon_threadsafe(self._on_progress, ctx, payload, part)

        kernel.busy = True
        try:
            if ctx.cancel_event.is_set():
                raise JobCancelledBeforeStart("cancelled before start")
            if self.host.warm:
                kernel.ensure_clean()   # usually already reset right after the previous job
            else:
                kernel.restart()
            kernel.clean = False
            pm.execute_notebook(
                str(notebook), str(output), parameters=params, engine_name=engine.ENGINE_NAME, progress_bar=False,
                request_save_on_cell_execute=False, warm_kernel=kernel, progress_callback=on_progress,
                cancel_event=ctx.cancel_event, failure_output_path=str(output),
                execution_timeout=self.host.execution_timeout)
        except DeadKernelError:
            if self.host.stopping:
                raise
            log.warning("job %s: kernel %s died; starting a new one", job_id, kernel.device)
            try:
                kernel.restart()
            except Exception:
                log.exception("restarting kernel %s failed", kernel.device)
            raise
        finally:
            kernel.busy = False

    def _on_progress(self, ctx: RunningJob, payload: dict, part: str = "generation") -> None:
        """Loop thread: publish a progress event; persist it to the store, throttled."""
        if ctx.job.id not in self.running:
            return
        event = JobProgressEvent.build(ctx.job.id, payload, floor=ctx.percent_floor, part=part)
        ctx.percent_floor = event.percent
        ctx.last_progress = event
        self.host.bus.publish(event)
        now = time.monotonic()
        if now - ctx.persisted_at >= self.host.progress_interval:
            self._persist_progress(ctx)
        elif ctx.persist_handle is None:
            delay = self.host.progress_interval - (now - ctx.persisted_at)
            ctx.persist_handle = self._loop.call_later(delay, self._persist_progress, ctx)

    def _persist_progress(self, ctx: RunningJob) -> None:
        ctx.persist_handle = None
        ctx.persisted_at = time.monotonic()
        if ctx.last_progress is not None and ctx.job.id in self.running:
            self.host.store.update_progress(ctx.job.id, ctx.last_progress.progress_dict())

    def _collect_outputs(self, out_dir: Path) -> JobOutputs:
        if not (out_dir / MANIFEST_NAME).is_file():
            raise MissingOutputError(f"The notebook finished without writing {MANIFEST_NAME} in its output directory.")
        manifest = read_manifest(out_dir)
        listed = [f.get("path") for f in manifest.get("files", []) if isinstance(f, dict)]
        missing = [p for p in listed if not p or not (out_dir / p).is_file()]
        if missing:
            raise MissingOutputError(f"{MANIFEST_NAME} lists files that are not there: {', '.join(map(str, missing))}")
        return JobOutputs.from_dict({"files": output_files(out_dir), "manifest": MANIFEST_NAME,
                                     "notebook": NOTEBOOK_NAME, "listed": manifest.get("files"),
                                     "seed": manifest.get("seed"), "quality": manifest.get("quality")})

    # -- quality: a separate step after a phase notebook succeeded -------------------------------
    def quality_applies(self, job: JobRecord, notebook: Path | None = None) -> bool:
        """Phase jobs that ran their phase's own notebook get scored (not custom/test notebooks)."""
        if job.kind != "phase" or self.host.quality_notebook is None or not self.host.quality_notebook.is_file():
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
        threshold = self.host.quality_threshold
        if job.extra.get("quality_threshold") is not None:  # this job's own gate (e.g. an orchestration child's)
            threshold = job.extra["quality_threshold"]
        params = {"output_dir": str(out_dir), "phase": job.phase, "threshold": threshold, "figures": False}
        last = ctx.last_progress
        self._on_progress(ctx, {"percent": 100.0, "stage": "scoring", "step": last.step if last else 0,
                                "total_steps": last.total_steps if last else 0}, "quality")
        try:
            await loop.run_in_executor(kernel.executor, self._execute, kernel, ctx, self.host.quality_notebook,
                                       out_dir / QUALITY_NOTEBOOK_NAME, params, "quality")
            quality = read_manifest(out_dir).get("quality")
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

    def _classify(self, ctx: RunningJob, exc: Exception) -> tuple[JobStatus, JobError]:
        """The job's outcome for `exc`; the stored message has server paths made relative (the log keeps them)."""
        status, error = self._outcome(ctx, exc)
        public = self.host.public_paths.scrub(error.message)
        if public != error.message:
            log.warning("job %s: %s: %s", ctx.job.id, error.type, error.message)
            error = JobError(error.type, public)
        return status, error

    def _outcome(self, ctx: RunningJob, exc: Exception) -> tuple[JobStatus, JobError]:
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

