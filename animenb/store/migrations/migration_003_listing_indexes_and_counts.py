"""Schema 3: listings cost the same whatever the history.

- One index per filter the API lists by, each ending in `seq` so a page of the newest jobs
  is one index range read backwards (`SqliteJobStore.list_queries`).
- `job_counts`: how many jobs there are per (status, visibility, phase, owner), kept by
  triggers in the same transaction as every insert, status change and delete, so counts
  read a few rows instead of the whole table. `phase` is -1 for jobs without one (a NULL
  would never match the upsert's conflict target).
- `(finished_at, status)` replaces `(finished_at)`: stats windows and retention read by
  finish time and count by status from the index alone.
The backfill is one pass over the existing rows, at upgrade time only.
"""

from __future__ import annotations

import sqlite3

from . import Migration

LISTING_INDEXES = {
    "jobs_visibility_seq": "jobs (visibility, seq)",
    "jobs_visibility_status_seq": "jobs (visibility, status, seq)",
    "jobs_gallery_phase_seq": "jobs (visibility, status, phase, seq)",
    "jobs_owner_status_seq": "jobs (owner, status, seq)",
    "jobs_finished_status": "jobs (finished_at, status)",
}
COUNT_KEY = "status, visibility, phase, owner"


def _bump(row: str, delta: str) -> str:
    """The upsert adding `delta` to the counter of the OLD or NEW `row`."""
    return f"""INSERT INTO job_counts ({COUNT_KEY}, n)
        VALUES ({row}.status, {row}.visibility, IFNULL({row}.phase, -1), {row}.owner, {delta})
        ON CONFLICT ({COUNT_KEY}) DO UPDATE SET n = n + excluded.n;"""


class Migration3Callback:
    def __call__(self, cursor: sqlite3.Cursor) -> None:
        for name, columns in LISTING_INDEXES.items():
            cursor.execute(f"CREATE INDEX IF NOT EXISTS {name} ON {columns}")
        cursor.execute("DROP INDEX IF EXISTS jobs_finished_at")  # a prefix of jobs_finished_status
        cursor.execute(
            f"""--sql
            CREATE TABLE IF NOT EXISTS job_counts (
                status TEXT NOT NULL,
                visibility TEXT NOT NULL,
                phase INTEGER NOT NULL,
                owner TEXT NOT NULL,
                n INTEGER NOT NULL,
                PRIMARY KEY ({COUNT_KEY})
            ) WITHOUT ROWID
            """
        )
        cursor.execute(
            f"""--sql
            INSERT INTO job_counts ({COUNT_KEY}, n)
            SELECT status, visibility, IFNULL(phase, -1), owner, COUNT(*) FROM jobs GROUP BY 1, 2, 3, 4
            """
        )
        cursor.execute(
            f"CREATE TRIGGER IF NOT EXISTS jobs_count_insert AFTER INSERT ON jobs BEGIN {_bump('NEW', '1')} END"
        )
        cursor.execute(
            f"CREATE TRIGGER IF NOT EXISTS jobs_count_delete AFTER DELETE ON jobs BEGIN {_bump('OLD', '-1')} END"
        )
        cursor.execute(
            f"""--sql
            CREATE TRIGGER IF NOT EXISTS jobs_count_update AFTER UPDATE OF status, visibility, phase, owner ON jobs
            WHEN OLD.status IS NOT NEW.status OR OLD.visibility IS NOT NEW.visibility
                 OR OLD.phase IS NOT NEW.phase OR OLD.owner IS NOT NEW.owner
            BEGIN {_bump("OLD", "-1")} {_bump("NEW", "1")} END
            """
        )


def build_migration() -> Migration:
    return Migration(from_version=2, to_version=3, callback=Migration3Callback())
