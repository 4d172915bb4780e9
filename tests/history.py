"""A history of finished jobs for scale tests and `bench/store_scale.py`, loaded with `store.import_records`.

Every tenth job failed, every fourth belongs to one of seven users (private), the rest are anonymous
and public; phases cycle 1-2-3; one job finished every 10 s up to `now`, the newest last.
"""
from __future__ import annotations

import time
from typing import Iterator

from animenb.store import JobError, JobOutputs, JobRecord, JobStatus

OUTPUTS = JobOutputs(files=["sheet.png", "manifest.json", "notebook.ipynb"], manifest="manifest.json",
                     listed=[{"path": "sheet.png", "kind": "sheet", "media_type": "image/png", "bytes": 182_311,
                              "sha256": "0" * 64}], seed=7,
                     quality={"score": 0.82, "passed": True, "threshold": 0.7, "failures": []},
                     notebook="notebook.ipynb")
FAILED = JobError("PhaseError", "`steps` ran out of memory")
USERS = [f"user{i}" for i in range(7)]


def history_records(n: int, *, now: float | None = None, start: int = 0) -> Iterator[JobRecord]:
    now = time.time() if now is None else now
    for i in range(start, start + n):
        failed = i % 10 == 3
        private = i % 4 == 0
        finished = now - (start + n - i) * 10.0
        yield JobRecord(
            id=f"{i:032x}", seq=0, kind="phase", phase=1 + i % 3,
            status=JobStatus.FAILED if failed else JobStatus.SUCCEEDED, status_sequence=3,
            parameters={"prompt": "a girl with red hair, anime style", "seed": i, "steps": 15, "width": 512,
                        "height": 512},
            progress={"percent": 100.0, "step": 15, "total_steps": 15, "elapsed_seconds": 9.5},
            outputs=JobOutputs() if failed else OUTPUTS, error=FAILED if failed else None,
            owner=USERS[i % 7] if private else "anonymous", visibility="private" if private else "public",
            parent_id=None, attempts=1, requeues=0, worker="host:1/cuda:0", created_at=finished - 12.0,
            started_at=finished - 10.0, finished_at=finished, updated_at=finished)
