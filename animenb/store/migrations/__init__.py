"""Schema migrations: one file per migration, applied in order by `Migrator`.

Each `migration_NNN_*.py` defines a callable class taking a cursor and a
`build_migration()` returning a `Migration(from_version, to_version, callback)`.
A migration never commits: the migrator runs all pending ones in one transaction,
records `PRAGMA user_version`, and backs the database file up first
(`<db>.v<from>.bak`) when it already holds data.
"""

from __future__ import annotations

import importlib
import pkgutil
import shutil
import sqlite3
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from ..jobs_common import StoreError


class MigrationError(StoreError):
    """A migration failed; the database was rolled back (a backup sits beside it)."""


@dataclass(frozen=True)
class Migration:
    from_version: int
    to_version: int
    callback: Callable[[sqlite3.Cursor], None]


def discover() -> list[Migration]:
    migrations = []
    for info in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
        if info.name.startswith("migration_"):
            migrations.append(importlib.import_module(f"{__name__}.{info.name}").build_migration())
    for before, after in zip(migrations, migrations[1:]):
        if after.from_version != before.to_version:
            raise MigrationError(f"migrations do not chain: {before.to_version} -> {after.from_version}")
    return migrations


class Migrator:
    def __init__(self, db, migrations: list[Migration] | None = None):
        self.db = db
        self.migrations = migrations if migrations is not None else discover()

    @property
    def latest(self) -> int:
        return self.migrations[-1].to_version if self.migrations else 0

    def version(self) -> int:
        with self.db.transaction(patient=True) as cur:  # start-up: may wait for a lock
            return cur.execute("PRAGMA user_version").fetchone()[0]

    def run(self) -> int:
        current = self.version()
        pending = [m for m in self.migrations if m.from_version >= current]
        if not pending:
            return current
        if current > 0 and self.db.path != ":memory:" and Path(self.db.path).exists():
            backup = Path(f"{self.db.path}.v{current}.bak")
            self.db.checkpoint()
            shutil.copy2(self.db.path, backup)
        try:
            with self.db.transaction(patient=True) as cur:  # start-up: may wait for a lock
                for migration in pending:
                    migration.callback(cur)
                    cur.execute(f"PRAGMA user_version = {int(migration.to_version)}")
        except Exception as exc:
            raise MigrationError(f"migration from schema {current} failed: {exc}") from exc
        return self.latest
