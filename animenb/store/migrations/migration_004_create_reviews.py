"""Schema 4: reviewers' verdicts on finished outputs (one per reviewer and job; the latest wins)."""

from __future__ import annotations

import sqlite3

from . import Migration


class Migration4Callback:
    def __call__(self, cursor: sqlite3.Cursor) -> None:
        cursor.execute(
            """--sql
            CREATE TABLE IF NOT EXISTS reviews (
                job_id TEXT NOT NULL,
                reviewer TEXT NOT NULL,
                verdict TEXT NOT NULL CHECK (verdict IN ('good', 'bad')),
                note TEXT NOT NULL DEFAULT '',
                created_at REAL NOT NULL,
                PRIMARY KEY (job_id, reviewer)
            )
            """
        )
        cursor.execute("CREATE INDEX IF NOT EXISTS reviews_created_at ON reviews (created_at)")


def build_migration() -> Migration:
    return Migration(from_version=3, to_version=4, callback=Migration4Callback())
