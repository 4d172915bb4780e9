"""Schema 2: API tokens (only sha256 hashes of the secrets are stored) and an index for retention."""

from __future__ import annotations

import sqlite3

from . import Migration


class Migration2Callback:
    def __call__(self, cursor: sqlite3.Cursor) -> None:
        cursor.execute(
            """--sql
            CREATE TABLE IF NOT EXISTS tokens (
                id TEXT PRIMARY KEY,
                name TEXT NOT NULL,
                role TEXT NOT NULL CHECK (role IN ('admin', 'user')),
                secret_hash TEXT NOT NULL UNIQUE,
                created_at REAL NOT NULL,
                revoked_at REAL,
                last_used_at REAL
            )
            """
        )
        # One live token per name: a name may be reused once its token is revoked.
        cursor.execute("CREATE UNIQUE INDEX IF NOT EXISTS tokens_live_name ON tokens (name) WHERE revoked_at IS NULL")
        # `animenb gc` looks for finished jobs by age.
        cursor.execute("CREATE INDEX IF NOT EXISTS jobs_finished_at ON jobs (finished_at)")


def build_migration() -> Migration:
    return Migration(from_version=1, to_version=2, callback=Migration2Callback())
