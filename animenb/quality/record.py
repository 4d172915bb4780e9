"""Write a QualityReport next to the run: `quality.json` and the "quality" entry of manifest.json."""

from __future__ import annotations

from pathlib import Path

from ..atomic import write_json
from ..manifest import MANIFEST_NAME, file_entry, read_manifest, update_manifest, utc_now
from .scoring import QualityReport

QUALITY_NAME = "quality.json"


def record_quality(output_dir: str | Path, report: QualityReport) -> dict:
    """Write `quality.json` (the full report, curves and matrices included) into `output_dir` and merge
    ``"quality": {phase, score, passed, threshold, metrics, weights, multipliers, file, scored_at}``
    into its manifest.json (which must exist). Returns the manifest's "quality" entry."""
    root = Path(output_dir)
    if not (root / MANIFEST_NAME).is_file():
        raise FileNotFoundError(f"No {MANIFEST_NAME} in {root}: score a run's output directory.")
    write_json(root / QUALITY_NAME, {**report.as_dict(), "scored_at": utc_now()})
    summary = {**report.as_dict(), "file": QUALITY_NAME, "scored_at": utc_now()}
    summary.pop("details")
    files = [f for f in read_manifest(root).get("files", []) if f.get("path") != QUALITY_NAME]
    files.append(file_entry(root, root / QUALITY_NAME, "quality"))
    update_manifest(root, quality=summary, files=files)
    return summary
