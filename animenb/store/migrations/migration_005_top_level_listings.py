"""Schema 5: listings of top-level jobs only (the gallery), as cheap as the others.

A sweep's cells and a chain's steps are children (`parent_id` set); their parent's card stands for
them, so the gallery lists `parent_id IS NULL` only.
- Partial indexes over the top-level jobs, for the gallery's two shapes (all phases, one phase),
  each ending in `seq`: a page is one range of them, however many children the history holds.
- `job_counts` gains `top_level` in its key (rebuilt, with its triggers), so the gallery's count
  still reads a few counter rows.
"""

from __future__ import annotations

import sqlite3

from . import Migration

TOP_LEVEL_INDEXES = {
    "jobs_top_visibility_status_seq": "jobs (visibility, status, seq) WHERE parent_id IS NULL",
    "jobs_top_gallery_phase_seq": "jobs (visibility, status, phase, seq) WHERE parent_id IS NULL",
}
COUNT_KEY = "status, visibility, phase, owner, top_level"
COUNT_TRIGGERS = ("jobs_count_insert", "jobs_count_delete", "jobs_count_update")


def _bump(row: str, delta: str) -> str:
    """The upsert adding `delta` to the counter of the OLD or NEW `row`."""
    return f"""INSERT INTO job_counts ({COUNT_KEY}, n)
        VALUES ({row}.status, {row}.visibility, IFNULL({row}.phase, -1), {row}.owner, {row}.parent_id IS NULL,
                {delta})
        ON CONFLICT ({COUNT_KEY}) DO UPDATE SET n = n + excluded.n;"""


class Migration5Callback:
    def __call__(self, cursor: sqlite3.Cursor) -> None:
        for name, columns in TOP_LEVEL_INDEXES.items():
            cursor.execute(f"CREATE INDEX IF NOT EXISTS {name} ON {columns}")
        for trigger in COUNT_TRIGGERS:
            cursor.execute(f"DROP TRIGGER IF EXISTS {trigger}")
        cursor.execute("DROP TABLE IF EXISTS job_counts")
        cursor.execute(
            f"""--sql
            CREATE TABLE job_counts (
                status TEXT NOT NULL,
                visibility TEXT NOT NULL,
                phase INTEGER NOT NULL,
                owner TEXT NOT NULL,
                top_level INTEGER NOT NULL,
                n INTEGER NOT NULL,
                PRIMARY KEY ({COUNT_KEY})
            ) WITHOUT ROWID
            """
        )
        cursor.execute(
            f"""--sql
            INSERT INTO job_counts ({COUNT_KEY}, n)
            SELECT status, visibility, IFNULL(phase, -1), owner, parent_id IS NULL, COUNT(*) FROM jobs
            GROUP BY 1, 2, 3, 4, 5
            """
        )
        cursor.execute(f"CREATE TRIGGER jobs_count_insert AFTER INSERT ON jobs BEGIN {_bump('NEW', '1')} END")
        cursor.execute(f"CREATE TRIGGER jobs_count_delete AFTER DELETE ON jobs BEGIN {_bump('OLD', '-1')} END")
        cursor.execute(
            f"""--sql
            CREATE TRIGGER jobs_count_update AFTER UPDATE OF status, visibility, phase, owner, parent_id ON jobs
            WHEN OLD.status IS NOT NEW.status OR OLD.visibility IS NOT NEW.visibility
                 OR OLD.phase IS NOT NEW.phase OR OLD.owner IS NOT NEW.owner
                 OR (OLD.parent_id IS NULL) IS NOT (NEW.parent_id IS NULL)
            BEGIN {_bump("OLD", "-1")} {_bump("NEW", "1")} END
            """
        )


def build_migration() -> Migration:
    return Migration(from_version=4, to_version=5, callback=Migration5Callback())
