"""`JobRunner`: the queue of jobs -> their drivers, on the slots of an executor.

The runner claims the next job when a slot of its executor is idle (`animenb.runner.executors`: a warm
kernel of this process by default, or a Ray actor's with `executor="ray"`): first the priority jobs
(orchestration children, so a chain is not interleaved with jobs queued after it started), then, taking
turns between callers (a token's name, an anonymous client: `TURN_KEY`), the oldest queued job of the
caller whose last turn is oldest, that an idle slot can take (`place`: a slot already holding the job's
models first). The per-caller allowance (`max_queued_per_user`) still bounds how many a caller queues.
It hands the job, and the slot, to the driver of its kind (`animenb.runner.drivers`):

    "phase"          `PhaseJobDriver`: the phase notebook, scored by the quality gate, on the slot
    "orchestration"  `OrchestrationDriver`: a task that submits the chain's child jobs; it holds no slot
    "sweep"          `SweepDriver`: a task that submits one child job per cell of a sweep; it holds no slot

The runner owns what every kind shares: submitting (a queued job, committed, then the dispatcher
woken), cancelling a queued job, the terminal event of every job (`finished`), the restart policy order
(each driver's `recover()`, then the store's) and stopping. Drivers see it as their `JobHost`.
"""

from __future__ import annotations

import asyncio
import collections
import functools
import itertools
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Awaitable, Callable, TypeVar

from animenb import config
from animenb.store import (
    InvalidTransitionError,
    JobError,
    JobNotFoundError,
    JobRecord,
    JobStatus,
    JobStoreBase,
    StoreUnavailable,
)
from animenb.store.jobs_sqlite import worker_name
from animenb.store.sqlite_database import wait_briefly

from .drivers import DriverRegistry, JobDriver, output_files
from .events import EventBus, JobFinishedEvent, JobQueuedEvent
from .executors import Executor, LocalExecutor, Slot, place, start_until_up
from .kernels import KernelPool
from .orchestration import OrchestrationDriver
from .phase_jobs import NOTEBOOK_NAME, PHASE_KIND, PhaseJobDriver, default_notebook_for
from .public_paths import PathScrubber
from .sweep_jobs import SweepDriver

log = logging.getLogger(__name__)
T = TypeVar("T")

# Job kind -> driver: the registry a JobRunner instantiates (one driver per kind).
job_drivers = DriverRegistry()
# A job's `extra` key naming whose turn it takes (the server sets it: a token's name, an anonymous client);
# jobs without it take their owner's.
TURN_KEY = "turn"
# Process ids of the kernels (and Ray actors): for /admin/stats, not for /health, which anyone may read.
ADMIN_ONLY_SLOT_FIELDS = frozenset({"pid", "kernel_pid"})
CLAIM_TO_START_WAIT = 5.0  # seconds a cancel waits for a just-claimed job to reach its driver
DISPATCHER_MAX_PAUSE = 5.0  # seconds between restarts of a dispatcher that keeps failing
RETRY_MAX_PAUSE = 5.0  # seconds between tries of a job-end or child write that keeps failing
REQUEST_WRITERS = 4  # threads for request-path writes: each waits briefly, so a locked store fails them together
job_drivers.register(PhaseJobDriver.kind, PhaseJobDriver)
job_drivers.register(OrchestrationDriver.kind, OrchestrationDriver)
job_drivers.register(SweepDriver.kind, SweepDriver)


def turn_of(job: JobRecord) -> str:
    """Whose turn `job` takes in the queue (`TURN_KEY`)."""
    return str(job.extra.get(TURN_KEY) or job.owner)


class JobRunner:
    def __init__(
        self,
        store: JobStoreBase,
        bus: EventBus | None = None,
        *,
        outputs_dir: str | Path | None = None,
        kernels: KernelPool | None = None,
        devices: list[str] | None = None,
        models: str | None = None,
        backend: str | None = None,
        comfyui_url: str | None = None,
        comfyui_urls: list[str] | None = None,
        executor: str | Executor = "local",
        executor_options: dict | None = None,
        notebooks_dir: str | Path | None = None,
        notebook_for: Callable[[JobRecord], Path] | None = None,
        quality: bool = True,
        quality_threshold: float | None = None,
        warm: bool = True,
        progress_interval: float = 0.25,
        cancel_grace: float = 1.0,
        execution_timeout: float | None = None,
        kernel_env: dict | None = None,
        job_timeout: float | None = None,
    ):
        self.store = store
        self.bus = bus or EventBus()
        self.outputs_dir = Path(outputs_dir or config.outputs_dir()).resolve()
        self.models = models or config.default_profile()
        self.backend = backend
        # Several ComfyUI servers: one slot each (`comfyui_only`); the first is the default URL.
        self.comfyui_urls = list(comfyui_urls or ([comfyui_url] if comfyui_url else []))
        self.comfyui_url = comfyui_url or (self.comfyui_urls[0] if self.comfyui_urls else None)
        self.notebooks_dir = Path(notebooks_dir or config.notebooks_dir())
        self.notebook_for = notebook_for or default_notebook_for(self.notebooks_dir)
        self.quality = bool(quality)
        self.quality_threshold = quality_threshold
        self.warm = warm
        self.progress_interval = progress_interval
        self.cancel_grace = cancel_grace
        self.execution_timeout = execution_timeout  # per notebook cell (nbclient)
        self.job_timeout = job_timeout  # per phase job, its quality step included: then it fails "Timeout"
        env = {"ANIMENB_MODELS": self.models, "ANIMENB_OUTPUTS": str(self.outputs_dir), **(kernel_env or {})}
        if isinstance(executor, Executor):
            self.executor = executor
        elif executor == "local":
            kernel_kwargs = dict(env=env, cwd=config.repo_root())
            self.executor = LocalExecutor(
                kernels or KernelPool(devices, **kernel_kwargs),
                warm=warm,
                comfyui_urls=self.comfyui_urls,
                kernel_kwargs=kernel_kwargs,
            )
        elif executor == "ray":
            from .ray_executor import RayExecutor  # the optional `ray` extra, imported only here

            self.executor = RayExecutor(
                env=env,
                warm=warm,
                outputs_dir=self.outputs_dir,
                comfyui_urls=self.comfyui_urls,
                **(executor_options or {}),
            )
        else:
            raise ValueError(f"`executor` must be 'local', 'ray' or an Executor, got {executor!r}.")
        self.public_paths = PathScrubber(
            outputs_dir=self.outputs_dir,
            notebooks_dir=self.notebooks_dir,
            home=Path(env.get("ANIMENB_HOME") or config.home_dir()),
        )
        self.drivers: dict[str, JobDriver] = {kind: job_drivers.get(kind)(self) for kind in job_drivers}
        self._priority: collections.deque[str] = collections.deque()  # child jobs, claimed before the queue
        self._turns: dict[str, int] = {}  # caller (`turn_of`) -> when its last job was claimed
        self._turn_clock = itertools.count()
        self.placements = {"placed": 0, "model_hits": 0}  # jobs placed on a slot; of those, on one holding their models
        self.started_at = time.time()
        self.recovered: list[JobRecord] = []
        self._wake = asyncio.Event()  # set: the dispatcher looks at the queue again (a new one per start)
        self._background: list[asyncio.Task] = []
        self._jobs: set[asyncio.Task] = set()
        # Job-end writes run here, off the event loop (`record_end`); one thread keeps them in order.
        self._store_writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="animenb-store-writer")
        # Request-path writes (submit, cancel, claim, progress) run here (`write`): the event loop never waits
        # for the database, and each write waits at most BRIEF_WAIT s for it (then StoreUnavailable: a fast 503).
        self._request_writer = ThreadPoolExecutor(
            max_workers=REQUEST_WRITERS, initializer=wait_briefly, thread_name_prefix="animenb-request-writer"
        )
        self._unrecorded: set[str] = set()
        self._stopping = False
        # The dispatcher's supervision (`_supervise_dispatcher`), for /health.
        self.dispatcher: dict[str, Any] = {"restarts": 0, "failing": False, "last_error": None, "last_error_at": None}

    @property
    def stopping(self) -> bool:
        return self._stopping

    @property
    def slots(self) -> list[Slot]:
        return self.executor.slots

    # -- lifecycle ---------------------------------------------------------------------
    async def start(self) -> None:
        """Recover jobs a dead process left running (each driver, then the store), connect the executor,
        then start its slots and the dispatcher."""
        self._wake = asyncio.Event()
        self.outputs_dir.mkdir(parents=True, exist_ok=True)
        self.recovered = []
        while True:  # a store another process holds locked delays the start; each step is its own transaction
            try:
                for driver in self.drivers.values():  # e.g. orchestration parents settle their children first
                    self.recovered += driver.recover()
                self.recovered += self.store.recover(self._has_output)
                break
            except StoreUnavailable as exc:
                log.warning("restart policy: %s; retrying in 1 s", exc)
                await asyncio.sleep(1.0)
        for job in self.recovered:
            log.warning("job %s was left running by a dead process: now %s", job.id, job.status.value)
            if job.terminal:
                self.finished(job)
        await self.executor.prepare()
        self._background = [
            asyncio.create_task(self._start_slot(s), name=f"animenb-start-{s.device}") for s in self.slots
        ]
        self._background.append(asyncio.create_task(self._supervise_dispatcher(), name="animenb-dispatcher"))

    async def wait_ready(self, timeout: float = 60.0) -> None:
        """Wait until every slot has started (tests and benchmarks)."""
        deadline = time.monotonic() + timeout
        while not all(s.ready for s in self.slots):
            if time.monotonic() > deadline:
                raise TimeoutError("the slots did not start")
            await asyncio.sleep(0.02)

    async def stop(self) -> None:
        """Stop drivers, the dispatcher, running jobs and the executor. A job still running stays `running`
        in the store; the next start applies the restart policy to it (see animenb.store.jobs_sqlite)."""
        self._stopping = True
        for driver in self.drivers.values():
            await driver.stop()
        tasks = [*self._background, *self._jobs]
        for task in tasks:
            task.cancel()
        for task in tasks:
            try:
                await task
            except (asyncio.CancelledError, Exception):
                pass
        await self.executor.close()
        self._store_writer.shutdown(wait=False)
        self._request_writer.shutdown(wait=False)

    def _has_output(self, job: JobRecord) -> bool:
        return any(f != NOTEBOOK_NAME for f in output_files(self.outputs_dir / job.id))

    # -- API used by the server and the drivers ------------------------------------------------
    def submit(
        self,
        request: dict[str, Any],
        *,
        phase: int | None,
        owner: str = "anonymous",
        visibility: str = "public",
        parent_id: str | None = None,
        kind: str = "phase",
        extra: dict[str, Any] | None = None,
        priority: bool = False,
    ) -> JobRecord:
        """Store a queued job (committed on return) and wake the dispatcher.

        `kind` names the job's driver (`job_drivers`); `priority` (orchestration children) lets the job
        start before the jobs already queued.
        """
        job_drivers.get(kind)  # an unknown kind is refused before anything is stored
        job = self.store.create(
            phase=phase,
            parameters=request,
            owner=owner,
            visibility=visibility,
            parent_id=parent_id,
            kind=kind,
            extra=extra,
        )
        self._announce_queued(job, priority)
        return job

    async def submit_request(
        self,
        request: dict[str, Any],
        *,
        phase: int | None,
        owner: str,
        visibility: str,
        kind: str,
        extra: dict[str, Any] | None,
    ) -> JobRecord:
        """A request's `submit`: the store write runs off the event loop (`write`)."""
        job_drivers.get(kind)
        job = await self.write(
            self.store.create,
            phase=phase,
            parameters=request,
            owner=owner,
            visibility=visibility,
            kind=kind,
            extra=extra,
        )
        self._announce_queued(job, False)
        return job

    async def submit_child(
        self,
        request: dict[str, Any],
        *,
        phase: int | None,
        owner: str,
        visibility: str,
        parent_id: str,
        extra: dict[str, Any],
        priority: bool = False,
    ) -> JobRecord:
        """A parent driver's `submit` (an orchestration's attempt, a sweep's cell): stored off the event loop
        like a request's (`write`) and retried until the store takes it, so a database another process holds
        locked delays the parent, never fails it nor stalls the loop. Gives up only when the runner stops."""
        job = await self._until_stored(
            f"job {parent_id}: submitting a child",
            lambda: self.write(
                self.store.create,
                phase=phase,
                parameters=request,
                owner=owner,
                visibility=visibility,
                parent_id=parent_id,
                kind=PHASE_KIND,
                extra=extra,
            ),
        )
        self._announce_queued(job, priority)
        return job

    def _announce_queued(self, job: JobRecord, priority: bool) -> None:
        if priority:
            self._priority.append(job.id)
        self.bus.publish(
            JobQueuedEvent(job_id=job.id, phase=job.phase, queue_position=self.store.queue_position(job.id))
        )
        self._wake.set()

    async def write(self, fn: Callable[..., Any], /, *args, **kwargs) -> Any:
        """`fn(*args, **kwargs)`, a request-path store write, run on a request writer thread; it waits at most
        BRIEF_WAIT s for the database, then raises StoreUnavailable."""
        return await asyncio.get_running_loop().run_in_executor(
            self._request_writer, functools.partial(fn, *args, **kwargs)
        )

    def store_progress(self, job_id: str, progress: dict) -> None:
        """Store a running job's progress off the event loop, best effort: progress also reaches listeners as
        events, and the next write (or the job's end) stores it."""

        def done(future) -> None:
            if not future.cancelled() and isinstance(future.exception(), StoreUnavailable):
                return
            future.result()  # any other error surfaces in the log

        try:
            self._request_writer.submit(self.store.update_progress, job_id, progress).add_done_callback(done)
        except RuntimeError:  # the runner stopped: nothing more is written
            pass

    async def cancel(self, job_id: str) -> JobRecord:
        """Queued: cancelled at once. Running: its driver stops it; returns once it has stopped (or ~3 s)."""
        job = self.store.get(job_id)
        if job.status is JobStatus.QUEUED:
            try:
                job = await self.write(
                    self.store.transition,
                    job_id,
                    JobStatus.CANCELLED,
                    expected=[JobStatus.QUEUED],
                    error=JobError("Cancelled", "Cancelled before it started."),
                )
                self.finished(job)
                return job
            except InvalidTransitionError:
                job = self.store.get(job_id)  # claimed meanwhile: cancel it as a running job
        driver = self.drivers.get(job.kind)
        if job.status is not JobStatus.RUNNING or driver is None:
            return job
        # Claimed, but its driver takes it only when the job's task first runs: wait for that, else this
        # cancel would be lost and the job would run on.
        deadline = time.monotonic() + CLAIM_TO_START_WAIT
        while job_id not in driver.active():
            if job.status is not JobStatus.RUNNING or time.monotonic() > deadline:
                return job
            await asyncio.sleep(0.01)
            job = self.store.get(job_id)
        return await driver.cancel(job)

    async def record_end(self, job_id: str, status: JobStatus, **fields) -> JobRecord:
        """Write a job's end (`store.transition(job_id, status, **fields)`) off the event loop, retried until
        it lands: its outputs are on disk, so a store hiccup (a lock held by another process, a full disk)
        must delay the record, never lose it. Returns the stored record (as it is, if the job had ended
        already). Gives up only when the runner stops: the restart policy then settles the job."""
        loop = asyncio.get_running_loop()
        self._unrecorded.add(job_id)
        try:
            return await self._until_stored(
                f"job {job_id}: recording its end ({status.value})",
                lambda: loop.run_in_executor(self._store_writer, self._transition_or_get, job_id, status, fields),
            )
        finally:
            self._unrecorded.discard(job_id)

    async def _until_stored(self, what: str, write: Callable[[], Awaitable[T]]) -> T:
        """`await write()` until it does not raise StoreUnavailable, pausing longer after each failure (up to
        RETRY_MAX_PAUSE s); raises it only once the runner stops."""
        failures = 0
        while True:
            try:
                return await write()
            except StoreUnavailable as exc:
                failures += 1
                if self._stopping:
                    raise
                pause = min(RETRY_MAX_PAUSE, 0.1 * 2 ** min(failures, 8))
                log.warning("%s failed %d time(s): %s; retrying in %.1f s", what, failures, exc, pause)
                await asyncio.sleep(pause)

    def _transition_or_get(self, job_id: str, status: JobStatus, fields: dict) -> JobRecord:
        try:
            return self.store.transition(job_id, status, **fields)
        except InvalidTransitionError:
            return self.store.get(job_id)

    def finished(self, job: JobRecord, duration: float | None = None) -> None:
        """Publish `job`'s terminal event."""
        self.bus.publish(JobFinishedEvent.build(job, duration=duration))

    def requeued(self, job: JobRecord) -> None:
        """`job` is queued again (its process died before it wrote anything): announce it, wake the dispatcher."""
        self.bus.publish(
            JobQueuedEvent(job_id=job.id, phase=job.phase, queue_position=self.store.queue_position(job.id))
        )
        self._wake.set()

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
        """Whether a phase job is running on a slot now (its notebook or its quality step)."""
        return bool(self.drivers[PHASE_KIND].active())

    def health(self, stall_after: float = 120.0) -> dict:
        """For /health: `warm`, `kernels` (each slot's description), `generating`, `scored` (phase jobs get
        a quality score), `stalled` (no kernel ready `stall_after` s after start), `dispatcher` (its
        supervision) and `unrecorded_ends` (jobs that ended whose end the store has not taken yet)."""
        slots = [{k: v for k, v in s.describe().items() if k not in ADMIN_ONLY_SLOT_FIELDS} for s in self.slots]
        stalled = time.time() - self.started_at > stall_after and not any(s["ready"] for s in slots)
        return {
            "warm": self.warm,
            "kernels": slots,
            "generating": self.generating(),
            "scored": self.quality,
            "stalled": stalled,
            "executor": self.describe_executor(),
            "dispatcher": dict(self.dispatcher),
            "unrecorded_ends": len(self._unrecorded),
        }

    def describe_executor(self) -> dict:
        """The executor (kind; for Ray the cluster) and how placement went."""
        return {**self.executor.describe(), "placements": dict(self.placements)}

    def queue_length(self) -> int:
        return self.store.count(status=JobStatus.QUEUED)

    def describe(self) -> dict:
        drivers = {kind: driver.describe() for kind, driver in self.drivers.items()}
        return {
            "warm": self.warm,
            "kernels": [s.describe() for s in self.slots],
            "drivers": drivers,
            "models": self.models,
            "backend": self.backend,
        }

    # -- dispatching -------------------------------------------------------------------------
    async def _start_slot(self, slot: Slot) -> None:
        await start_until_up(slot.start, given_up=lambda: self._stopping, what=f"slot {slot.device}")
        self._wake.set()

    def _candidates(self) -> list[JobRecord]:
        """Priority jobs still queued (oldest first); then each caller's oldest queued job, the caller whose
        last turn is oldest first (round-robin: one caller's many jobs delay another's next job by at most
        one job per slot); then the oldest queued jobs of the store (for a slot none of those fit)."""
        jobs: list[JobRecord] = []
        seen: set[str] = set()
        for job_id in list(self._priority):
            try:
                job = self.store.get(job_id)
            except JobNotFoundError:
                job = None
            if job is None or job.status is not JobStatus.QUEUED:
                self._priority.remove(job_id)  # cancelled, or claimed meanwhile
                continue
            jobs.append(job)
            seen.add(job_id)
        heads = sorted(self.store.queued_heads(64), key=lambda j: (self._turns.get(turn_of(j), -1), j.seq))
        for job in heads + self.store.next_queued(64):
            if job.id not in seen:
                jobs.append(job)
                seen.add(job.id)
        return jobs

    async def _dispatch_next(self) -> bool:
        """Claim the first candidate job an idle slot can take and start it; False when none could start."""
        idle = [s for s in self.slots if s.ready and not s.busy]
        if not idle:
            return False
        for job in self._candidates():
            driver = self.drivers.get(job.kind)
            slot, hit = None, False
            if driver is not None and driver.uses_slot:
                slot, hit = place(
                    job, idle, models=self.models, backend=self.backend, several_comfyui=len(self.comfyui_urls) > 1
                )
                if slot is None:
                    continue  # e.g. a ComfyUI job while only diffusers slots are idle
            try:
                job = await self.write(
                    self.store.transition,
                    job.id,
                    JobStatus.RUNNING,
                    expected=[JobStatus.QUEUED],
                    worker=worker_name(slot.device if slot else (idle[0].device)),
                )
            except (InvalidTransitionError, JobNotFoundError):
                return True  # cancelled meanwhile: look again
            if job.id in self._priority:
                self._priority.remove(job.id)
            self._turns[turn_of(job)] = next(self._turn_clock)
            if slot is not None:
                slot.busy = True
                self.placements["placed"] += 1
                self.placements["model_hits"] += int(hit)
            task = asyncio.get_running_loop().create_task(self._run(job, driver, slot), name=f"animenb-job-{job.id}")
            self._jobs.add(task)
            task.add_done_callback(self._jobs.discard)
            return True
        return False

    async def _supervise_dispatcher(self) -> None:
        """Run the dispatcher; when it crashes (e.g. the store cannot write a claim), log it, report it in
        /health (`dispatcher`) and restart it after a pause that grows while it keeps failing."""
        failures = 0
        while not self._stopping:
            try:
                await self._dispatch()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                failures += 1
                pause = min(DISPATCHER_MAX_PAUSE, 0.1 * 2 ** min(failures, 8))
                if isinstance(exc, StoreUnavailable):
                    log.warning("dispatcher: %s; restarting in %.1f s", exc, pause)
                else:
                    log.exception("dispatcher crashed; restarting in %.1f s", pause)
                self.dispatcher.update(
                    restarts=self.dispatcher["restarts"] + 1,
                    failing=True,
                    last_error=f"{type(exc).__name__}: {exc}",
                    last_error_at=time.time(),
                )
                await asyncio.sleep(pause)

    async def _dispatch(self) -> None:
        while not self._stopping:
            self._wake.clear()
            started = await self._dispatch_next()
            self.dispatcher["failing"] = False
            if started:
                continue
            # Slots that are still starting (or being replaced) wake nobody: look again shortly.
            timeout = None if all(s.ready for s in self.slots) else 0.5
            try:
                await asyncio.wait_for(self._wake.wait(), timeout)
            except asyncio.TimeoutError:
                pass

    async def _run(self, job: JobRecord, driver: JobDriver | None, slot: Slot | None) -> None:
        try:
            if driver is None:  # a kind this version does not know (an older or newer database)
                self.finished(
                    await self.record_end(
                        job.id,
                        JobStatus.FAILED,
                        error=JobError(
                            "UnknownJobKind", f"No driver for job kind {job.kind!r}; known: {', '.join(self.drivers)}."
                        ),
                    )
                )
                return
            await driver.start(job, slot)
        except asyncio.CancelledError:
            raise
        except Exception:  # never let one job take the dispatcher down
            log.exception("job %s: runner error", job.id)
        finally:
            if slot is not None:
                slot.busy = False
            self._wake.set()
