"""Run a sweep in this process: each cell is the phase function (as the phase notebook calls it), scored by
the quality gate, into <out_dir>/cells/<k>/; then the record, grid and manifest (`animenb.sweeps.report`).

Models load once (the phase functions' module-level cache), so the cells after the first cost their
generation only. `animenb.sweep(...)` in a notebook and the notebooks' demos use it. `animenb sweep` passes
`kernel` instead: each cell is then its phase notebook executed with papermill on one warm kernel
(`animenb.sweeps.notebooks`), an executed notebook per cell as a server job has.

    df = run_sweep(1, {"prompt": "anime girl", "seed": 3, "width": 64, "height": 64},
                   {"steps": [2, 4], "guidance_scale": [5, 7]}, out_dir="outputs/my-sweep", models="tiny")
"""

from __future__ import annotations

import time
import traceback
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Mapping

from animenb import config

from .plan import SweepPlan, build_plan
from .report import cell_row, load_results, write_record, write_results

if TYPE_CHECKING:
    from .notebooks import SweepKernel

CELLS_DIR = "cells"


def default_sweep_dir() -> Path:
    return config.outputs_dir() / f"sweep-{time.strftime('%Y%m%dT%H%M%S')}"


def run_plan(
    plan: SweepPlan,
    out_dir: str | Path,
    *,
    models: str | None = None,
    score: bool = True,
    threshold: float | None = None,
    on_cell: Callable[[int, dict], None] | None = None,
    run_cell: Callable[[int, dict, Path], dict | None] | None = None,
    stop_on: tuple[type[BaseException], ...] = (),
) -> Path:
    """Run every cell of `plan` into `out_dir`; `on_cell(index, row)` after each. A cell that raises is
    recorded as failed and the sweep goes on, except for a KeyboardInterrupt or a `stop_on` exception (a
    cancel): the record then says `cancelled` (the finished cells kept) and the exception goes on.
    `run_cell(index, values, run_dir)` runs one cell and may return fields for its record entry (default: the
    phase function in this process, then the quality gate; `SweepKernel.cell_runner` runs the phase notebook;
    the explorer passes its own, with its previews and cancel). Returns `out_dir`."""
    from animenb.phases import PHASE_FUNCTIONS, get_phase

    out_dir = Path(out_dir).expanduser().resolve()
    out_dir.mkdir(parents=True, exist_ok=True)
    phase = PHASE_FUNCTIONS[get_phase(plan.phase).name]

    def run_phase(index: int, values: dict, run_dir: Path) -> None:
        phase(**values, output_dir=run_dir, models=models, display=None)
        if score:
            from animenb.quality import record_quality, score_output_dir

            record_quality(run_dir, score_output_dir(run_dir, phase=plan.phase, threshold=threshold))

    run_cell = run_cell or run_phase
    stopping: tuple[type[BaseException], ...] = (KeyboardInterrupt, *stop_on)
    entries: list[dict[str, Any]] = []
    rows = []
    for index in range(len(plan.cells)):
        run_dir = out_dir / CELLS_DIR / f"{index:03d}"
        values = dict(plan.values(index))
        entry: dict[str, Any] = {
            "index": index,
            "values": plan.cells[index],
            "job_id": None,
            "run_dir": f"{CELLS_DIR}/{index:03d}",
        }
        started = time.perf_counter()
        try:
            entry.update(run_cell(index, values, run_dir) or {})
            entry["status"] = "succeeded"
        except stopping:
            done = sum(1 for e in entries if e["status"] == "succeeded")
            entry["status"] = "cancelled"
            write_record(
                out_dir,
                plan,
                entries + [entry] + [{"index": i, "values": plan.cells[i]} for i in range(index + 1, len(plan.cells))],
                status="cancelled",
                reason=f"cancelled during cell {index}; {done} of {len(plan.cells)} cells succeeded",
            )
            raise
        except Exception as exc:  # the cell fails; the sweep goes on
            traceback.print_exc()
            entry.update(status="failed", error=f"{type(exc).__name__}: {exc}")
        entry["seconds"] = round(time.perf_counter() - started, 3)
        entries.append(entry)
        rows.append(
            cell_row(plan, index, run_dir, status=entry["status"], error=entry.get("error"), seconds=entry["seconds"])
        )
        write_record(
            out_dir, plan, entries + [{"index": i, "values": plan.cells[i]} for i in range(index + 1, len(plan.cells))]
        )
        if on_cell is not None:
            on_cell(index, rows[-1])
    done = sum(1 for e in entries if e["status"] == "succeeded")
    status = "succeeded" if done else "failed"
    reason = f"{done} of {len(entries)} cells succeeded"
    write_record(out_dir, plan, entries, status=status, reason=reason)
    write_results(out_dir, plan, rows, status=status, reason=reason)
    return out_dir


class CellsBar:
    """A tqdm bar over a sweep's cells; its postfix shows the running cell's values and progress."""

    def __init__(self, plan: SweepPlan):
        from tqdm.auto import tqdm

        self.plan = plan
        self.bar = tqdm(total=len(plan.cells), desc="sweep", unit="cell")

    def cell_progress(self, index: int, event: dict) -> None:
        values = " ".join(f"{name}={value}" for name, value in self.plan.cells[index].items())
        if event.get("part") == "quality":
            where = "scoring"
        else:
            where = f"{event.get('stage') or ''} {event.get('step') or 0}/{event.get('total_steps') or '?'}"
        self.bar.set_postfix_str(f"{values}: {where.strip()}")

    def cell_done(self, index: int, row: dict) -> None:
        self.bar.update(1)

    def close(self) -> None:
        self.bar.close()


def run_sweep(
    phase: int | str,
    parameters: Mapping[str, Any],
    axes: Mapping[str, Any],
    *,
    mode: str = "grid",
    out_dir: str | Path | None = None,
    models: str | None = None,
    score: bool = True,
    threshold: float | None = None,
    progress: bool = True,
    kernel: SweepKernel | None = None,
):
    """Validate, run every cell (module docstring) and return the sweep's DataFrame (`df.attrs["sweep_dir"]`
    says where the grid and record are). `progress`: a tqdm bar over the cells. `kernel`: each cell is its
    phase notebook executed on this warm kernel; None: the phase function in this process."""
    plan = build_plan(phase, dict(parameters), axes, mode)
    if plan.parameters.get("seed") in (None, -1):
        import secrets

        plan = build_plan(phase, {**plan.parameters, "seed": secrets.randbelow(2**32)}, axes, mode)
    if out_dir is None:
        out_dir = default_sweep_dir()
    bar = CellsBar(plan) if progress else None
    run_cell = None
    if kernel is not None:
        run_cell = kernel.cell_runner(
            plan.phase,
            models=models,
            score=score,
            threshold=threshold,
            on_progress=bar.cell_progress if bar is not None else None,
        )
    try:
        run_plan(
            plan,
            out_dir,
            models=models,
            score=score,
            threshold=threshold,
            run_cell=run_cell,
            on_cell=bar.cell_done if bar is not None else None,
        )
    finally:
        if bar is not None:
            bar.close()
    df = load_results(out_dir)
    df.attrs["sweep_dir"] = str(Path(out_dir).expanduser().resolve())
    return df
