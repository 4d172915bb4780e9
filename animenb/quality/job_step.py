"""The quality gate as a job step: scored in the phase job's own kernel, right after generation.

The job runner appends one cell calling `score_job` to a phase job's notebook
(`animenb.runner.phase_jobs.quality_cell`), so a job's executed `notebook.ipynb` shows the generation
and the gate's decision together, and the scoring costs one kernel round trip instead of a second
notebook. The figures and the metric table are for people: notebooks/04_quality.ipynb draws them for
any run directory.

`score_job` never raises on a scoring failure: the generation stands, and the manifest's "quality"
records the error (score None, passed False), as the status body shows it.
"""

from __future__ import annotations

import time
import traceback
from pathlib import Path

from ..manifest import update_manifest
from ..progress import PROGRESS_MIME, in_kernel
from .record import record_quality
from .scoring import score_output_dir


def score_job(output_dir: str | Path, *, phase: int | None = None, threshold: float | None = None) -> dict:
    """Score the run in `output_dir` and record it (quality.json, manifest "quality"); returns that entry.

    A failure to score is recorded as {"score": None, "passed": False, "threshold", "error": {type, message}}
    and returned, not raised. Interrupts (a cancelled job) still propagate.
    """
    _show_scoring()
    try:
        report = score_output_dir(output_dir, phase=phase, threshold=threshold, embed="auto")
        return record_quality(output_dir, report)
    except Exception as exc:
        entry = {
            "score": None,
            "passed": False,
            "threshold": threshold,
            "error": {"type": type(exc).__name__, "message": str(exc) or type(exc).__name__},
        }
        traceback.print_exc()
        update_manifest(Path(output_dir), quality=entry)
        return entry


def _show_scoring() -> None:
    """Tell the job runner (and a person watching) that the quality part has started; the runner keeps the
    generation's step counts for it."""
    if not in_kernel():
        return
    from IPython.display import display

    payload = {"phase": "QUALITY", "stage": "scoring", "percent": 100.0, "time": time.time(), "part": "quality"}
    display({PROGRESS_MIME: payload, "text/plain": "scoring the run against the quality gate"}, raw=True)
