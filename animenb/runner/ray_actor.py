"""`KernelActor`: the part of the Ray executor that runs on a worker node, one per slot (`ray.remote`).

It owns a `WarmKernel` on its node and runs a job's notebooks on it with the same engine and notebooks
as a local slot (`run_on_kernel`), so the kernel's model cache stays warm between jobs. The server's
side (`RaySlot`, `RayExecutor`) is `animenb.runner.ray_executor`; the protocol between them:

    start() / describe()      start the kernel; facts about the actor (node, GPUs, pids, roots)
    run(job_id, ...)          one notebook; returns {"error", "files", "events"}
    progress(job_id, after)   long-poll the job's progress payloads from index `after` on
    interrupt(job_id)         cancel: SIGINT to the kernel
    release(job_id, reset)    the server recorded the job: delete its scratch files, reset the kernel
    shutdown()

Outputs go to a scratch folder per actor in the node's temp dir (returned with each `run`: files new
or changed since the job's previous notebook) unless the server's outputs folder is shared; a new
actor deletes the scratch folders of actors on its node whose process is gone.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import signal
import sys
import tempfile
import threading
from pathlib import Path

from animenb.atomic import is_partial
from animenb.runner.public_paths import CHECKOUT

from .executors import run_on_kernel
from .kernels import WarmKernel

SCRATCH_PREFIXES = ("animenb-ray-", "animenb-ray-notebooks-")  # + the actor's pid, in the node's temp dir


class _JobState:
    """What an actor keeps of one job between its notebooks: progress events and the cancel flag."""

    def __init__(self):
        self.events: list[dict] = []
        self.changed = threading.Condition()
        self.cancel_event = threading.Event()
        self.sent: dict[str, tuple[int, int]] = {}  # relative path -> (size, mtime_ns) already returned


def sweep_dead_scratch(temp_dir: Path) -> list[Path]:
    """Delete the scratch folders of actors whose process is gone (returns them); a live pid's are kept."""
    removed = []
    for path in temp_dir.iterdir() if temp_dir.is_dir() else []:
        prefix = next((p for p in sorted(SCRATCH_PREFIXES, key=len, reverse=True) if path.name.startswith(p)), None)
        pid = path.name[len(prefix) :] if prefix else ""
        if not pid.isdigit() or not path.is_dir():
            continue
        try:
            os.kill(int(pid), 0)
            continue  # alive (or another user's): not ours to delete
        except ProcessLookupError:
            pass
        except OSError:
            continue
        shutil.rmtree(path, ignore_errors=True)
        removed.append(path)
    return removed


class KernelActor:
    """Runs inside a Ray worker process (`ray.remote(KernelActor)`): one warm kernel and its model cache.

    Methods are called concurrently (`max_concurrency`): `run` blocks while a notebook runs on the kernel
    thread, `progress` long-polls, `interrupt` and `describe` answer at once."""

    def __init__(self, *, env: dict, warm: bool = True, shared_outputs: str | None = None, label: str = "slot"):
        self.warm = warm
        self.shared = shared_outputs is not None
        self.swept = [str(p) for p in sweep_dead_scratch(Path(tempfile.gettempdir()))]
        scratch = Path(tempfile.gettempdir()) / f"animenb-ray-{os.getpid()}"
        self.outputs_root = (scratch if shared_outputs is None else Path(shared_outputs)).resolve()
        self.outputs_root.mkdir(parents=True, exist_ok=True)
        self.notebooks_root = Path(tempfile.gettempdir()) / f"animenb-ray-notebooks-{os.getpid()}"
        env = {**env, "ANIMENB_OUTPUTS": str(self.outputs_root)}
        self.kernel = WarmKernel("ray", env=env, cwd=CHECKOUT)
        self.label = label
        self.jobs: dict[str, _JobState] = {}

    # -- facts --------------------------------------------------------------------------
    def describe(self) -> dict:
        import ray

        ctx = ray.get_runtime_context()
        return {
            "pid": os.getpid(),
            "kernel_pid": self.kernel.pid(),
            "node_ip": ray.util.get_node_ip_address(),
            "node_id": ctx.get_node_id(),
            "actor_id": ctx.get_actor_id(),
            "gpu_ids": [str(g) for g in ray.get_gpu_ids()],
            "ready": self.kernel.ready,
            "outputs_root": str(self.outputs_root),
            "shared_outputs": self.shared,
            "swept_scratch": self.swept,
            "roots": {"checkout": str(CHECKOUT), "python": sys.prefix},
        }

    def start(self) -> dict:
        # Ray's worker threads block SIGINT, and a child inherits its thread's signal mask: unblock it on
        # the thread that starts (and restarts) the kernel, or interrupts never reach the kernel.
        self.kernel.thread.submit(signal.pthread_sigmask, signal.SIG_UNBLOCK, {signal.SIGINT}).result()
        self.kernel.thread.submit(self.kernel.start).result()
        return self.describe()

    # -- a job's notebooks ------------------------------------------------------------------
    def run(
        self,
        job_id: str,
        notebook_path: str,
        notebook_text: str,
        output_name: str,
        parameters: dict,
        execution_timeout: float | None,
        cancelled: bool,
        extra_cells: tuple[str, ...] = (),
    ) -> dict:
        """Run one notebook of `job_id`; returns {"error": None or a description, "files": {path: bytes}}."""
        state = self.jobs.setdefault(job_id, _JobState())
        if cancelled:
            state.cancel_event.set()
        out_dir = self.outputs_root / job_id
        out_dir.mkdir(parents=True, exist_ok=True)
        notebook = self._notebook(notebook_path, notebook_text)
        error = None
        try:
            self.kernel.thread.submit(
                self._execute, state, notebook, out_dir / output_name, parameters, execution_timeout, tuple(extra_cells)
            ).result()
        except Exception as exc:
            error = describe_error(exc)
        files = {} if self.shared else self._changed_files(state, out_dir)
        with state.changed:
            state.changed.notify_all()
        return {"error": error, "files": files, "events": len(state.events)}

    def _notebook(self, path: str, text: str) -> str:
        """The server's notebook path when this node has the same file (same checkout), else a copy."""
        try:
            if Path(path).read_text(encoding="utf-8") == text:
                return path
        except OSError:
            pass
        copy = self.notebooks_root / hashlib.sha256(text.encode()).hexdigest()[:16] / Path(path).name
        copy.parent.mkdir(parents=True, exist_ok=True)
        copy.write_text(text, encoding="utf-8")
        return str(copy)

    def _execute(
        self,
        state: _JobState,
        notebook: str,
        output: Path,
        parameters: dict,
        execution_timeout: float | None,
        extra_cells: tuple[str, ...],
    ) -> None:
        def on_progress(payload: dict) -> None:
            with state.changed:
                state.events.append(payload)
                state.changed.notify_all()

        run_on_kernel(
            self.kernel,
            notebook,
            output,
            parameters,
            warm=self.warm,
            on_progress=on_progress,
            cancel_event=state.cancel_event,
            execution_timeout=execution_timeout,
            extra_cells=extra_cells,
            label=f"the kernel of {self.label}",
        )

    def _changed_files(self, state: _JobState, out_dir: Path) -> dict[str, bytes]:
        files = {}
        for path in sorted(out_dir.rglob("*")):
            if not path.is_file() or is_partial(path.name):
                continue
            rel = path.relative_to(out_dir).as_posix()
            stat = path.stat()
            stamp = (stat.st_size, stat.st_mtime_ns)
            if state.sent.get(rel) != stamp:
                files[rel] = path.read_bytes()
                state.sent[rel] = stamp
        return files

    def progress(self, job_id: str, after: int, timeout: float) -> list[dict]:
        """Progress payloads of `job_id` from index `after` on; waits up to `timeout` s for the first one."""
        state = self.jobs.setdefault(job_id, _JobState())
        with state.changed:
            if len(state.events) <= after and timeout > 0:
                state.changed.wait(timeout)
            return state.events[after:]

    def interrupt(self, job_id: str) -> bool:
        """Cancel: no further cell starts, and the running one is interrupted (SIGINT, as a local kernel)."""
        self.jobs.setdefault(job_id, _JobState()).cancel_event.set()
        pid = self.kernel.pid()
        if pid is None:
            return False
        try:
            os.kill(pid, signal.SIGINT)
            return True
        except OSError:
            return False

    def release(self, job_id: str, reset: bool) -> None:
        """The server recorded the job: forget it, delete its scratch files and, when `reset`, reset the kernel."""
        self.jobs.pop(job_id, None)
        if not self.shared:
            shutil.rmtree(self.outputs_root / job_id, ignore_errors=True)
        if reset:
            self.kernel.thread.submit(self.kernel.reset_after_job)

    def shutdown(self) -> None:
        self.kernel.thread.submit(self.kernel.shutdown).result(timeout=15)


def describe_error(exc: BaseException) -> dict:
    """`exc` as plain data for the server (`ray_executor` raises it again there)."""
    from nbclient.exceptions import DeadKernelError
    from papermill.exceptions import PapermillExecutionError

    if isinstance(exc, PapermillExecutionError):
        return {
            "kind": "execution",
            "cell_index": exc.cell_index,
            "exec_count": exc.exec_count,
            "source": exc.source,
            "ename": exc.ename,
            "evalue": exc.evalue,
            "traceback": exc.traceback,
        }
    if isinstance(exc, DeadKernelError):
        return {"kind": "dead_kernel", "message": str(exc)}
    return {"kind": "other", "name": type(exc).__name__, "message": str(exc)}
