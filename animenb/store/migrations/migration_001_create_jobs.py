"""Schema 1: the jobs table."""

from __future__ import annotations

import sqlite3

from . import Migration


class Migration1Callback:
    def __call__(self, cursor: sqlite3.Cursor) -> None:
        cursor.execute(
            """--sql
            CREATE TABLE IF NOT EXISTS jobs (
                seq INTEGER PRIMARY KEY AUTOINCREMENT,
                id TEXT NOT NULL UNIQUE,
                kind TEXT NOT NULL DEFAULT 'phase',
                phase INTEGER,
                status TEXT NOT NULL DEFAULT 'queued'
                    CHECK (status IN ('queued', 'running', 'succeeded', 'failed', 'cancelled', 'lost')),
                status_sequence INTEGER NOT NULL DEFAULT 0,
                parameters TEXT NOT NULL DEFAULT '{}',
                progress TEXT NOT NULL DEFAULT '{}',
                outputs TEXT NOT NULL DEFAULT '{}',
                error_type TEXT,
                error_message TEXT,
                owner TEXT NOT NULL DEFAULT 'anonymous',
                visibility TEXT NOT NULL DEFAULT 'public' CHECK (visibility IN ('public', 'private')),
                parent_id TEXT REFERENCES jobs (id) ON DELETE SET NULL,
                attempts INTEGER NOT NULL DEFAULT 0,
                requeues INTEGER NOT NULL DEFAULT 0,
                worker TEXT,
                extra TEXT NOT NULL DEFAULT '{}',
                created_at REAL NOT NULL,
                started_at REAL,
                finished_at REAL,
                updated_at REAL NOT NULL
            )
            """
        )
        cursor.execute("CREATE INDEX IF NOT EXISTS jobs_status_seq ON jobs (status, seq)")
        cursor.execute("CREATE INDEX IF NOT EXISTS jobs_owner_seq ON jobs (owner, seq)")
        cursor.execute("CREATE INDEX IF NOT EXISTS jobs_parent ON jobs (parent_id)")


def build_migration() -> Migration:
    return Migration(from_version=0, to_version=1, callback=Migration1Callback())
