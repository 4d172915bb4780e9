"""Phase jobs: the phase notebook, scored by the quality gate, on the slot the runner placed the job on.

The driver of job kind "phase" (see `animenb.runner.drivers`). It runs the job's notebooks through its
slot (`animenb.runner.executors`: a warm kernel of this process, or a Ray actor's) and records the
outcome. The outcome comes from the exception, not from the executed notebook's metadata (after a kill
it can claim success):

- no exception, `manifest.json` present and every file it lists on disk -> succeeded
- cancel requested (DELETE) -> cancelled (queued: never started; running: the kernel is
  interrupted, again after `cancel_grace` s, and killed after 3x that)
- running past the runner's `job_timeout` -> failed {"type": "Timeout"}; the kernel is interrupted
  (and, if need be, killed) exactly as for a cancel
- `DeadKernelError` -> failed {"type": "KernelDied"}; the kernel is replaced and the next job runs
- left `running` by a dead server with its outputs complete -> succeeded at the next start (`recover`)
- `SlotLost` (the Ray actor or node owning the kernel died) -> re-queued once if the job wrote nothing,
  else lost {"type": "Lost"} with the reason; the executor replaces the actor
- a cell error -> failed {"type": <exception name>, "message": ...}

Scoring: the runner appends one cell to the phase notebook (`animenb.quality.job_step`), so the gate
decides in the same kernel right after generation, with the job's gate (`extra["quality_threshold"]`,
else the runner's), at the cost of one kernel round trip; its score lands in manifest.json and in the
job's outputs, and the executed notebook.ipynb shows it. A scoring error does not fail the generation
(quality {"score": None, "passed": False, "error": ...}). The figures are notebooks/04_quality.ipynb's job,
for a person who opens it.

Progress display data from the notebook reaches `EventBus` subscribers as `JobProgressEvent`s (percent
kept non-decreasing; `part` "generation" while generating, "quality" while scoring) and is persisted to
the store at most `1 / progress_interval` times a second, so `/status` shows it too.

papermill and nbclient are imported where a notebook runs, not at import: they cost about a second, and
`animenb.runner` is imported by every `animenb` command.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from animenb.manifest import MANIFEST_NAME, read_manifest
from animenb.phases.catalog import PHASES, get_phase
from animenb.store import JobError, JobOutputs, JobRecord, JobStatus

from .drivers import JobDriver, output_files, running_jobs
from .events import JobProgressEvent, JobStartedEvent
from .executors import NotebookRun, Slot, SlotLost, model_key
from .parameters import phase_parameters

log = logging.getLogger(__name__)

PHASE_KIND = "phase"
NOTEBOOK_NAME = "notebook.ipynb"


def quality_cell(output_dir: Path, phase: int, threshold: float | None) -> str:
    """The cell appended to a phase job's notebook to score it (`animenb.quality.job_step.score_job`); literals
    only, so it depends on nothing the notebook defines."""
    return (
        "# Added by the job runner: the quality gate's decision on this run (figures: notebooks/04_quality.ipynb)\n"
        "from animenb.quality.job_step import score_job\n"
        f"score_job({str(output_dir)!r}, phase={int(phase)!r}, threshold={threshold!r})"
    )


class MissingOutputError(RuntimeError):
    """The notebook finished without the files it must write."""


@dataclass
class RunningJob:
    job: JobRecord
    slot: Slot
    cancel_event: threading.Event = field(default_factory=threading.Event)
    cancel_requested_at: float | None = None
    last_progress: JobProgressEvent | None = None
    percent_floor: float = 0.0
    persisted_at: float = 0.0
    persist_handle: asyncio.TimerHandle | None = None
    timeout_handle: asyncio.TimerHandle | None = None
    timed_out: bool = False


def default_notebook_for(notebooks_dir: Path) -> Callable[[JobRecord], Path]:
    def resolve(job: JobRecord) -> Path:
        if job.phase is None:
            raise ValueError(f"job {job.id} has no phase: no phase notebook runs it")
        return notebooks_dir / get_phase(job.phase).notebook

    return resolve


class PhaseJobDriver(JobDriver):
    """Runs phase jobs (module docstring); the runner's settings (models, notebooks, quality, warm,
    cancel_grace, execution_timeout) are read from the host when a job starts."""

    kind = PHASE_KIND

    def __init__(self, host):
        super().__init__(host)
        self.running: dict[str, RunningJob] = {}

    def active(self) -> list[str]:
        return list(self.running)

    def describe(self) -> dict:
        return {"running": sorted(self.running)}

    def live_progress(self, job_id: str) -> dict | None:
        ctx = self.running.get(job_id)
        if ctx is None or ctx.last_progress is None:
            return None
        return ctx.last_progress.progress_dict()

    def recover(self) -> list[JobRecord]:
        """Phase jobs a dead process left running whose outputs are complete (a manifest, and every file it
        lists on disk): succeeded, as they were about to be; the store's restart policy takes the rest.
        Orchestration children are their parent's to settle."""
        settled = []
        for job in running_jobs(self.host.store):
            if job.kind != PHASE_KIND or job.parent_id:
                continue
            try:
                outputs = self._collect_outputs(self.host.outputs_dir / job.id)
            except (MissingOutputError, OSError, ValueError):  # nothing, partial, or a half-written manifest
                continue
            settled.append(
                self.host.store.transition(
                    job.id,
                    JobStatus.SUCCEEDED,
                    outputs=outputs,
                    progress={**job.progress, "percent": 100.0, "stage": "done"},
                )
            )
        return settled

    async def start(self, job: JobRecord, slot: Slot | None) -> None:
        assert slot is not None  # uses_slot: the runner places every phase job on one
        await self._run_job(slot, job)

    async def cancel(self, job: JobRecord) -> JobRecord:
        """Interrupt the kernel (again after `cancel_grace`, killed after 3x); returns once stopped (or ~3 s)."""
        job_id = job.id
        ctx = self.running.get(job_id)
        if job.status is not JobStatus.RUNNING or ctx is None:
            return job
        if ctx.cancel_requested_at is None:
            ctx.cancel_requested_at = time.monotonic()
            ctx.cancel_event.set()
            await ctx.slot.interrupt()
            asyncio.get_running_loop().create_task(self._escalate_cancel(ctx))
        deadline = time.monotonic() + 3 * self.host.cancel_grace + 1
        while job_id in self.running and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        return self.host.store.get(job_id)

    def _time_out(self, ctx: RunningJob) -> None:
        """Loop thread, `job_timeout` s after the job started: stop it as a cancel would; it ends failed."""
        if self.running.get(ctx.job.id) is not ctx:
            return
        log.warning("job %s ran past the %g s job timeout; interrupting its kernel", ctx.job.id, self.host.job_timeout)
        ctx.timed_out = True
        asyncio.get_running_loop().create_task(self.cancel(ctx.job))

    async def _escalate_cancel(self, ctx: RunningJob) -> None:
        job_id = ctx.job.id
        await asyncio.sleep(self.host.cancel_grace)
        if self.running.get(job_id) is ctx:  # a cell may have caught the first interrupt
            await ctx.slot.interrupt()
        await asyncio.sleep(2 * self.host.cancel_grace)
        if self.running.get(job_id) is ctx:  # e.g. a long C call ignoring SIGINT
            log.warning("job %s ignored interrupts; killing its kernel", job_id)
            await ctx.slot.kill()

    async def _run_job(self, slot: Slot, job: JobRecord) -> None:
        loop = asyncio.get_running_loop()
        out_dir = self.host.outputs_dir / job.id
        out_dir.mkdir(parents=True, exist_ok=True)
        ctx = RunningJob(job=job, slot=slot)
        self.running[job.id] = ctx
        if self.host.job_timeout:
            ctx.timeout_handle = loop.call_later(self.host.job_timeout, self._time_out, ctx)
        self.host.bus.publish(JobStartedEvent(job_id=job.id, phase=job.phase, device=slot.device, attempt=job.attempts))
        t0 = time.perf_counter()
        status, error, outputs = JobStatus.SUCCEEDED, None, None
        try:
            params = phase_parameters(
                job.parameters,
                output_dir=slot.job_dir(job.id, out_dir),
                models=self.host.models,
                backend=self.host.backend,
                comfyui_url=slot.comfyui_url or self.host.comfyui_url,
            )
            notebook = Path(self.host.notebook_for(job))
            run = self._notebook_run(ctx, notebook, NOTEBOOK_NAME, out_dir, params)
            if self.quality_applies(job, notebook) and job.phase is not None:
                run.extra_cells = (quality_cell(slot.job_dir(job.id, out_dir), job.phase, self._threshold(job)),)
            await slot.run_notebook(run)
            outputs = self._collect_outputs(out_dir)
        except asyncio.CancelledError:
            # The server is stopping: the job stays `running` in the store and the restart
            # policy (animenb.store.jobs_sqlite) decides its fate at the next start.
            self.running.pop(job.id, None)
            raise
        except SlotLost as exc:
            if ctx.cancel_event.is_set():
                status, error = self._classify(ctx, exc)
            else:  # the restart policy of a job whose process died: re-queued once if it wrote nothing
                status, error = self._slot_lost(job, out_dir, exc)
            outputs = None
        except Exception as exc:
            status, error = self._classify(ctx, exc)
            outputs = None
        finally:
            if ctx.timeout_handle is not None:
                ctx.timeout_handle.cancel()
        if not slot.saves_public_notebook:  # readers of the job see no server paths
            await loop.run_in_executor(None, self.host.public_paths.scrub_file, out_dir / NOTEBOOK_NAME)
        if ctx.persist_handle is not None:
            ctx.persist_handle.cancel()
        progress: dict | None = ctx.last_progress.progress_dict() if ctx.last_progress else {}
        if status is JobStatus.SUCCEEDED and progress is not None:
            progress.update(percent=100.0, stage="done", eta_seconds=0.0)
        if status is JobStatus.QUEUED:
            progress = None
        try:
            final = await self.host.record_end(job.id, status, error=error, outputs=outputs, progress=progress)
        finally:
            self.running.pop(job.id, None)
        slot.after_job(
            job.id,
            warm=self.host.warm and not self.host.stopping,
            key=model_key(job, self.host.models),
            succeeded=final.status is JobStatus.SUCCEEDED,
        )
        if final.status is JobStatus.QUEUED:
            self.host.requeued(final)
        else:
            self.host.finished(final, duration=time.perf_counter() - t0)

    def _notebook_run(
        self, ctx: RunningJob, notebook: Path, output_name: str, out_dir: Path, params: dict
    ) -> NotebookRun:
        return NotebookRun(
            job_id=ctx.job.id,
            notebook=notebook,
            output_name=output_name,
            out_dir=out_dir,
            parameters=params,
            on_progress=lambda payload: self._on_progress(ctx, payload),
            cancel_event=ctx.cancel_event,
            execution_timeout=self.host.execution_timeout,
            public_text=self.host.public_paths.scrub,
        )

    def _slot_lost(self, job: JobRecord, out_dir: Path, exc: SlotLost) -> tuple[JobStatus, JobError | None]:
        """A job whose kernel's process (a Ray actor, its node) died: re-queued once if it wrote nothing,
        else `lost` with the reason (the policy of a job left running by a dead server)."""
        wrote = any(f != NOTEBOOK_NAME for f in output_files(out_dir))
        reason = self.host.public_paths.scrub(str(exc) or type(exc).__name__)
        log.warning("job %s: %s", job.id, reason)
        if job.requeues == 0 and not wrote:
            return JobStatus.QUEUED, None
        why = "it had already been re-queued once" if job.requeues else "it had written output files"
        return JobStatus.LOST, JobError("Lost", f"{reason}; not re-run because {why}. Partial files, if any, are kept.")

    def _on_progress(self, ctx: RunningJob, payload: dict) -> None:
        """Loop thread: publish a progress event; persist it to the store, throttled."""
        if ctx.job.id not in self.running:
            return
        last = ctx.last_progress
        if last is not None and payload.get("total_steps") is None:  # the quality step: no steps of its own
            payload = {**payload, "step": last.step, "total_steps": last.total_steps}
        event = JobProgressEvent.build(ctx.job.id, payload, floor=ctx.percent_floor)
        ctx.percent_floor = event.percent
        ctx.last_progress = event
        self.host.bus.publish(event)
        now = time.monotonic()
        if now - ctx.persisted_at >= self.host.progress_interval:
            self._persist_progress(ctx)
        elif ctx.persist_handle is None:
            delay = self.host.progress_interval - (now - ctx.persisted_at)
            ctx.persist_handle = asyncio.get_running_loop().call_later(delay, self._persist_progress, ctx)

    def _persist_progress(self, ctx: RunningJob) -> None:
        ctx.persist_handle = None
        ctx.persisted_at = time.monotonic()
        if ctx.last_progress is not None and ctx.job.id in self.running:
            self.host.store_progress(ctx.job.id, ctx.last_progress.progress_dict())

    def _collect_outputs(self, out_dir: Path) -> JobOutputs:
        if not (out_dir / MANIFEST_NAME).is_file():
            raise MissingOutputError(f"The notebook finished without writing {MANIFEST_NAME} in its output directory.")
        manifest = read_manifest(out_dir)
        listed = [f.get("path") for f in manifest.get("files", []) if isinstance(f, dict)]
        missing = [p for p in listed if not p or not (out_dir / p).is_file()]
        if missing:
            raise MissingOutputError(f"{MANIFEST_NAME} lists files that are not there: {', '.join(map(str, missing))}")
        return JobOutputs.from_dict(
            {
                "files": output_files(out_dir),
                "manifest": MANIFEST_NAME,
                "notebook": NOTEBOOK_NAME,
                "listed": manifest.get("files"),
                "seed": manifest.get("seed"),
                "quality": manifest.get("quality"),
            }
        )

    # -- quality: a cell appended to the phase notebook (animenb.quality.job_step) -----------------
    def quality_applies(self, job: JobRecord, notebook: Path | None = None) -> bool:
        """Phase jobs that run their phase's own notebook get scored (not custom/test notebooks)."""
        if job.kind != "phase" or not self.host.quality or job.phase not in {p.id for p in PHASES}:
            return False
        return notebook is None or Path(notebook).name == get_phase(job.phase).notebook

    def _threshold(self, job: JobRecord) -> float | None:
        if job.extra.get("quality_threshold") is not None:  # this job's own gate (e.g. an orchestration child's)
            return job.extra["quality_threshold"]
        return self.host.quality_threshold

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

        if ctx.timed_out:
            return JobStatus.FAILED, JobError(
                "Timeout",
                f"The job ran longer than this server allows "
                f"({self.host.job_timeout:g} s); its kernel was interrupted.",
            )
        if ctx.cancel_event.is_set():
            return JobStatus.CANCELLED, JobError("Cancelled", "Cancelled while running (kernel interrupted).")
        if isinstance(exc, DeadKernelError):
            return JobStatus.FAILED, JobError(
                "KernelDied",
                "The kernel running this job died (killed, out of memory, a crash in native code "
                "or os._exit); it has been restarted and later jobs are unaffected.",
            )
        if isinstance(exc, PapermillExecutionError):
            return JobStatus.FAILED, JobError(
                exc.ename or "ExecutionError", f"{exc.ename}: {exc.evalue} (notebook cell {exc.cell_index})"
            )
        return JobStatus.FAILED, JobError(type(exc).__name__, str(exc) or type(exc).__name__)
