"""Retention: delete finished jobs older than a cutoff, with their output files and thumbnails.

    from animenb.retention import collect_garbage, parse_age
    report = collect_garbage(store, outputs_dir, older_than=parse_age("7d"), thumbnails_dir=home / "thumbnails")

Used by `animenb gc --older-than 7d` and `POST /api/anime/admin/gc`. Safe by construction:

- Only terminal jobs (succeeded, failed, cancelled, lost) whose `finished_at` is before the
  cutoff are candidates; queued and running jobs never are, and an orchestration step is
  kept while its parent (or a child) is still active. The store re-checks the status in
  the DELETE's own transaction (`SqliteJobStore.delete_finished`).
- Rows go first, then files. A crash in between leaves orphan files (swept by the next
  run: output directories named like a job id, with no row, older than the cutoff), never a
  row that claims outputs which are gone.
- Only paths inside `outputs_dir` / `thumbnails_dir` named by a 32-hex job id are removed.
"""

from __future__ import annotations

import math
import re
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from animenb.store import JobNotFoundError

AGE_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhdw])\s*$")
UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
JOB_DIR_RE = re.compile(r"^[0-9a-f]{32}$")


def parse_age(text: str | int | float) -> float:
    """'7d', '12h', '30m', '45s', '2w' -> seconds (a bare number is seconds)."""
    if isinstance(text, (int, float)) and not isinstance(text, bool):
        seconds = float(text) if abs(text) < 1e300 else math.inf
        if not math.isfinite(seconds) or seconds < 0:
            raise ValueError(f"`older_than` must be a finite number of seconds >= 0, got {text!r}.")
        return seconds
    m = AGE_RE.match(str(text))
    if not m:
        raise ValueError(f"`older_than` must look like 7d, 12h, 30m, 45s or 2w, got {text!r}.")
    seconds = float(m[1]) * UNITS[m[2]]
    if not math.isfinite(seconds):
        raise ValueError(f"`older_than` is too large, got {text!r}.")
    return seconds


def dir_bytes(path: Path) -> int:
    total = 0
    if path.is_dir():
        for p in path.rglob("*"):
            try:
                if p.is_file() and not p.is_symlink():
                    total += p.stat().st_size
            except OSError:
                pass
    return total


@dataclass
class GcReport:
    cutoff: float
    dry_run: bool
    jobs: list[str] = field(default_factory=list)  # deleted (or, dry run, deletable) job ids
    orphans: list[str] = field(default_factory=list)  # output directories without a job row
    bytes_freed: int = 0
    errors: list[str] = field(default_factory=list)

    def as_dict(self) -> dict:
        data = asdict(self)
        data["deleted_jobs"] = len(self.jobs)
        return data


def _remove(path: Path, root: Path, report: GcReport, dry_run: bool) -> None:
    if not path.exists() or path.resolve().parent != root.resolve() or not JOB_DIR_RE.match(path.name):
        return
    report.bytes_freed += dir_bytes(path)
    if dry_run:
        return
    try:
        shutil.rmtree(path)
    except OSError as exc:
        report.errors.append(f"{path}: {exc}")


def collect_garbage(
    store,
    outputs_dir: str | Path,
    *,
    older_than: float,
    thumbnails_dir: str | Path | None = None,
    dry_run: bool = False,
    now: float | None = None,
    batch: int = 500,
) -> GcReport:
    outputs_dir = Path(outputs_dir)
    thumbs = Path(thumbnails_dir) if thumbnails_dir else None
    cutoff = (time.time() if now is None else now) - older_than
    report = GcReport(cutoff=cutoff, dry_run=dry_run)
    while True:
        jobs = store.delete_finished(cutoff, limit=batch, dry_run=dry_run)
        for job in jobs:
            report.jobs.append(job.id)
            _remove(outputs_dir / job.id, outputs_dir, report, dry_run)
            if thumbs is not None:
                _remove(thumbs / job.id, thumbs, report, dry_run)
        if dry_run or len(jobs) < batch:
            break
    # Orphans: job-named directories with no row (a crash between row and files, or rows deleted elsewhere).
    seen = set(report.jobs)
    for root in [outputs_dir] + ([thumbs] if thumbs is not None else []):
        if not root.is_dir():
            continue
        for path in root.iterdir():
            if not path.is_dir() or not JOB_DIR_RE.match(path.name) or path.name in seen:
                continue
            try:
                store.get(path.name)
                continue
            except JobNotFoundError:
                pass
            try:
                if path.stat().st_mtime >= cutoff:
                    continue  # a job being created right now has a row; young orphans are left alone
            except OSError:
                continue
            report.orphans.append(path.name)
            _remove(path, root, report, dry_run)
    return report
