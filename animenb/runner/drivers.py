"""Job kinds and the drivers that run them: the runner's registry, like papermill's engine registry.

A job's `kind` names its driver. The runner claims queued jobs of every kind the same way (when a slot of
its executor is idle, priority jobs first) and hands each to its kind's driver:

    "phase"          `animenb.runner.phase_jobs.PhaseJobDriver`: the phase notebook, scored by the quality
                     gate in the same kernel, on the slot the job was placed on
    "orchestration"  `animenb.runner.orchestration.OrchestrationDriver`: a task on the event loop that
                     submits one child job per chain attempt (it holds no slot while its children run)
    "sweep"          `animenb.runner.sweep_jobs.SweepDriver`: the same for one child job per cell of a sweep

A driver sees the runner only through `JobHost` (what it may use of it) and never imports the runner, so
the modules read top to bottom: runner -> drivers -> events / store.
"""

from __future__ import annotations

import abc
from pathlib import Path
from typing import Any, Callable, ClassVar, Iterator, Protocol

from animenb.store import JobRecord, JobStatus, JobStoreBase

from .events import EventBus
from .executors import Slot
from .public_paths import PathScrubber


def running_jobs(store: JobStoreBase) -> list[JobRecord]:
    """Every job the store has as `running` (what a restart policy looks at)."""
    jobs, cursor = [], None
    while True:
        page, cursor = store.list(status="running", limit=500, cursor=cursor)
        jobs += page
        if cursor is None:
            return jobs


class JobHost(Protocol):
    """What a driver may use of the runner: its store, bus and settings, submitting child jobs, cancelling
    and announcing the end of a job. Settings are read when used, so a change applies to the next job."""

    store: JobStoreBase
    bus: EventBus
    outputs_dir: Path
    progress_interval: float  # seconds between progress writes to the store
    cancel_grace: float  # seconds between a cancel's interrupts
    models: str  # the model profile every job runs with
    backend: str | None
    comfyui_url: str | None
    notebook_for: Callable[[JobRecord], Path]
    notebooks_dir: Path  # the phase notebooks and the reports (a sweep's comparison notebook)
    quality: bool  # phase jobs are scored (animenb.quality.job_step)
    quality_threshold: float | None
    warm: bool
    execution_timeout: float | None
    job_timeout: float | None  # seconds a phase job may run, its scoring included (None: no limit)
    public_paths: PathScrubber  # what a stored error or a saved notebook may show of the paths

    @property
    def stopping(self) -> bool: ...

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
        """Store a parent's queued child phase job off the event loop, retried until the store takes it;
        `priority` lets it start before the jobs already queued (an orchestration's next attempt)."""

    async def cancel(self, job_id: str) -> JobRecord: ...

    def store_progress(self, job_id: str, progress: dict) -> None:
        """Store a running job's progress off the event loop, best effort."""

    async def record_end(self, job_id: str, status: JobStatus, **fields) -> JobRecord:
        """Store a job's end off the event loop, retried until the store takes it; returns the stored record."""

    def finished(self, job: JobRecord, duration: float | None = None) -> None:
        """Publish `job`'s terminal event (`JobFinishedEvent.build`)."""

    def requeued(self, job: JobRecord) -> None:
        """`job` went back to the queue (its process died before it wrote anything): announce it, wake the
        dispatcher."""


class JobDriver(abc.ABC):
    """Runs the jobs of one kind. The runner makes one driver per kind and calls, on the event loop:

    `recover()` once at start, before the store's own restart policy (`JobStoreBase.recover`): settle
    this kind's jobs a dead process left running, returning the jobs it changed;
    `start(job, slot)` for every job of this kind the runner claimed (already `running` in the store):
    run it to its end on `slot` (`animenb.runner.executors`), or start driving it and return; kinds with
    `uses_slot = False` get `slot=None` and never hold one (an orchestration parent only waits);
    `cancel(job)` for a running job of this kind; `live_progress(job_id)`, `children(job)` and
    `describe()` for the status bodies and /health; `stop()` when the runner stops (a job still running
    stays `running` in the store: the next start's `recover()` decides).
    """

    kind: ClassVar[str]
    uses_slot: ClassVar[bool] = True

    def __init__(self, host: JobHost):
        self.host = host

    def recover(self) -> list[JobRecord]:
        return []

    @abc.abstractmethod
    async def start(self, job: JobRecord, slot: Slot | None) -> None:
        """Run (or start driving) the claimed `job`; `slot` is the driver's to use until it returns."""

    @abc.abstractmethod
    async def cancel(self, job: JobRecord) -> JobRecord:
        """Stop the running `job`; returns its record once it stopped (or the driver gave up waiting)."""

    def live_progress(self, job_id: str) -> dict | None:
        """The newest progress of a job running here (fresher than the store's, which is throttled)."""
        return None

    def children(self, job: JobRecord) -> list[dict] | None:
        """The child jobs of `job` as status rows; None for kinds without children."""
        return None

    def active(self) -> list[str]:
        """Ids of the jobs this driver is running now."""
        return []

    def describe(self) -> dict:
        return {"active": sorted(self.active())}

    async def stop(self) -> None:
        pass


class DriverRegistry:
    """kind -> driver class. `register` replaces an existing kind (tests may swap a driver in)."""

    def __init__(self):
        self._drivers: dict[str, type[JobDriver]] = {}

    def register(self, kind: str, driver: type[JobDriver]) -> None:
        if not (isinstance(driver, type) and issubclass(driver, JobDriver)):
            raise TypeError(f"`driver` must be a JobDriver subclass, got {driver!r}.")
        self._drivers[kind] = driver

    def get(self, kind: str) -> type[JobDriver]:
        try:
            return self._drivers[kind]
        except KeyError:
            raise ValueError(f"`kind` must be one of {', '.join(sorted(self._drivers))}, got {kind!r}.") from None

    def __iter__(self) -> Iterator[str]:
        return iter(self._drivers)

    def __contains__(self, kind: object) -> bool:
        return kind in self._drivers


def output_files(out_dir: Path) -> list[str]:
    """Relative paths of the files a job wrote (hidden files excluded)."""
    if not out_dir.is_dir():
        return []
    return sorted(
        p.relative_to(out_dir).as_posix()
        for p in out_dir.rglob("*")
        if p.is_file() and not any(part.startswith(".") for part in p.relative_to(out_dir).parts)
    )
