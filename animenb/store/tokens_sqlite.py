"""SQLite token store, sharing the job store's database (`SqliteTokenStore(job_store.db)`) or its own file.

Lookups go by the sha256 of the presented token (a unique index), so a revoked token
stops working on the next request, in every process using the database.
"""

from __future__ import annotations

import secrets
import sqlite3
import time
from pathlib import Path

from .jobs_common import StoreUnavailable
from .migrations import Migrator
from .sqlite_database import SqliteDatabase
from .tokens_base import TOKEN_PREFIX, TokenError, TokenRecord, TokenStoreBase, check_name, check_role, hash_secret

# `last_used_at` is written at most once a minute per token (a read-mostly path).
LAST_USED_RESOLUTION = 60.0


class SqliteTokenStore(TokenStoreBase):
    def __init__(self, db: SqliteDatabase | str | Path = ":memory:"):
        self.db = db if isinstance(db, SqliteDatabase) else SqliteDatabase(db)
        self._owns_db = not isinstance(db, SqliteDatabase)
        Migrator(self.db).run()

    @staticmethod
    def _record(row) -> TokenRecord:
        return TokenRecord(
            id=row["id"],
            name=row["name"],
            role=row["role"],
            created_at=row["created_at"],
            revoked_at=row["revoked_at"],
            last_used_at=row["last_used_at"],
        )

    def create(self, name: str, role: str = "user") -> tuple[TokenRecord, str]:
        check_name(name)
        check_role(role)
        token_id = secrets.token_hex(4)
        token = f"{TOKEN_PREFIX}{token_id}_{secrets.token_urlsafe(32)}"
        try:
            with self.db.transaction() as cur:
                cur.execute(
                    """--sql
                    INSERT INTO tokens (id, name, role, secret_hash, created_at) VALUES (?, ?, ?, ?, ?)
                    """,
                    (token_id, name, role, hash_secret(token), time.time()),
                )
                row = cur.execute("SELECT * FROM tokens WHERE id = ?", (token_id,)).fetchone()
        except sqlite3.IntegrityError:
            raise TokenError(
                f"`{name}` already has a live token; revoke it first (`animenb token revoke {name}`)."
            ) from None
        return self._record(row), token

    def authenticate(self, token: str) -> TokenRecord | None:
        if type(token) is not str or not token.startswith(TOKEN_PREFIX) or len(token) > 200:
            return None
        with self.db.read() as cur:
            row = cur.execute(
                "SELECT * FROM tokens WHERE secret_hash = ? AND revoked_at IS NULL", (hash_secret(token),)
            ).fetchone()
        if row is None:
            return None
        now = time.time()
        if row["last_used_at"] is None or now - row["last_used_at"] > LAST_USED_RESOLUTION:
            try:
                with self.db.transaction(durable=False) as cur:
                    cur.execute("UPDATE tokens SET last_used_at = ? WHERE id = ?", (now, row["id"]))
            except StoreUnavailable:
                pass  # a hint for operators: a locked database must not refuse a valid token
        return self._record(row)

    def revoke(self, name_or_id: str) -> TokenRecord:
        with self.db.transaction() as cur:
            row = cur.execute(
                "SELECT * FROM tokens WHERE (name = ? OR id = ?) AND revoked_at IS NULL", (name_or_id, name_or_id)
            ).fetchone()
            if row is None:
                raise TokenError(f"No live token named or with id {name_or_id!r}.")
            cur.execute("UPDATE tokens SET revoked_at = ? WHERE id = ?", (time.time(), row["id"]))
            return self._record(cur.execute("SELECT * FROM tokens WHERE id = ?", (row["id"],)).fetchone())

    def list(self, *, include_revoked: bool = False) -> list[TokenRecord]:
        where = "" if include_revoked else "WHERE revoked_at IS NULL"
        with self.db.transaction() as cur:
            return [self._record(r) for r in cur.execute(f"SELECT * FROM tokens {where} ORDER BY created_at")]

    def close(self) -> None:
        if self._owns_db:
            self.db.close()
