"""Warm ipykernels: one per device, one job at a time, namespace reset between jobs.

A `WarmKernel` owns a jupyter_client `AsyncKernelManager` and a long-lived
`AsyncKernelClient`. Every call that touches the client's zmq sockets runs on the
kernel's own thread (`kernel.thread`, a one-thread pool): jupyter_core's `run_sync`
keeps one event loop per thread and the client's sockets belong to that loop, so the
same thread must start the kernel, reset it and run papermill on it. Only
`interrupt()` is called from elsewhere (it sends SIGINT to the kernel process).

Between jobs `reset()` deletes every user-namespace name added since the baseline taken
at start-up (cheap, ~1 ms; `%reset -f` costs ~44 ms) and drops the output cache. The runner
resets right after a job ends (`reset_after_job`, queued on the kernel thread while the server
records the outcome), so the next job finds the kernel `clean` and skips the round trip;
`ensure_clean()` resets only when that has not happened.
Imported modules, and so the module-level model cache in `sys.modules`, survive.
A dead kernel is replaced by a fresh one (`restart()`); the models reload there. So is a kernel whose
reset fails, e.g. because a cancel's interrupt landed inside an import or a model load
(`INTERRUPT_GUARD_CODE`): a cancel at any moment leaves the kernel known-good or replaced.

`KernelPool` holds one warm kernel per device: `cuda:N` kernels see only their GPU
(`CUDA_VISIBLE_DEVICES=N`); on a CPU-only machine there is one `cpu` kernel.
"""

from __future__ import annotations

import logging
import os
import subprocess
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from ..gpu_info import cuda_devices

log = logging.getLogger(__name__)

# Run silently (no history, no execution count) right after start-up.
BASELINE_CODE = "__animenb_baseline__ = frozenset(get_ipython().user_ns) | {'__animenb_baseline__'}"
# Run silently right after start-up, before the baseline. ipykernel flushes stdout and stderr before each
# display and twice after each execution, and every flush waits for a round trip through its IOPub
# thread even when nothing was written: on a 2-CPU box that was ~5 ms of a warm job. A flush with
# nothing pending is skipped here; output order is kept because IOPub sends in order and the client
# waits for the "idle" status, which comes after every output. Left alone where stdout is not an
# ipykernel stream with these attributes.
QUIET_FLUSH_CODE = """\
def __animenb_quiet_flushes__():
    import sys
    try:
        from ipykernel.iostream import OutStream
    except ImportError:  # a kernel that is not ipykernel
        return
    if not (isinstance(sys.stdout, OutStream)
            and all(hasattr(sys.stdout, a) for a in ("_flush_pending", "_subprocess_flush_pending"))):
        return
    flush = OutStream.flush
    def flush_if_pending(self):
        if self._flush_pending or self._subprocess_flush_pending:
            flush(self)
    OutStream.flush = flush_if_pending
__animenb_quiet_flushes__()
del __animenb_quiet_flushes__
"""
# Run silently right after start-up. ipykernel transforms each cell's source (IPython's input transformers)
# to decide whether to run it async, then hands the source to IPython's run_cell, which transforms it again:
# ~0.7 ms of a warm job's phase cell on a 2-CPU box. The second call for the same source object gets the
# first call's result; a new execution brings a new source object, so nothing is reused across cells.
ONE_TRANSFORM_CODE = """\
def __animenb_one_transform__():
    shell = get_ipython()
    transform = shell.transform_cell
    last = []
    def transform_cell(raw_cell):
        if last and last[0][0] is raw_cell:
            return last.pop()[1]
        transformed = transform(raw_cell)
        last[:] = [(raw_cell, transformed)]
        return transformed
    shell.transform_cell = transform_cell
__animenb_one_transform__()
del __animenb_one_transform__
"""
# Run silently right after start-up. A cancel interrupts the kernel wherever it is; inside an import that
# leaves half-initialised modules in sys.modules (a later `import diffusers` then fails for every job), and
# inside a model load a half-built pipeline. ipykernel installs `default_int_handler` for each execution:
# this wrapper notes where the interrupt landed (in `sys`, which a reset keeps) before raising as usual, and
# the next reset finds the note and replaces the kernel (`reset`). Interrupts elsewhere (the step loop,
# sleeps, file writes) keep the warm kernel and its model cache.
INTERRUPT_GUARD_CODE = """\
def __animenb_interrupt_guard__():
    import sys
    try:
        import ipykernel.kernelbase as kernelbase
    except ImportError:  # a kernel that is not ipykernel
        return
    raise_interrupt = kernelbase.default_int_handler
    unsafe_calls = {("animenb.models", "_load")}
    def guarded_int_handler(signum, frame):
        where = frame
        while where is not None and not hasattr(sys, "_animenb_unsafe_interrupt"):
            code = where.f_code
            if code.co_filename.startswith("<frozen importlib") and code.co_name == "_find_and_load":
                sys._animenb_unsafe_interrupt = "while importing " + str(where.f_locals.get("name"))
            elif (where.f_globals.get("__name__"), code.co_name) in unsafe_calls:
                sys._animenb_unsafe_interrupt = "while loading a model"
            where = where.f_back
        raise_interrupt(signum, frame)
    kernelbase.default_int_handler = guarded_int_handler
__animenb_interrupt_guard__()
del __animenb_interrupt_guard__
"""
# ipykernel sleeps 0.5 ms after each execution for the flushes above (its own comment calls it a
# work-around); the client waits for "idle" anyway.
KERNEL_ARGUMENTS = [
    "--HistoryManager.enabled=False",  # no history database writes from a long-lived kernel
    "--IPythonKernel._execute_sleep=0",
]
# Run silently before every job: names added by the previous job go, the output cache is emptied. A kernel an
# interrupt left unsafe (INTERRUPT_GUARD_CODE) fails it, and `reset` replaces the kernel.
RESET_CODE = """\
if getattr(__import__('sys'), '_animenb_unsafe_interrupt', None):
    raise RuntimeError('interrupted ' + __import__('sys')._animenb_unsafe_interrupt)
for __animenb_name__ in [n for n in get_ipython().user_ns if n not in __animenb_baseline__]:
    get_ipython().user_ns.pop(__animenb_name__, None)
get_ipython().user_ns.pop('__animenb_name__', None)
get_ipython().user_ns.get('_oh', {}).clear()
get_ipython().displayhook._ = get_ipython().displayhook.__ = get_ipython().displayhook.___ = ''
get_ipython().user_ns.update({'_': '', '__': '', '___': ''})
"""


# Seconds `WarmKernel.kill` waits for a SIGKILLed kernel to exit.
KILL_WAIT = 10.0


class KernelError(RuntimeError):
    """The warm kernel could not be started, reset or reached."""


def detect_devices() -> list[str]:
    """`cuda:N` for each NVIDIA GPU (honouring CUDA_VISIBLE_DEVICES), else `cpu`.

    Counted with NVML (animenb.gpu_info): importing torch in the server process just to count
    GPUs costs 2-3 s and ~360 MB.
    """
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        ids = [v.strip() for v in visible.split(",") if v.strip() and v.strip() != "-1"]
        return [f"cuda:{i}" for i in ids] or ["cpu"]
    return cuda_devices()


class WarmKernel:
    """One ipykernel kept running between jobs (see module docstring)."""

    def __init__(
        self,
        device: str = "cpu",
        *,
        kernel_name: str = "python3",
        env: dict | None = None,
        cwd: str | Path | None = None,
        startup_timeout: float = 60.0,
    ):
        self.device = device
        self.kernel_name = kernel_name
        self.env = dict(env or {})
        self.cwd = str(cwd) if cwd else None
        self.startup_timeout = startup_timeout
        self.thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"animenb-kernel-{device}")
        self.km = None
        self.kc = None
        self.starts = 0
        self.replaced = 0  # restarts because a reset failed (module docstring)
        self.started_at: float | None = None
        self.busy = False
        self.clean = False  # True after a reset, until the next job starts on the kernel
        self.language_info = None  # cached by the engine after the first job (see engine.py)
        self._lock = threading.Lock()

    # -- state, any thread ------------------------------------------------------------
    @property
    def ready(self) -> bool:
        return self.km is not None and self.kc is not None

    def _process(self) -> subprocess.Popen | None:
        """The kernel process (None before it starts and after a shutdown)."""
        return getattr(getattr(self.km, "provisioner", None), "process", None)

    def pid(self) -> int | None:
        process = self._process()
        return None if process is None else process.pid

    def describe(self) -> dict:
        return {
            "device": self.device,
            "ready": self.ready,
            "busy": self.busy,
            "pid": self.pid(),
            "starts": self.starts,
            "replaced": self.replaced,
            "uptime_seconds": None if self.started_at is None else round(time.time() - self.started_at, 1),
        }

    async def interrupt(self) -> bool:
        """Send the kernel an interrupt (SIGINT); safe from the server's event loop."""
        km = self.km
        if km is None:
            return False
        try:
            await km.interrupt_kernel()
            return True
        except Exception:
            log.exception("interrupting kernel %s failed", self.device)
            return False

    def kill(self) -> None:
        """Kill the kernel process outright (escalation when an interrupt does not land) and wait until it has
        exited: a SIGKILLed process lives on for a moment (its memory is torn down first), and a job starting
        meanwhile found it alive, skipped the replacement and died with it. Once this returns the kernel reads
        as dead, so the next job's reset (`ensure_clean`) replaces it. Blocks up to `KILL_WAIT` s: off the
        event loop, call it in a thread."""
        process = self._process()
        if process is None:
            return
        self.clean = False
        try:
            process.kill()
            process.wait(KILL_WAIT)
        except subprocess.TimeoutExpired:
            log.warning("kernel %s (pid %s) still exists %g s after SIGKILL", self.device, process.pid, KILL_WAIT)
        except OSError:  # already gone
            pass

    # -- kernel thread only -------------------------------------------------------------
    def start(self) -> None:
        from jupyter_core.utils import run_sync

        run_sync(self._astart)()

    def restart(self) -> None:
        """Replace the kernel (dead or wedged) with a fresh one (its namespace is clean)."""
        self.shutdown()
        self.start()
        self.clean = True

    def shutdown(self) -> None:
        from jupyter_core.utils import run_sync

        run_sync(self._ashutdown)()

    def reset(self) -> None:
        """Delete names added since the baseline; replaces the kernel if it is dead, or if the reset fails
        (an interrupt landed in an import or a model load, or in the reset itself): it is not known-good."""
        from jupyter_core.utils import run_sync

        if not self.ready or not self.is_alive():
            self.restart()
            return
        try:
            run_sync(self._arun_silent)(RESET_CODE, 30.0)
        except KernelError as exc:
            log.warning("replacing kernel %s: %s", self.device, exc)
            self.replaced += 1
            self.restart()
            return
        self.clean = True

    def ensure_clean(self) -> None:
        """Reset unless already reset since the last job (then only check the kernel is alive)."""
        if self.clean and self.ready and self.is_alive():
            return
        self.reset()

    def reset_after_job(self) -> None:
        """The eager reset queued after a job; never raises (the next job's `ensure_clean` retries)."""
        if self.clean:
            return
        try:
            self.reset()
        except Exception:
            self.clean = False
            log.debug("reset after job on kernel %s failed", self.device, exc_info=True)

    def is_alive(self) -> bool:
        from jupyter_core.utils import run_sync

        if self.km is None:
            return False
        return bool(run_sync(self.km.is_alive)())

    async def _astart(self) -> None:
        from jupyter_client.manager import AsyncKernelManager

        env = {**os.environ, **self.env}
        env.setdefault("TRANSFORMERS_VERBOSITY", "error")
        if self.device.startswith("cuda:"):
            env["CUDA_VISIBLE_DEVICES"] = self.device.split(":", 1)[1]
        t0 = time.perf_counter()
        # TCP on 127.0.0.1 (jupyter_client's default), hence ipykernel's "running over TCP without encryption"
        # warning at each start: the ports are loopback-only and the connection file is private to this user.
        # IPC sockets were tried and dropped: with them a cancel mid-chain sometimes went unanswered under load.
        km = AsyncKernelManager(kernel_name=self.kernel_name)
        await km.start_kernel(env=env, cwd=self.cwd, extra_arguments=KERNEL_ARGUMENTS)
        kc = km.client()
        kc.start_channels()
        try:
            await kc.wait_for_ready(timeout=self.startup_timeout)
        except RuntimeError as exc:
            kc.stop_channels()
            await km.shutdown_kernel(now=True)
            raise KernelError(f"kernel for {self.device} did not start: {exc}") from exc
        kc.allow_stdin = False
        self.km, self.kc = km, kc
        await self._arun_silent(
            QUIET_FLUSH_CODE + ONE_TRANSFORM_CODE + INTERRUPT_GUARD_CODE + BASELINE_CODE, self.startup_timeout
        )
        self.language_info = None
        self.clean = True
        self.starts += 1
        self.started_at = time.time()
        log.info(
            "warm kernel %s started (pid %s) in %.0f ms", self.device, self.pid(), 1000 * (time.perf_counter() - t0)
        )

    async def _ashutdown(self) -> None:
        kc, km = self.kc, self.km
        self.kc = self.km = None
        if kc is not None:
            try:
                kc.stop_channels()
            except Exception:
                log.debug("stop_channels failed", exc_info=True)
        if km is not None:
            try:
                await km.shutdown_kernel(now=True)
            except Exception:
                log.debug("shutdown_kernel failed", exc_info=True)

    async def _arun_silent(self, code: str, timeout: float) -> dict:
        kc = self.kc
        if kc is None:
            raise KernelError("kernel is not running")
        msg_id = kc.execute(code, silent=True, store_history=False, allow_stdin=False)
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise KernelError(f"no reply from kernel {self.device} within {timeout:.0f} s")
            try:
                reply = await kc.get_shell_msg(timeout=min(remaining, 1.0))
            except Exception:  # queue.Empty: check the kernel is still there
                if not await self.km.is_alive():
                    raise KernelError(f"kernel {self.device} died") from None
                continue
            if reply.get("parent_header", {}).get("msg_id") == msg_id:
                content = reply["content"]
                if content.get("status") != "ok":
                    raise KernelError(f"kernel setup code failed: {content.get('ename')}: {content.get('evalue')}")
                return content


class KernelPool:
    """One `WarmKernel` per device."""

    def __init__(self, devices: list[str] | None = None, **kernel_kwargs):
        self.devices = list(devices or detect_devices())
        self.kernels = [WarmKernel(device, **kernel_kwargs) for device in self.devices]

    def __iter__(self):
        return iter(self.kernels)

    def __len__(self) -> int:
        return len(self.kernels)

    def describe(self) -> list[dict]:
        return [k.describe() for k in self.kernels]

    def close(self) -> None:
        for kernel in self.kernels:
            try:
                kernel.thread.submit(kernel.shutdown).result(timeout=15)
            except Exception:
                log.debug("closing kernel %s failed", kernel.device, exc_info=True)
            kernel.thread.shutdown(wait=False)
