"""Every run as a pandas DataFrame, and the figures that compare them.

    from animenb.runs import to_dataframe, plot_quality_vs_steps, plot_time_vs_steps
    df = to_dataframe()                                  # manifests under ./outputs (recursive)
    df = to_dataframe("outputs", phase=1, since="2025-01-01")
    df = to_dataframe([store, "outputs"])                # job store rows joined with their manifests

Sources: a directory (every `manifest.json` below it, orchestration sub-runs included:
`parent` names the enclosing run; an orchestration's own row has phase "ORCHESTRATION"
and its `status`), a job store (any `animenb.store.JobStoreBase`, read
only: `list()` paged to the end; a job's files are `outputs_dir/<job_id>/`), or a list
of those. A run found both in a store and under a directory is one row (the store adds
`status`). One row per run, columns `COLUMNS`:

- `sweep` names the sweep a run is a cell of (`df.groupby("sweep")`), from the sweep's record
  (`animenb.sweeps`); a sweep's own row has phase "SWEEP" and its own name there.

- `steps` is the per-image denoising steps parameter; `denoising_steps` counts every
  denoising step of the run (8 poses x steps for a sheet, + the source image for a
  video made from a prompt), and `step_rate` = denoising_steps / generate_seconds.
- `duration_seconds` is the manifest's total time (a store-only row: finished - started).
- `quality_score`, `passed`, `threshold` come from manifest["quality"] (or the store's
  outputs["quality"]); NaN / None for an unscored run.
- `created_at` is a UTC pandas Timestamp; `since` / `until` filter on it. A bare date
  (`"2025-01-31"`, `datetime.date`) as `until` includes that whole day.
"""

from __future__ import annotations

import math
from datetime import date, datetime, timedelta, timezone
from pathlib import Path
from typing import Any, Iterable

from .config import outputs_dir as default_outputs_dir
from .manifest import MANIFEST_NAME, read_manifest
from .phases.catalog import DEFAULT_GATE, PHASES, get_phase
from .phases.character_sheet import POSES

COLUMNS = [
    "run",
    "job_id",
    "status",
    "phase_id",
    "phase",
    "prompt",
    "seed",
    "steps",
    "scheduler",
    "guidance_scale",
    "width",
    "height",
    "models",
    "backend",
    "duration_seconds",
    "generate_seconds",
    "denoising_steps",
    "step_rate",
    "quality_score",
    "passed",
    "verdict",
    "threshold",
    "created_at",
    "parent",
    "sweep",
    "output_dir",
    "notebook",
    "source",
]
SWEEP = "SWEEP"  # the phase of a sweep's own row (animenb.sweeps)
_PHASE_COLOURS = {"CHARACTER_SHEET": "#4a7ebb", "ANIMATION_LOOP": "#d0782a", "FULL_VIDEO": "#4c9a55"}


def denoising_steps(phase: str, parameters: dict) -> int | None:
    """Every denoising step a run took (what `step_rate` divides by the generate time)."""
    steps = parameters.get("steps")
    if not isinstance(steps, int) or isinstance(steps, bool):
        return None
    if phase == "CHARACTER_SHEET":
        return steps * len(POSES)
    if phase == "FULL_VIDEO" and not parameters.get("image"):
        return steps * 2  # the source image from the prompt, then SVD
    if phase == "ANIMATION_LOOP" or phase == "FULL_VIDEO":
        return steps
    return None  # an orchestration: its sub-runs are rows of their own


def _phase_name(value: Any) -> str | None:
    if isinstance(value, dict):
        value = value.get("name") or value.get("id")
    if value is None:
        return None
    try:
        return get_phase(value).name
    except ValueError:
        return str(value)


def _number(value: Any) -> float:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else math.nan


def _timestamp(value: Any):
    import pandas as pd

    if value is None or value == "":
        return pd.NaT
    if isinstance(value, (int, float)):
        return pd.Timestamp(value, unit="s", tz="UTC")
    ts = pd.Timestamp(value)
    return ts.tz_localize("UTC") if ts.tzinfo is None else ts.tz_convert("UTC")


def row_from_manifest(manifest: dict, output_dir: Path, root: Path | None = None) -> dict:
    """One DataFrame row from a run's manifest.json (already parsed) and its directory."""
    phase = _phase_name(manifest.get("phase"))
    params = manifest.get("parameters") or {}
    timings = manifest.get("timings") or {}
    quality = manifest.get("quality") or {}
    backend = manifest.get("backend") or {}
    steps_total = denoising_steps(phase or "", params)
    generate = _number(timings.get("generate_seconds"))
    rel = output_dir.relative_to(root).as_posix() if root is not None and output_dir != root else output_dir.name
    notebook = output_dir / "notebook.ipynb"
    return {
        "run": rel,
        "job_id": output_dir.name,
        "status": manifest.get("status"),
        "phase_id": get_phase(phase).id if phase in {p.name for p in PHASES} else None,
        "phase": phase,
        "prompt": params.get("prompt"),
        "seed": manifest.get("seed", params.get("seed")),
        "steps": params.get("steps"),
        "scheduler": params.get("scheduler"),
        "guidance_scale": params.get("guidance_scale"),
        "width": params.get("width"),
        "height": params.get("height"),
        "models": manifest.get("models"),
        "backend": backend.get("backend") if isinstance(backend, dict) else backend,
        "duration_seconds": _number(timings.get("total_seconds")),
        "generate_seconds": generate,
        "denoising_steps": steps_total,
        "step_rate": steps_total / generate if steps_total and generate and generate > 0 else math.nan,
        "quality_score": _number(quality.get("score")),
        "passed": quality.get("passed"),
        "verdict": quality.get("verdict"),
        "threshold": _number(quality.get("threshold")),
        "created_at": _timestamp(manifest.get("created_at")),
        "parent": None,
        "output_dir": str(output_dir),
        "notebook": str(notebook) if notebook.is_file() else None,
        "source": "manifest",
    }


def rows_from_outputs(root: str | Path) -> list[dict]:
    """A row per manifest.json below `root` (recursive); unreadable manifests are skipped."""
    root = Path(root).expanduser().resolve()
    if not root.is_dir():
        raise FileNotFoundError(f"`source`: no outputs directory at {root}.")
    rows = []
    dirs = set()
    for path in sorted(root.rglob(MANIFEST_NAME)):
        try:
            manifest = read_manifest(path.parent)
        except (OSError, ValueError):
            continue
        if not isinstance(manifest, dict) or "phase" not in manifest:
            continue
        rows.append(row_from_manifest(manifest, path.parent, root))
        dirs.add(path.parent)
    for row in rows:  # orchestration sub-runs: the nearest enclosing run directory
        for ancestor in Path(row["output_dir"]).parents:
            if ancestor in dirs:
                row["parent"] = ancestor.relative_to(root).as_posix() if ancestor != root else "."
                break
            if ancestor == root:
                break
    return rows


def _iter_jobs(store) -> Iterable:
    cursor = None
    while True:
        page, cursor = store.list(limit=500, cursor=cursor)
        yield from page
        if not cursor:
            return


def rows_from_store(store, outputs_dir: str | Path | None = None) -> list[dict]:
    """A row per job in `store` (read only), with its manifest's fields when outputs_dir/<job_id>/ has one."""
    base = Path(outputs_dir or default_outputs_dir()).expanduser().resolve()
    rows = []
    for job in _iter_jobs(store):
        out = base / job.id
        manifest = None
        if (out / MANIFEST_NAME).is_file():
            try:
                manifest = read_manifest(out)
            except (OSError, ValueError):
                manifest = None
        if isinstance(manifest, dict):
            row = row_from_manifest(manifest, out, base)
        else:
            params = job.parameters or {}
            phase = _phase_name(job.phase)
            quality = job.outputs.quality or {}
            duration = (job.finished_at - job.started_at) if job.finished_at and job.started_at else math.nan
            row = {column: None for column in COLUMNS}
            row.update(
                run=job.id,
                phase_id=job.phase,
                phase=phase,
                prompt=params.get("prompt"),
                seed=params.get("seed") if job.outputs.seed is None else job.outputs.seed,
                steps=params.get("steps"),
                scheduler=params.get("scheduler"),
                guidance_scale=params.get("guidance_scale"),
                width=params.get("width"),
                height=params.get("height"),
                duration_seconds=duration,
                generate_seconds=math.nan,
                denoising_steps=denoising_steps(phase or "", params),
                step_rate=math.nan,
                quality_score=_number(quality.get("score")),
                passed=quality.get("passed"),
                verdict=quality.get("verdict"),
                threshold=_number(quality.get("threshold")),
                output_dir=str(out) if out.is_dir() else None,
            )
        row.update(job_id=job.id, status=str(job.status), created_at=_timestamp(job.created_at), source="store")
        if job.parent_id:
            row["parent"] = job.parent_id
        rows.append(row)
    return rows


def _mark_sweeps(rows: list[dict]) -> None:
    """Fill `sweep` from every sweep row's record: the sweep's run name on itself and on each of its cells."""
    from .sweeps.report import read_record

    by_dir = {str(Path(r["output_dir"]).resolve()): r for r in rows if r.get("output_dir")}
    for row in [r for r in rows if r.get("phase") == SWEEP and r.get("output_dir")]:
        sweep_dir = Path(row["output_dir"])
        row["sweep"] = row["run"]
        for cell in (read_record(sweep_dir) or {}).get("cells", []):
            if isinstance(cell, dict) and isinstance(cell.get("run_dir"), str):
                member = by_dir.get(str((sweep_dir / cell["run_dir"]).resolve()))
                if member is not None:
                    member["sweep"] = row["run"]


def _is_store(source: Any) -> bool:
    return callable(getattr(source, "list", None)) and callable(getattr(source, "get", None))


def _bound(value: Any, upper: bool):
    """(timestamp, inclusive): a bare date as an upper bound means the end of that day."""
    import pandas as pd

    if value is None:
        return None
    whole_day = (isinstance(value, date) and not isinstance(value, datetime)) or (
        isinstance(value, str) and len(value.strip()) == 10
    )
    try:
        ts = _timestamp(value.isoformat() if isinstance(value, date) else value)
    except (ValueError, TypeError):
        ts = pd.NaT
    if pd.isna(ts):
        raise ValueError(f"`{'until' if upper else 'since'}` must be a date or time, got {value!r}.")
    if upper and whole_day:
        return ts + timedelta(days=1), False
    return ts, True


def to_dataframe(
    source: Any = None,
    *,
    phase: int | str | Iterable[int | str] | None = None,
    since: str | date | datetime | None = None,
    until: str | date | datetime | None = None,
    outputs_dir: str | Path | None = None,
):
    """Every run as a DataFrame (columns `COLUMNS`), newest first.

    `source`: None (the outputs directory, `$ANIMENB_OUTPUTS` or ./outputs), a directory, a
    job store, or a list of those. `outputs_dir` is where a store's jobs wrote their files
    (default: the outputs directory). `phase`: 1/2/3, a name ("ORCHESTRATION", "SWEEP" too), or a list of them.
    """
    import pandas as pd

    sources = list(source) if isinstance(source, (list, tuple)) else [source]
    rows: list[dict] = []
    for item in sources:
        if item is None:
            item = default_outputs_dir()
            rows += rows_from_outputs(item) if Path(item).is_dir() else []
        elif _is_store(item):
            rows += rows_from_store(item, outputs_dir)
        elif isinstance(item, (str, Path)):
            rows += rows_from_outputs(item)
        else:
            raise ValueError(f"`source` must be a directory, a job store or a list of them, got {type(item).__name__}.")
    # one row per run directory: a store row (with its status) wins over the bare manifest row
    merged: dict[str, dict] = {}
    for row in rows:
        key = row["output_dir"] or f"job:{row['job_id']}"
        if key in merged and merged[key]["source"] == "store" and row["source"] != "store":
            continue
        merged[key] = row
    _mark_sweeps(list(merged.values()))
    df = pd.DataFrame(list(merged.values()), columns=COLUMNS)
    df["created_at"] = pd.to_datetime(df["created_at"], utc=True)
    for column in ("duration_seconds", "generate_seconds", "step_rate", "quality_score", "threshold"):
        df[column] = pd.to_numeric(df[column], errors="coerce").astype(float)
    for column in ("phase_id", "seed", "steps", "width", "height", "denoising_steps"):
        df[column] = pd.to_numeric(df[column], errors="coerce").astype("Int64")

    if phase is not None:
        wanted = [phase] if isinstance(phase, (int, str)) else list(phase)
        names = {str(p).upper() if str(p).upper() in ("ORCHESTRATION", SWEEP) else get_phase(p).name for p in wanted}
        df = df[df["phase"].isin(names)]
    lower, upper = _bound(since, False), _bound(until, True)
    if lower is not None:
        df = df[df["created_at"] >= lower[0]]
    if upper is not None:
        ts, inclusive = upper
        df = df[df["created_at"] <= ts] if inclusive else df[df["created_at"] < ts]
    return df.sort_values("created_at", ascending=False, na_position="last").reset_index(drop=True)


# -- figures ---------------------------------------------------------------------------------
def _by_phase(df, y: str):
    for name, group in df.dropna(subset=["steps", y]).groupby("phase", sort=False):
        yield name, group.sort_values("steps")


def _empty(ax, what: str) -> None:
    ax.text(0.5, 0.5, f"no runs with {what}", ha="center", va="center", transform=ax.transAxes, color="0.4")


def _figure(figsize=(6.0, 4.0)):
    """A Figure outside pyplot's global state (thread-safe, never shown twice); in a notebook run
    `%matplotlib inline` once so a returned Figure renders as PNG."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=figsize, layout="constrained")
    return fig, fig.add_subplot()


def _scatter_with_median(ax, df, y: str) -> int:
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    plotted = 0
    for name, group in _by_phase(df, y):
        colour = _PHASE_COLOURS.get(name)
        steps = group["steps"].astype(float)
        ax.scatter(steps, group[y], s=22, alpha=0.6, color=colour, label=f"{name} ({len(group)})")
        median = group.groupby("steps")[y].median()
        ax.plot(median.index.astype(float), median.values, color=colour, linewidth=1.5)
        plotted += len(group)
    return plotted


def plot_quality_vs_steps(df, *, threshold: float | None = None):
    """Quality score against steps per phase (dots: runs; line: median per step count), with the gate."""
    fig, ax = _figure()
    if _scatter_with_median(ax, df, "quality_score"):
        ax.legend(fontsize=8, loc="lower right")
    else:
        _empty(ax, "a quality score")
    gate = threshold
    if gate is None:
        known = df["threshold"].dropna() if "threshold" in df else None
        gate = float(known.median()) if known is not None and len(known) else DEFAULT_GATE
    ax.axhline(gate, color="0.3", linestyle="--", linewidth=1)
    ax.annotate(f"gate {gate:.2f}", (0.01, gate), xycoords=("axes fraction", "data"), va="bottom", fontsize=8)
    ax.set(xlabel="steps", ylabel="quality score", ylim=(0, 1.02), title="Quality vs steps")
    ax.grid(alpha=0.3)
    return fig


def plot_time_vs_steps(df, *, column: str = "generate_seconds"):
    """Generation time (s) against steps per phase, with the median step rate in the legend."""
    fig, ax = _figure()
    if _scatter_with_median(ax, df, column):
        handles, labels = ax.get_legend_handles_labels()
        rates = df.dropna(subset=["step_rate"]).groupby("phase")["step_rate"].median()
        labels = [
            f"{label} · {rates[label.split(' ')[0]]:.1f} steps/s" if label.split(" ")[0] in rates else label
            for label in labels
        ]
        ax.legend(handles, labels, fontsize=8, loc="upper left")
    else:
        _empty(ax, "a time")
    ax.set(xlabel="steps", ylabel=column.replace("_seconds", " time (s)").replace("_", " "), title="Time vs steps")
    ax.set_ylim(bottom=0)
    ax.grid(alpha=0.3)
    return fig


def summary(df):
    """Median time, step rate and quality, and the pass rate, per phase and step count."""
    return (
        df.groupby(["phase", "steps"], dropna=True)
        .agg(
            runs=("run", "count"),
            generate_seconds=("generate_seconds", "median"),
            step_rate=("step_rate", "median"),
            quality_score=("quality_score", "median"),
            pass_rate=("passed", lambda s: s.dropna().astype(bool).mean() if s.notna().any() else math.nan),
        )
        .reset_index()
    )


def build_demo_runs(
    root: str | Path,
    steps: Iterable[int] = (1, 2, 3),
    *,
    prompt: str = "anime girl, demo",
    seed: int = 7,
    models: str = "tiny",
    size: int = 64,
    score: bool = True,
) -> Path:
    """A small set of real runs to compare: a tiny character sheet at each step count, scored.

    Used by notebooks/05_compare_runs.ipynb when no runs exist (offline, a few seconds)."""
    from .models import pipeline
    from .phases import character_sheet

    pipeline("sd", models)  # load first, so the first step count's time is not the model load
    root = Path(root).expanduser().resolve()
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S")
    for n in steps:
        out = root / f"{stamp}-demo-steps_{n:03d}"
        result = character_sheet(
            prompt, seed=seed, steps=n, width=size, height=size, models=models, output_dir=out, display=None
        )
        if score:
            from .quality import record_quality, score_output_dir

            record_quality(result.output_dir, score_output_dir(result.output_dir))
    return root
