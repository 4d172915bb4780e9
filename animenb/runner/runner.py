"""`JobRunner`: the queue of jobs -> their drivers, one worker per warm kernel.

One worker task per warm kernel (one per device) claims the next job: first the priority jobs
(orchestration children, so a chain is not interleaved with jobs queued after it started), then the
oldest queued job in the store. It hands the job to the driver of its kind (`animenb.runner.drivers`):

    "phase"          `PhaseJobDriver`: the phase notebook and the quality notebook on the worker's kernel
    "orchestration"  `OrchestrationDriver`: a task that submits the chain's child jobs; the worker is free at once

The runner owns what every kind shares: submitting (a queued job, committed, then a worker woken),
cancelling a queued job, the terminal event of every job (`finished`), the restart policy order
(each driver's `recover()`, then the store's) and stopping. Drivers see it as their `JobHost`.
"""
from __future__ import annotations

import asyncio
import collections
import logging
import time
from pathlib import Path
from typing import Any, Callable

from animenb import config
from animenb.store import InvalidTransitionError, JobError, JobNotFoundError, JobRecord, JobStatus, JobStoreBase
from animenb.store.jobs_sqlite import worker_name

from .drivers import DriverRegistry, JobDriver, output_files
from .events import EventBus, JobFinishedEvent, JobQueuedEvent
from .kernels import KernelPool, WarmKernel
from .orchestration import OrchestrationDriver
from .phase_jobs import NOTEBOOK_NAME, PHASE_KIND, QUALITY_NOTEBOOK, PhaseJobDriver, default_notebook_for
from .public_paths import PathScrubber

log = logging.getLogger(__name__)

# Job kind -> driver: the registry a JobRunner instantiates (one driver per kind).
job_drivers = DriverRegistry()
job_drivers.register(PhaseJobDriver.kind, PhaseJobDriver)
job_drivers.register(OrchestrationDriver.kind, OrchestrationDriver)


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
        self.public_paths = PathScrubber(outputs_dir=self.outputs_dir, notebooks_dir=self.notebooks_dir,
                                         home=Path(env.get("ANIMENB_HOME") or config.home_dir()))
        self.drivers: dict[str, JobDriver] = {kind: job_drivers.get(kind)(self) for kind in job_drivers}
        self._priority: collections.deque[str] = collections.deque()  # child jobs, claimed before the queue
        self.started_at = time.time()
        self.recovered: list[JobRecord] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        self._wake: asyncio.Event | None = None
        self._workers: list[asyncio.Task] = []
        self._stopping = False

    @property
    def stopping(self) -> bool:
        return self._stopping

    # -- lifecycle ---------------------------------------------------------------------
    async def start(self) -> None:
        """Recover jobs a dead process left running (each driver, then the store), then start one worker per kernel."""
        self._loop = asyncio.get_running_loop()
        self._wake = asyncio.Event()
        self.outputs_dir.mkdir(parents=True, exist_ok=True)
        recovered: list[JobRecord] = []
        for driver in self.drivers.values():  # e.g. orchestration parents settle their children first
            recovered += driver.recover()
        self.recovered = recovered + self.store.recover(self._has_output)
        for job in self.recovered:
            log.warning("job %s was left running by a dead process: now %s", job.id, job.status.value)
            if job.terminal:
                self.finished(job)
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
        """Stop drivers, workers and kernels. A job still running stays `running` in the store; the next
        start applies the restart policy to it (see animenb.store.jobs_sqlite)."""
        self._stopping = True
        for driver in self.drivers.values():
            await driver.stop()
        for task in self._workers:
            task.cancel()
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

    # -- API used by the server and the drivers ------------------------------------------------
    def submit(self, request: dict[str, Any], *, phase: int | None, owner: str = "anonymous",
               visibility: str = "public", parent_id: str | None = None, kind: str = "phase",
               extra: dict[str, Any] | None = None, priority: bool = False) -> JobRecord:
        """Store a queued job (committed on return) and wake a worker.

        `kind` names the job's driver (`job_drivers`); `priority` (orchestration children) lets the job
        start before the jobs already queued.
        """
        job_drivers.get(kind)  # an unknown kind is refused before anything is stored
        job = self.store.create(phase=phase, parameters=request, owner=owner, visibility=visibility,
                                parent_id=parent_id, kind=kind, extra=extra)
        if priority:
            self._priority.append(job.id)
        self.bus.publish(JobQueuedEvent(job_id=job.id, phase=phase, queue_position=self.store.queue_position(job.id)))
        if self._wake is not None:
            self._wake.set()
        return job

    async def cancel(self, job_id: str) -> JobRecord:
        """Queued: cancelled at once. Running: its driver stops it; returns once it has stopped (or ~3 s)."""
        job = self.store.get(job_id)
        if job.status is JobStatus.QUEUED:
            try:
                job = self.store.transition(job_id, JobStatus.CANCELLED, expected=[JobStatus.QUEUED],
                                            error=JobError("Cancelled", "Cancelled before it started."))
                self.finished(job)
                return job
            except InvalidTransitionError:
                job = self.store.get(job_id)  # claimed meanwhile: cancel it as a running job
        driver = self.drivers.get(job.kind)
        if job.status is not JobStatus.RUNNING or driver is None or job_id not in driver.active():
            return job
        return await driver.cancel(job)

    def finished(self, job: JobRecord, duration: float | None = None) -> None:
        """Publish `job`'s terminal event."""
        self.bus.publish(JobFinishedEvent.build(job, duration=duration))

    def live_progress(self, job_id: str) -> dict | None:
        """The newest progress of a running job (None when no driver runs it here)."""
        for driver in self.drivers.values():
            progress = driver.live_progress(job_id)
            if progress is not None:
                return progress
        return None

    def children(self, job: JobRecord) -> list[dict] | None:
        """A parent job's children (id, phase, attempt, status, score...); None for kinds without children."""
        driver = self.drivers.get(job.kind)
        return None if driver is None else driver.children(job)

    def generating(self) -> bool:
        """Whether a phase job is running on a kernel now (its notebook or its quality step)."""
        return bool(self.drivers[PHASE_KIND].active())

    def health(self, stall_after: float = 120.0) -> dict:
        """For /health: `warm`, `kernels` (each kernel's description), `generating`, `scored` (phase jobs get
        a quality score) and `stalled` (no kernel ready `stall_after` s after start)."""
        kernels = self.kernels.describe()
        stalled = time.time() - self.started_at > stall_after and not any(k["ready"] for k in kernels)
        scored = self.quality_notebook is not None and self.quality_notebook.is_file()
        return {"warm": self.warm, "kernels": kernels, "generating": self.generating(), "scored": scored,
                "stalled": stalled}

    def queue_length(self) -> int:
        return self.store.count(status=JobStatus.QUEUED)

    def describe(self) -> dict:
        drivers = {kind: driver.describe() for kind, driver in self.drivers.items()}
        return {"warm": self.warm, "kernels": self.kernels.describe(), "drivers": drivers,
                "models": self.models, "backend": self.backend}

    def _claim_priority(self, worker: str) -> JobRecord | None:
        """The oldest still-queued priority job (an orchestration child), moved to running."""
        while self._priority:
            job_id = self._priority.popleft()
            try:
                return self.store.transition(job_id, JobStatus.RUNNING, expected=[JobStatus.QUEUED], worker=worker)
            except (InvalidTransitionError, JobNotFoundError):
                continue  # cancelled, or claimed through the queue meanwhile
        return None

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
                driver = self.drivers.get(job.kind)
                if driver is None:  # a kind this version does not know (an older or newer database)
                    self.finished(self.store.transition(job.id, JobStatus.FAILED, error=JobError(
                        "UnknownJobKind", f"No driver for job kind {job.kind!r}; known: {', '.join(self.drivers)}.")))
                    continue
                await driver.start(job, kernel)
            except asyncio.CancelledError:
                raise
            except Exception:  # never let one job take the worker down
                log.exception("job %s: runner error", job.id)
