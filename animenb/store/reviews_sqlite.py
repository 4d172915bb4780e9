"""Reviewers' verdicts on finished outputs, in the job store's database (`SqliteReviewStore(job_store.db)`).

A person says whether an output is good or bad; one verdict per reviewer and job, the latest wins. The
gates are calibrated from them (`animenb calibrate`, animenb.quality.calibration).
"""

from __future__ import annotations

import time
from pathlib import Path

from .migrations import Migrator
from .sqlite_database import SqliteDatabase

VERDICTS = ("good", "bad")
NOTE_LIMIT = 2000


def check_review(verdict: object, note: object) -> tuple[str, str]:
    """(verdict, note) checked: verdict "good" or "bad", note a string of at most NOTE_LIMIT characters."""
    if verdict not in VERDICTS:
        raise ValueError(f"`verdict` must be one of {', '.join(VERDICTS)}, got {verdict!r}.")
    note = "" if note is None else note
    if not isinstance(note, str) or len(note) > NOTE_LIMIT:
        raise ValueError(f"`note` must be a string of at most {NOTE_LIMIT} characters.")
    return str(verdict), note


class SqliteReviewStore:
    def __init__(self, db: SqliteDatabase | str | Path = ":memory:"):
        self.db = db if isinstance(db, SqliteDatabase) else SqliteDatabase(db)
        Migrator(self.db).run()

    def record(self, job_id: str, reviewer: str, verdict: str, note: str = "") -> dict:
        """Store `reviewer`'s verdict on `job_id` (replacing their earlier one); returns the stored review."""
        verdict, note = check_review(verdict, note)
        with self.db.transaction() as cur:
            cur.execute(
                """--sql
                INSERT INTO reviews (job_id, reviewer, verdict, note, created_at) VALUES (?, ?, ?, ?, ?)
                ON CONFLICT (job_id, reviewer) DO UPDATE SET verdict = excluded.verdict, note = excluded.note,
                    created_at = excluded.created_at
                """,
                (job_id, reviewer, verdict, note, time.time()),
            )
            row = cur.execute("SELECT * FROM reviews WHERE job_id = ? AND reviewer = ?", (job_id, reviewer)).fetchone()
        return dict(row)

    def list(self, job_id: str | None = None, limit: int = 1000) -> list[dict]:
        """Reviews, newest first; of one job with `job_id`."""
        with self.db.transaction() as cur:
            if job_id is None:
                rows = cur.execute("SELECT * FROM reviews ORDER BY created_at DESC LIMIT ?", (limit,)).fetchall()
            else:
                rows = cur.execute(
                    "SELECT * FROM reviews WHERE job_id = ? ORDER BY created_at DESC LIMIT ?", (job_id, limit)
                ).fetchall()
        return [dict(r) for r in rows]
