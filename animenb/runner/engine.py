"""`WarmKernelEngine`: a papermill engine that reuses a warm kernel and intercepts progress.

Registered as the papermill engine ``animenb`` twice: by entry point (``papermill.engine``), so
``papermill --engine animenb in.ipynb out.ipynb`` works from the command line, and explicitly
when this module is imported (papermill's own ``register``), so a checkout used from PYTHONPATH
without being installed has it too (the job runner imports this module before running a job). From
the command line it behaves like papermill's own nbclient engine (a fresh kernel per run) plus progress
interception. The job runner passes engine keyword arguments through
``papermill.execute_notebook(..., engine_name="animenb", **engine_kwargs)``:

``warm_kernel``
    a started :class:`animenb.runner.kernels.WarmKernel`; its kernel manager and its
    long-lived kernel client are handed to nbclient, which then neither starts nor stops
    anything (a new client per job costs ~260 ms; reusing both costs ~25 ms a job).
``progress_callback(event: dict)``
    called, on the executing thread, with every ``PROGRESS_MIME`` payload the notebook
    displays; the bundle is consumed and never reaches the saved notebook.
``cancel_event``
    a ``threading.Event``; once set no further cell is started (the runner also
    interrupts the kernel, which stops the running cell).
``extra_cells``
    sources of code cells appended to the notebook before it runs (tagged ``EXTRA_CELL_TAG``), e.g.
    the job runner's quality-gate cell: they run on the same kernel after the notebook's own cells and
    are saved with them, so the executed notebook is the whole record of the job.

No round trip of its own for the parameters: papermill puts an ``injected-parameters`` cell right
after the notebook's ``parameters`` cell, and each cell costs a kernel round trip (6-12 ms on two busy
CPUs). The client sends the two, and the code cell after them, as one execution (`joined_runs`):
the parameters and injected cells as ``exec(<source>)`` calls on the first line, each followed by a
boundary display (``BOUNDARY_MIME``, consumed like progress), then the next cell's own source,
whose first line they share, so its line numbers in a traceback stay its own. Each cell still gets
its own outputs, its error and its papermill status; the parameters and injected cells' trailing
expressions are not echoed, which they never rely on. The third cell joins only when its first line
can follow them (no compound statement or decorator there, no IPython-only syntax in the cell).

Why the classes are built lazily: papermill imports this module through its entry point
while ``papermill.engines`` is still being imported. If this module is imported first,
its own ``import papermill`` re-enters it through the entry point before the classes
exist; the module-level ``__getattr__`` builds them on demand from the (by then
defined) ``NBClientEngine``, whichever import comes first.
"""

from __future__ import annotations

import ast
import logging
import threading

from animenb.progress import PROGRESS_MIME

log = logging.getLogger(__name__)

# WarmKernelEngine and AnimenbNotebookClient are built on first use by the module `__getattr__` (docstring).
__all__ = [
    "ENGINE_NAME",
    "WarmKernelEngine",  # noqa: F822
    "AnimenbNotebookClient",  # noqa: F822
    "JobCancelled",
    "PROGRESS_MIME",
    "BOUNDARY_MIME",
]

ENGINE_NAME = "animenb"
EXTRA_CELL_TAG = "animenb-job-step"
# Displayed between two cells sent as one execution: outputs after it belong to the second cell.
BOUNDARY_MIME = "application/vnd.animenb.cell-boundary+json"
_BOUNDARY_CODE = f"__import__('IPython').display.display({{{BOUNDARY_MIME!r}: {{}}}}, raw=True)"


def _tags(cell) -> list:
    return cell.get("metadata", {}).get("tags", []) or []


def _parses(source: str) -> bool:
    try:
        ast.parse(source)
    except SyntaxError:  # IPython-only syntax (magics, shell escapes) or broken code: run it on its own
        return False
    return True


def _joinable(cell) -> bool:
    return (
        cell.cell_type == "code"
        and bool(cell.source.strip())
        and "raises-exception" not in _tags(cell)
        and _parses(cell.source)
    )


def joined_source(sources: list[str], last_is_cell: bool) -> str:
    """One execution for several cells (module docstring): ``exec`` calls and boundaries on the first line,
    then, when `last_is_cell`, the last cell's own source from its first line on."""
    leading = sources[:-1] if last_is_cell else sources
    code = f"; {_BOUNDARY_CODE}; ".join(f"exec({source!r})" for source in leading)
    return f"{code}; {_BOUNDARY_CODE}; {sources[-1]}" if last_is_cell else code


def joined_runs(cells) -> dict[int, tuple[int, ...]]:
    """{index of a `parameters` cell: the indices of the cells run with it as one execution}: it, the
    `injected-parameters` code cell right after it and, when its first line can follow them, the code
    cell after that (module docstring).

    Not for cells that may raise (`raises-exception`): an error in one would skip the next.
    """
    runs: dict[int, tuple[int, ...]] = {}
    for index in range(len(cells) - 1):
        first, second = cells[index], cells[index + 1]
        if not (
            "parameters" in _tags(first)
            and "injected-parameters" in _tags(second)
            and _joinable(first)
            and _joinable(second)
        ):
            continue
        run: tuple[int, ...] = (index, index + 1)
        if index + 2 < len(cells) and _joinable(cells[index + 2]):
            third = cells[index + 2].source
            if _parses(joined_source([first.source, second.source, third], last_is_cell=True)):
                run += (index + 2,)
        runs[index] = run
    return runs


class JobCancelled(Exception):
    """Raised by the engine's client when cancellation was requested before a cell started."""


_lock = threading.RLock()


def _define() -> None:
    with _lock:
        if "WarmKernelEngine" in globals():
            return
        from jupyter_core.utils import run_sync
        from nbclient.exceptions import CellExecutionError
        from papermill.clientwrap import PapermillNotebookClient
        from papermill.engines import NBClientEngine
        from papermill.utils import merge_kwargs, remove_args
        from traitlets import Any

        if "WarmKernelEngine" in globals():  # defined by the nested import through the entry point
            return

        class AnimenbNotebookClient(PapermillNotebookClient):
            """Papermill's client, plus progress interception and a between-cells cancel check."""

            progress_callback = Any(None, allow_none=True)
            cancel_event = Any(None, allow_none=True)
            # The warm kernel's language_info, cached after its first job: saves the kernel_info round
            # trip papermill makes after every notebook just to copy this into the metadata.
            language_info = Any(None, allow_none=True)

            def execute(self, **kwargs):
                if self.language_info is None:
                    return super().execute(**kwargs)
                # Copied from papermill.clientwrap.PapermillNotebookClient.execute, minus kernel_info().
                self.reset_execution_trackers()
                with self.setup_kernel(**kwargs):
                    self.log.info(f"Executing notebook with kernel: {self.kernel_name}")
                    self.papermill_execute_cells()
                    self.nb.metadata["language_info"] = self.language_info
                    self.set_widgets_metadata()
                return self.nb

            # While cells run as one execution: their indices, and the index of the cell that receives
            # outputs (the next one each time a boundary passes).
            _joined = None
            _current = None

            def papermill_execute_cells(self):
                """Papermill's loop (clientwrap.py), with each parameters + injected-parameters pair (and
                the cell after it) sent as one execution (module docstring). Each cell keeps its own
                papermill start, end and status."""
                runs = {} if self.allow_errors else joined_runs(self.nb.cells)
                index = 0
                while index < len(self.nb.cells):
                    run = runs.get(index)
                    self._joined, self._current = run, index
                    try:
                        self.nb_man.cell_start(self.nb.cells[index], index)
                        if run is None:
                            self.execute_cell(self.nb.cells[index], index)
                        else:
                            self._execute_joined(run)
                    except CellExecutionError as ex:
                        self.nb_man.cell_exception(self.nb.cells[self._current], cell_index=self._current, exception=ex)
                        break
                    finally:
                        self.nb_man.cell_complete(self.nb.cells[self._current], cell_index=self._current)
                        self._joined = None
                    index = (index if run is None else run[-1]) + 1

            def _execute_joined(self, run: tuple[int, ...]) -> None:
                cells = [self.nb.cells[i] for i in run]
                first, source = cells[0], cells[0].source
                for cell in cells[1:]:
                    cell.outputs = []
                first.source = joined_source([c.source for c in cells], last_is_cell=len(run) > 2)
                try:
                    self.execute_cell(first, run[0])
                finally:
                    first.source = source
                    for cell in cells[1:]:
                        cell.execution_count = first.get("execution_count")

            def process_message(self, msg, cell, cell_index):
                if self._joined is not None:
                    data = msg.get("content", {}).get("data") or {}
                    if msg.get("msg_type") == "display_data" and BOUNDARY_MIME in data:
                        following = self._joined[self._joined.index(self._current) + 1]
                        self.nb_man.cell_complete(self.nb.cells[self._current], cell_index=self._current)
                        self.nb_man.cell_start(self.nb.cells[following], following)
                        self._current = following
                        return None
                    if self._current != self._joined[0] and msg.get("msg_type") not in ("execute_input", "status"):
                        cell, cell_index = self.nb.cells[self._current], self._current
                if msg.get("msg_type") in ("display_data", "update_display_data"):
                    data = msg.get("content", {}).get("data") or {}
                    if PROGRESS_MIME in data:
                        if self.progress_callback is not None:
                            try:
                                self.progress_callback(data[PROGRESS_MIME])
                            except Exception:  # a broken listener must not fail the job
                                log.exception("progress callback failed")
                        return None
                return super().process_message(msg, cell, cell_index)

            def output(self, outs, msg, display_id, cell_index):
                out = super().output(outs, msg, display_id, cell_index)
                # The kernel flushes stdout on a timer, so one print can arrive in pieces: join a piece to
                # the stream before it, as a frontend shows them. The piece is returned for papermill's log.
                if (
                    out is not None
                    and out.output_type == "stream"
                    and len(outs) > 1
                    and outs[-1] is out
                    and outs[-2].get("output_type") == "stream"
                    and outs[-2].get("name") == out.name
                ):
                    outs.pop()
                    outs[-1].text += out.text
                return out

            async def async_execute_cell(self, cell, cell_index, execution_count=None, store_history=True):
                if self.cancel_event is not None and self.cancel_event.is_set():
                    raise JobCancelled(f"cancelled before cell {cell_index}")
                return await super().async_execute_cell(cell, cell_index, execution_count, store_history)

            execute_cell = run_sync(async_execute_cell)

        class WarmKernelEngine(NBClientEngine):
            """NBClientEngine that runs on a warm kernel when one is passed (see module docstring)."""

            @classmethod
            def execute_notebook(
                cls,
                nb,
                kernel_name,
                output_path=None,
                progress_bar=True,
                log_output=False,
                autosave_cell_every=30,
                extra_cells=(),
                **kwargs,
            ):
                from nbformat.v4 import new_code_cell

                for source in extra_cells or ():
                    nb.cells.append(new_code_cell(source, metadata={"tags": [EXTRA_CELL_TAG]}))
                return super().execute_notebook(
                    nb,
                    kernel_name,
                    output_path=output_path,
                    progress_bar=progress_bar,
                    log_output=log_output,
                    autosave_cell_every=autosave_cell_every,
                    **kwargs,
                )

            @classmethod
            def execute_managed_notebook(
                cls,
                nb_man,
                kernel_name,
                log_output=False,
                stdout_file=None,
                stderr_file=None,
                start_timeout=60,
                execution_timeout=None,
                warm_kernel=None,
                progress_callback=None,
                cancel_event=None,
                **kwargs,
            ):
                kwargs = remove_args(["input_path"], **kwargs)
                safe_kwargs = remove_args(["timeout", "startup_timeout"], **kwargs)
                final_kwargs = merge_kwargs(
                    safe_kwargs,
                    timeout=execution_timeout if execution_timeout else kwargs.get("timeout"),
                    startup_timeout=start_timeout,
                    kernel_name=kernel_name,
                    log=logging.getLogger("papermill"),
                    log_output=log_output,
                    stdout_file=stdout_file,
                    stderr_file=stderr_file,
                    progress_callback=progress_callback or (_log_progress if log_output else None),
                    cancel_event=cancel_event,
                )
                if warm_kernel is None:
                    return AnimenbNotebookClient(nb_man, **final_kwargs).execute()
                client = AnimenbNotebookClient(
                    nb_man, km=warm_kernel.km, language_info=getattr(warm_kernel, "language_info", None), **final_kwargs
                )
                client.kc = warm_kernel.kc  # skips start_new_kernel_client: no new channels, no ready wait
                nb = client.execute(cleanup_kc=False)
                if getattr(warm_kernel, "language_info", None) is None and nb.metadata.get("language_info"):
                    warm_kernel.language_info = dict(nb.metadata["language_info"])
                return nb

        for klass in (AnimenbNotebookClient, WarmKernelEngine):
            klass.__qualname__ = klass.__name__
        globals()["AnimenbNotebookClient"] = AnimenbNotebookClient
        globals()["WarmKernelEngine"] = WarmKernelEngine


def _log_progress(event: dict) -> None:
    log.info(
        "progress %s [%s] %s/%s %.1f%%",
        event.get("phase"),
        event.get("stage"),
        event.get("step"),
        event.get("total_steps"),
        float(event.get("percent") or 0),
    )


def __getattr__(name: str):
    if name in ("WarmKernelEngine", "AnimenbNotebookClient"):
        _define()
        return globals()[name]
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


_define()


def register() -> None:
    """Register `WarmKernelEngine` with papermill as ENGINE_NAME (done at import: module docstring).
    `papermill_engines` exists even while papermill.engines is still loading its entry points."""
    from papermill.engines import papermill_engines

    papermill_engines.register(ENGINE_NAME, globals()["WarmKernelEngine"])


register()
