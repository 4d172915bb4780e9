"""A sweep's cells as papermill notebooks on one warm kernel: what `animenb sweep` runs here.

Each cell executes its phase's notebook into its own folder (`cells/<k>/notebook.ipynb`, the quality gate's
cell appended, as a server job's notebook is), and the report notebook runs last on the same kernel. The
kernel is the job runner's `WarmKernel`, driven by `run_on_kernel` as a server's local slot drives it:
started by the first cell, reset between cells (the cell's names go; imported modules and their model cache
stay), so the models load once and every cell after the first costs its generation only.

Ctrl-C (a KeyboardInterrupt while a notebook runs) stops the sweep: no further notebook cell starts (the
engine's cancel event), the running one is interrupted in the kernel (again, then killed, when that has not
ended it: `_stop`), its notebook is saved as far as it ran (a killed kernel's outputs up to its death), and
the KeyboardInterrupt goes on to `run_plan`, which records the sweep as cancelled. Closing shuts the kernel
down.

`animenb.sweep(...)` in a notebook keeps running cells in its own process (`animenb.sweeps.local`): that
kernel already holds the models (the explorer's too), which a second kernel would load again.

    with SweepKernel() as kernel:
        run_plan(plan, out_dir, run_cell=kernel.cell_runner(plan.phase, models="tiny"))
        kernel.run_report(out_dir)
"""

from __future__ import annotations

import threading
from concurrent.futures import Future
from pathlib import Path
from typing import Any, Callable, Sequence

from animenb import config
from animenb.phases.catalog import get_phase
from animenb.runner.executors import run_on_kernel
from animenb.runner.kernels import KernelPool
from animenb.runner.parameters import phase_parameters, to_papermill
from animenb.runner.phase_jobs import NOTEBOOK_NAME, quality_cell

from .report import REPORT_NAME, REPORT_NOTEBOOK

KERNEL_NAME = "sweep"  # the kernel's label in logs and thread names (it may use any device the phase picks)


class CellFailed(RuntimeError):
    """A notebook cell raised; the message names it, its error and the saved notebook."""


class SweepKernel:
    """One warm kernel that executes a sweep's notebooks, one at a time (module docstring)."""

    def __init__(self, *, kernel_name: str = "python3", env: dict | None = None, cancel_grace: float = 2.0):
        self.pool = KernelPool([KERNEL_NAME], kernel_name=kernel_name, env=env)
        self.kernel = self.pool.kernels[0]
        self.cancel_grace = cancel_grace
        self.cancel_event = threading.Event()
        self.stopping = False

    def __enter__(self) -> SweepKernel:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self.stopping = True
        self.pool.close()

    def execute(
        self,
        notebook: Path,
        output: Path,
        parameters: dict[str, Any],
        *,
        extra_cells: Sequence[str] = (),
        on_progress: Callable[[dict], None] | None = None,
    ) -> None:
        """Run `notebook` into `output` on the warm kernel (started first when it is not running), with the animenb
        engine; CellFailed when one of its cells raises, KeyboardInterrupt once a Ctrl-C has stopped it."""
        from papermill.exceptions import PapermillExecutionError

        if self.stopping:
            raise RuntimeError("the sweep's kernel is closed")
        output.parent.mkdir(parents=True, exist_ok=True)
        future = self.kernel.thread.submit(
            run_on_kernel,
            self.kernel,
            str(notebook),
            output,
            parameters,
            warm=True,
            on_progress=on_progress or (lambda event: None),
            cancel_event=self.cancel_event,
            execution_timeout=None,
            extra_cells=tuple(extra_cells),
            label=f"{output}: kernel {KERNEL_NAME}",
            replace_dead=lambda: not self.stopping,
        )
        try:
            future.result()
        except KeyboardInterrupt:
            self._stop(future)
            raise
        except PapermillExecutionError as exc:
            first = str(exc.evalue).splitlines()[0] if exc.evalue else ""
            raise CellFailed(
                f"{notebook.name} failed in cell {exc.exec_count}: {exc.ename}: {first}  (see {output})"
            ) from None
        finally:
            if not self.stopping:  # as a server's slot does: reset now, while the sweep records the cell
                self.kernel.thread.submit(self.kernel.reset_after_job)

    def _stop(self, future: Future) -> None:
        """Ctrl-C during a notebook: no further cell starts; interrupt the running one, again after `cancel_grace`
        seconds (a cell may have swallowed the first), and kill the kernel after 3x that (or at each further
        Ctrl-C, one step sooner), as a server cancels a job."""
        from jupyter_core.utils import run_sync

        self.stopping = True
        self.cancel_event.set()
        interrupt = run_sync(self.kernel.interrupt)
        for stop, wait in ((interrupt, 1), (interrupt, 2), (self.kernel.kill, 2)):
            stop()
            try:
                future.result(timeout=wait * self.cancel_grace)
                return
            except (KeyboardInterrupt, TimeoutError):  # still running: stop it harder
                continue
            except Exception:  # the interrupted notebook's own error: it has ended
                return

    def cell_runner(
        self,
        phase: int | str,
        *,
        models: str | None = None,
        score: bool = True,
        threshold: float | None = None,
        on_progress: Callable[[int, dict], None] | None = None,
    ) -> Callable[[int, dict, Path], dict]:
        """A `run_cell` for `run_plan`: cell `index` executes `phase`'s notebook into its run folder, scored by the
        gate's cell when `score`; `on_progress(index, event)` with the notebook's progress. It returns the
        kernel's pid, which the sweep's record keeps for each cell (one pid: one kernel ran them all)."""
        spec = get_phase(phase)
        notebook = config.notebooks_dir() / spec.notebook

        def run_cell(index: int, values: dict, run_dir: Path) -> dict:
            parameters = phase_parameters(
                values,
                output_dir=run_dir,
                models=models or config.default_profile(),
                comfyui_url=values.get("comfyui_url"),
            )
            extra = (quality_cell(run_dir, spec.id, threshold),) if score else ()
            progress = (lambda event: on_progress(index, event)) if on_progress is not None else None
            self.execute(notebook, run_dir / NOTEBOOK_NAME, parameters, extra_cells=extra, on_progress=progress)
            return {"kernel_pid": self.kernel.pid()}

        return run_cell

    def run_report(self, sweep_dir: Path) -> Path:
        """The comparison notebook executed into `sweep_dir/report.ipynb` on this kernel (as `report.run_report`
        does in a fresh one)."""
        target = Path(sweep_dir) / REPORT_NAME
        self.execute(config.notebooks_dir() / REPORT_NOTEBOOK, target, to_papermill({"sweep_dir": str(sweep_dir)}))
        return target
