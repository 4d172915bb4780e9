"""Executors: where a claimed job's notebooks run. The seam between the job queue and the kernels.

The runner claims jobs from the store and places each on an idle `Slot` of its executor; the job's
driver then runs its notebooks through the slot:

    LocalExecutor   (default) one warm ipykernel per local device in this process (`KernelPool`)
    RayExecutor     (`animenb.runner.ray_executor`, optional extra `ray`) one Ray actor per GPU of a
                    cluster, each owning a warm kernel and its model cache (`animenb.runner.ray_actor`)

A slot runs one job at a time. Its contract, used by `PhaseJobDriver`:

    job_dir(job_id, out_dir)   the `output_dir` the notebook gets (the server's own outputs/<job_id>
                               here; a Ray actor's scratch folder when outputs travel back)
    await run_notebook(run)    run one notebook of the job; files it wrote are in `out_dir` when this
                               returns or raises; `run.on_progress(payload)` is called on the event loop
    await interrupt()          stop the running cell (cancel)
    await kill()               end the job's process (cancel escalation); the slot replaces it
    after_job(job_id, ...)     the job is recorded: count it, note the models it left loaded and, warm,
                               reset the kernel off the next job's path (`Slot`; a slot's own part
                               is `release`)

Errors from `run_notebook`: papermill's / nbclient's own (`PapermillExecutionError`, `DeadKernelError`:
the kernel died and was replaced), or `SlotLost` when the process that owned the kernel (a Ray actor,
its node) died: the runner applies the restart policy (re-queued once if the job wrote nothing, else
`lost` with the reason).

Placement (`place`): a job needs a slot of its kind (`comfyui_only` slots, one per ComfyUI URL when
several are configured, take only ComfyUI-backend jobs; the others take the rest); among the idle
ones, one that already holds the job's models (`model_key`) wins, then one that holds nothing yet
(so another slot's cache is not displaced), then the first.
"""

from __future__ import annotations

import abc
import asyncio
import logging
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from animenb.store import JobRecord

from .kernels import KernelPool, WarmKernel

log = logging.getLogger(__name__)


class JobCancelledBeforeStart(RuntimeError):
    """The job was cancelled before its notebook started."""


class SlotLost(RuntimeError):
    """The process that owned the slot's kernel died mid-job (a Ray actor or its node); the slot is replaced."""


@dataclass
class NotebookRun:
    """One notebook of a job, as a slot runs it."""

    job_id: str
    notebook: Path
    output_name: str  # saved as <out_dir>/<output_name>
    out_dir: Path  # the server's outputs/<job_id>/
    parameters: dict[str, Any]  # papermill parameters (output_dir already the slot's job_dir)
    on_progress: Callable[[dict], None]  # called on the event loop with each progress payload
    cancel_event: threading.Event = field(default_factory=threading.Event)
    execution_timeout: float | None = None
    extra_cells: tuple[str, ...] = ()  # code cells run after the notebook's own (the engine's `extra_cells`)
    public_text: Callable[[str], str] | None = None  # the saved notebook's text as readers may see it


def model_key(job: JobRecord, models: str) -> str | None:
    """What a job leaves loaded in a kernel's model cache: its profile and its phase's pipeline."""
    if job.phase is None:
        return None
    return f"{job.parameters.get('models') or models}/phase{job.phase}"


def job_backend(job: JobRecord, default: str | None) -> str:
    return str(job.parameters.get("backend") or default or "diffusers")


async def start_until_up(
    start: Callable[[], Any], *, given_up: Callable[[], bool], what: str, retry_seconds: float = 5.0
) -> bool:
    """Await `start()` until it succeeds (True), retrying every `retry_seconds` after logging the error,
    or until `given_up()` (False): how a slot comes up, and how a lost one is replaced."""
    while not given_up():
        try:
            await start()
            return True
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("starting %s failed; retrying in %g s", what, retry_seconds)
            await asyncio.sleep(retry_seconds)
    return False


class Slot(abc.ABC):
    """One place where one job at a time runs (module docstring)."""

    device: str
    comfyui_url: str | None = None  # the ComfyUI server this slot's ComfyUI jobs use (None: the server's)
    comfyui_only: bool = False  # the slot of one of several ComfyUI URLs: takes only ComfyUI jobs
    saves_public_notebook = False  # whether the notebook it saves already went through `run.public_text`

    def __init__(self, *, warm: bool = True):
        self.warm = warm  # reset the kernel between jobs (False: restart it before each)
        self.busy = False  # a job holds the slot (reserved by the runner)
        self.jobs_run = 0
        self.loaded: list[str] = []  # model keys of the jobs that ran here, most recent last

    @property
    @abc.abstractmethod
    def ready(self) -> bool:
        """Started and able to take a job."""

    @abc.abstractmethod
    async def start(self) -> None:
        """Start the kernel (and its process); raises when it cannot."""

    def job_dir(self, job_id: str, out_dir: Path) -> Path:
        return out_dir

    @abc.abstractmethod
    async def run_notebook(self, run: NotebookRun) -> None: ...

    @abc.abstractmethod
    async def interrupt(self) -> bool: ...

    @abc.abstractmethod
    async def kill(self) -> None: ...

    def after_job(self, job_id: str, *, warm: bool, key: str | None = None, succeeded: bool = False) -> None:
        """The job is recorded: count it, note the models it left loaded (`key`, when it succeeded), and
        release the kernel, reset now when the slot is warm and `warm` (False while the server stops)."""
        self.jobs_run += 1
        if key and succeeded:
            if key in self.loaded:
                self.loaded.remove(key)
            self.loaded.append(key)
        self.release(job_id, reset=self.warm and warm)

    @abc.abstractmethod
    def release(self, job_id: str, *, reset: bool) -> None:
        """Forget `job_id` on the kernel's side; when `reset`, reset the kernel off the next job's path."""

    @abc.abstractmethod
    async def close(self) -> None: ...

    def describe(self) -> dict:
        info = {
            "device": self.device,
            "ready": self.ready,
            "busy": self.busy,
            "jobs_run": self.jobs_run,
            "loaded": list(self.loaded),
        }
        if self.comfyui_url:
            info["comfyui_url"] = self.comfyui_url
        return info


def run_on_kernel(
    kernel: WarmKernel,
    notebook: str,
    output: Path,
    parameters: dict[str, Any],
    *,
    warm: bool,
    on_progress: Callable[[dict], None],
    cancel_event: threading.Event,
    execution_timeout: float | None,
    extra_cells: tuple[str, ...],
    label: str,
    replace_dead: Callable[[], bool] = lambda: True,
    public_text: Callable[[str], str] | None = None,
) -> None:
    """On `kernel`'s own thread: reset it (or, cold, restart it) and run `notebook` with the animenb engine
    (`animenb.runner.engine`), saved to `output` once it ends, through `public_text` when given
    (`animenb.runner.job_notebook`). A kernel that died is replaced before the error goes on (unless
    `replace_dead()` says no, e.g. while stopping). Shared by the local slots and the Ray actors."""
    from nbclient.exceptions import DeadKernelError

    from .job_notebook import execute_notebook

    if cancel_event.is_set():
        raise JobCancelledBeforeStart("cancelled before start")
    kernel.busy = True
    try:
        if warm:
            kernel.ensure_clean()  # usually already reset right after the previous job
        else:
            kernel.restart()
        kernel.clean = False
        execute_notebook(
            notebook,
            output,
            parameters,
            public_text=public_text,
            warm_kernel=kernel,
            progress_callback=on_progress,
            cancel_event=cancel_event,
            execution_timeout=execution_timeout,
            extra_cells=extra_cells,
        )
    except DeadKernelError:
        if not replace_dead():
            raise
        log.warning("%s died; starting a new one", label)
        try:
            kernel.restart()
        except Exception:
            log.exception("restarting %s failed", label)
        raise
    finally:
        kernel.busy = False


class LocalSlot(Slot):
    """A `WarmKernel` of this process. Papermill runs on the kernel's own thread (`kernel.thread`):
    never `asyncio.to_thread`, never papermill's `cwd=` (see `animenb.runner.kernels`)."""

    saves_public_notebook = True

    def __init__(
        self, kernel: WarmKernel, *, warm: bool = True, comfyui_url: str | None = None, comfyui_only: bool = False
    ):
        super().__init__(warm=warm)
        self.kernel = kernel
        self.device = kernel.device
        self.comfyui_url = comfyui_url
        self.comfyui_only = comfyui_only
        self.stopping = False

    @property
    def ready(self) -> bool:
        return self.kernel.ready

    async def start(self) -> None:
        await asyncio.get_running_loop().run_in_executor(self.kernel.thread, self.kernel.start)

    async def run_notebook(self, run: NotebookRun) -> None:
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(self.kernel.thread, self._execute, run, loop)

    def _execute(self, run: NotebookRun, loop: asyncio.AbstractEventLoop) -> None:
        """Kernel thread: run one notebook of the job on this slot's kernel."""

        def on_progress(payload: dict) -> None:
            loop.call_soon_threadsafe(run.on_progress, payload)

        run_on_kernel(
            self.kernel,
            str(run.notebook),
            run.out_dir / run.output_name,
            run.parameters,
            warm=self.warm,
            on_progress=on_progress,
            cancel_event=run.cancel_event,
            execution_timeout=run.execution_timeout,
            extra_cells=run.extra_cells,
            replace_dead=lambda: not self.stopping,
            label=f"job {run.job_id}: kernel {self.kernel.device}",
            public_text=run.public_text,
        )

    async def interrupt(self) -> bool:
        return await self.kernel.interrupt()

    async def kill(self) -> None:
        await asyncio.get_running_loop().run_in_executor(None, self.kernel.kill)  # waits for the process to exit

    def release(self, job_id: str, *, reset: bool) -> None:
        if reset and not self.stopping:  # on the kernel thread, queued before the next job's notebook
            asyncio.get_running_loop().run_in_executor(self.kernel.thread, self.kernel.reset_after_job)

    async def close(self) -> None:
        self.stopping = True
        if self.kernel.busy:  # a job still runs on the kernel thread: end it so the thread frees up
            await self.kill()

    def describe(self) -> dict:
        return {**self.kernel.describe(), **super().describe()}


class Executor(abc.ABC):
    """A set of slots and how they start and stop."""

    kind: str

    def __init__(self):
        self.slots: list[Slot] = []

    async def prepare(self) -> None:
        """Connect to what runs the slots (a cluster); called once before the slots start."""

    async def close(self) -> None:
        for slot in self.slots:
            await slot.close()

    def describe(self) -> dict:
        return {"kind": self.kind}


class LocalExecutor(Executor):
    """Warm kernels in this process: one per device (`KernelPool`), plus one per ComfyUI URL when several
    are given (`comfyui_only`: generation happens in ComfyUI, so these kernels need no device)."""

    kind = "local"

    def __init__(
        self,
        kernels: KernelPool,
        *,
        warm: bool = True,
        comfyui_urls: list[str] | None = None,
        kernel_kwargs: dict | None = None,
    ):
        super().__init__()
        self.kernels = kernels
        self.slots = [LocalSlot(k, warm=warm) for k in kernels]
        urls = list(comfyui_urls or [])
        if len(urls) > 1:
            for i, url in enumerate(urls):
                kernel = WarmKernel(f"comfyui{i}", **(kernel_kwargs or {}))
                self.kernels.kernels.append(kernel)
                self.slots.append(LocalSlot(kernel, warm=warm, comfyui_url=url, comfyui_only=True))

    async def close(self) -> None:
        await super().close()
        await asyncio.get_running_loop().run_in_executor(None, self.kernels.close)


def eligible(slot: Slot, job: JobRecord, backend: str | None, several_comfyui: bool) -> bool:
    if not several_comfyui:
        return True
    return slot.comfyui_only == (job_backend(job, backend) == "comfyui")


def place(
    job: JobRecord, idle: list[Slot], *, models: str, backend: str | None, several_comfyui: bool
) -> tuple[Slot | None, bool]:
    """(the idle slot for `job` or None, whether it already held the job's models) (module docstring)."""
    candidates = [s for s in idle if eligible(s, job, backend, several_comfyui)]
    if not candidates:
        return None, False
    key = model_key(job, models)
    if key is not None:
        for slot in candidates:
            if key in slot.loaded:
                return slot, True
        for slot in candidates:
            if not slot.loaded:
                return slot, False
    return candidates[0], False
