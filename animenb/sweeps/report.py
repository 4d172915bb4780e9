"""A finished sweep's results: its table (one row per cell), grid image, record and manifest, and the
comparison notebook (notebooks/08_sweep_report.ipynb) executed into the sweep's folder.

The folder of a sweep holds `sweep.json` (the record: the recipe and one entry per cell: its axis values,
job id, status, run directory), `grid.png` (`animenb.sweeps.grid`), `manifest.json` (so the sweep is a
run of its own: the gallery card shows the grid) and `report.ipynb`. Each cell's run is a folder of its
own (a job's outputs/<job_id>/, or <sweep>/cells/<k>/ locally), as any phase run.

    df = load_results("outputs/<sweep_id>")   # the DataFrame of every cell
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Sequence

from PIL import Image

from animenb.atomic import write_json
from animenb.manifest import MANIFEST_NAME, file_entry, read_manifest, utc_now, write_manifest
from animenb.runs import row_from_manifest

from .grid import grid_pages, save_grid
from .plan import SweepPlan

RECORD_NAME = "sweep.json"
REPORT_NAME = "report.ipynb"
REPORT_NOTEBOOK = "08_sweep_report.ipynb"
SWEEP_KIND = "sweep"
# The picture of a cell, best first (manifest "kind" of a phase's files).
IMAGE_KINDS = ("sheet", "gif", "source", "frame", "pose", "image")


def verdict(quality: dict | None) -> str | None:
    """pass / fail / review of a cell's quality entry (None when unscored)."""
    if not quality or quality.get("score") is None:
        return None
    if quality.get("verdict"):
        return str(quality["verdict"])
    return "pass" if quality.get("passed") else "fail"


def cell_row(
    plan: SweepPlan,
    index: int,
    run_dir: Path | None,
    *,
    status: str | None = None,
    job_id: str | None = None,
    error: str | None = None,
    seconds: float | None = None,
) -> dict:
    """One row of the sweep's table: the cell's axis values first, then its run's columns
    (`animenb.runs.row_from_manifest`), its gate verdict and every metric (`metric_<name>`)."""
    row: dict[str, Any] = {"cell": index, **plan.cells[index]}
    manifest = None
    if run_dir is not None and (run_dir / MANIFEST_NAME).is_file():
        manifest = read_manifest(run_dir)
        row.update({k: v for k, v in row_from_manifest(manifest, run_dir).items() if k not in row})
    quality = (manifest or {}).get("quality") or {}
    row.update(
        job_id=job_id,
        status=status or ("succeeded" if manifest else "missing"),
        verdict=verdict(quality),
        error=error,
        output_dir=str(run_dir) if run_dir else None,
    )
    row.setdefault("seed", plan.values(index).get("seed"))
    for column in ("quality_score", "duration_seconds"):  # every table has them, a cell without a run too
        row.setdefault(column, math.nan)
    if seconds is not None and not (
        isinstance(row.get("duration_seconds"), float) and math.isfinite(row["duration_seconds"])
    ):
        row["duration_seconds"] = seconds
    for name, value in (quality.get("metrics") or {}).items():
        row[f"metric_{name}"] = value
    return row


def cell_image(run_dir: Path | None) -> Image.Image | None:
    """The picture of a run: its sheet, a loop's first frame, a video's source (None when there is none)."""
    if run_dir is None or not (run_dir / MANIFEST_NAME).is_file():
        return None
    files = read_manifest(run_dir).get("files") or []
    rank = {kind: i for i, kind in enumerate(IMAGE_KINDS)}
    for entry in sorted((f for f in files if f.get("kind") in rank), key=lambda f: rank[f["kind"]]):
        try:
            with Image.open(run_dir / entry["path"]) as image:
                image.seek(0)
                return image.convert("RGB")
        except (OSError, ValueError):
            continue
    return None


def write_record(out_dir: Path, plan: SweepPlan, cells: Sequence[dict], **fields: Any) -> Path:
    """`sweep.json`: the recipe and one entry per cell ({index, values, job_id, status, run_dir}), atomically."""
    path = Path(out_dir) / RECORD_NAME
    write_json(path, {"kind": SWEEP_KIND, **plan.as_dict(), "cells": list(cells), **fields})
    return path


def read_record(out_dir: Path) -> dict | None:
    try:
        return json.loads((Path(out_dir) / RECORD_NAME).read_text())
    except (OSError, ValueError):
        return None


def write_results(
    out_dir: Path,
    plan: SweepPlan,
    rows: Sequence[dict],
    *,
    status: str,
    reason: str = "",
    job_id: str | None = None,
    cell: int = 192,
) -> list[dict]:
    """The grid image(s) and the sweep's manifest.json; returns the manifest's file entries."""
    out_dir = Path(out_dir)
    run_dirs = [Path(r["output_dir"]) if r.get("output_dir") else None for r in rows]
    pages = grid_pages(plan.axes, plan.cells, rows, [cell_image(d) for d in run_dirs], mode=plan.mode, cell=cell)
    grids = save_grid(pages, out_dir, plan.as_dict())
    files = [file_entry(out_dir, p, "grid") for p in grids] + [file_entry(out_dir, out_dir / RECORD_NAME, "record")]
    scores = [
        r["quality_score"]
        for r in rows
        if isinstance(r.get("quality_score"), float) and math.isfinite(r["quality_score"])
    ]
    write_manifest(
        out_dir,
        {
            "kind": SWEEP_KIND,
            "created_at": utc_now(),
            "phase": "SWEEP",
            "job_id": job_id,
            "status": status,
            "reason": reason,
            "parameters": plan.parameters,
            "seed": plan.parameters.get("seed"),
            "sweep": plan.as_dict(),
            "cells": len(rows),
            "swept_phase": plan.phase,
            "quality": {
                "best_score": max(scores) if scores else None,
                "passed_cells": sum(1 for r in rows if r.get("verdict") == "pass"),
            },
            "files": files,
        },
    )
    return files


def load_results(sweep_dir: str | Path):
    """The DataFrame of a finished (or running) sweep: one row per cell, from its record and the cells' runs."""
    import pandas as pd

    sweep_dir = Path(sweep_dir)
    record = read_record(sweep_dir)
    if record is None:
        raise FileNotFoundError(f"No {RECORD_NAME} in {sweep_dir}: is it a sweep's folder?")
    from .plan import plan_from_dict

    plan = plan_from_dict(record)
    rows = []
    for entry in record["cells"]:
        run_dir = Path(entry["run_dir"]) if entry.get("run_dir") else None
        if run_dir is not None and not run_dir.is_absolute():
            run_dir = (sweep_dir / run_dir).resolve()
        rows.append(
            cell_row(
                plan,
                entry["index"],
                run_dir,
                status=entry.get("status"),
                job_id=entry.get("job_id"),
                error=entry.get("error"),
                seconds=entry.get("seconds"),
            )
        )
    return pd.DataFrame(rows)


def run_report(sweep_dir: Path, notebooks_dir: Path, *, public_text=None) -> Path:
    """Execute the comparison notebook into `sweep_dir/report.ipynb` (papermill, a fresh kernel); `public_text`
    rewrites the saved text (the server's paths out). Raises what papermill raises."""
    import papermill

    target = Path(sweep_dir) / REPORT_NAME
    try:
        papermill.execute_notebook(
            str(Path(notebooks_dir) / REPORT_NOTEBOOK),
            str(target),
            parameters={"sweep_dir": str(sweep_dir)},
            progress_bar=False,
            kernel_name="python3",
        )
    finally:
        if public_text is not None and target.is_file():
            target.write_text(public_text(target.read_text(encoding="utf-8")), encoding="utf-8")
    return target


def plot_against_axes(df, axes: Sequence[str]):
    """Quality score (top row) and time (bottom row) against each swept axis: one dot per cell, the line the
    mean per value (other axes averaged out)."""
    import matplotlib.pyplot as plt

    fig, grid = plt.subplots(2, len(axes), figsize=(4.0 * len(axes), 6.0), squeeze=False)
    for column, axis in enumerate(axes):
        for row, (y, label) in enumerate((("quality_score", "quality score"), ("duration_seconds", "seconds"))):
            ax = grid[row][column]
            data = df[[axis, y]].dropna() if y in df else df[[axis]].iloc[0:0]
            categorical = data[axis].dtype == object
            x = data[axis].astype(str) if categorical else data[axis]
            ax.scatter(x, data[y] if y in data else [], s=16, alpha=0.7)
            if len(data):
                means = data.groupby(axis, sort=True)[y].mean()
                ax.plot(means.index.astype(str) if categorical else means.index, means.values, color="0.3", linewidth=1)
            ax.set(xlabel=axis, ylabel=label)
            ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig
