"""SQLite job store (WAL), the embedded default.

Restart policy (`recover()`, run once at start-up before any job is claimed): a job found
`running` was left by a process that died (one server process owns a database).
- It is re-queued, once, when it never produced output: its output directory holds
  nothing but the executed notebook and its record has no outputs. Re-running it is then
  equivalent to running it the first time.
- Otherwise (it wrote files, or it was already re-queued once) it becomes `lost`, with
  error {"type": "Lost", ...}: partial files are kept for inspection, and the job is
  never reported as succeeded, since nothing checked its outputs.
Queued jobs stay queued and run in their original order.

Scale: every listing is one index range per status read newest first (`list_queries`), counts come
from the trigger-kept `job_counts` table (migrations 3 and 5), and recovery reads only the running jobs, so
none of them grows with the history; tests/test_store_scale.py checks the plans at 200k jobs.
"""

from __future__ import annotations

import builtins
import json
import os
import socket
import time
import uuid
from pathlib import Path
from typing import Any, Callable, Iterable

from .jobs_base import JobStoreBase
from .jobs_common import (
    TERMINAL_STATES,
    TRANSITIONS,
    InvalidTransitionError,
    JobError,
    JobNotFoundError,
    JobOutputs,
    JobRecord,
    JobStatus,
)
from .migrations import Migrator
from .sqlite_database import SqliteDatabase

# Oldest queued job first; kept as a constant so tests can EXPLAIN QUERY PLAN the production SQL.
CLAIM_NEXT_QUERY = """--sql
    SELECT id FROM jobs WHERE status = 'queued' ORDER BY seq ASC LIMIT 1
"""
NEXT_QUEUED_QUERY = """--sql
    SELECT * FROM jobs WHERE status = 'queued' ORDER BY seq ASC LIMIT ?
"""
# The oldest queued job of each caller (`extra.turn`, else the owner): the runner takes turns between them.
QUEUED_HEADS_QUERY = """--sql
    SELECT * FROM jobs WHERE seq IN (
        SELECT MIN(seq) FROM jobs WHERE status = 'queued' GROUP BY COALESCE(json_extract(extra, '$.turn'), owner)
    ) ORDER BY seq ASC LIMIT ?
"""
# Start-up recovery reads the jobs in flight only (an index range), whatever the history.
RUNNING_QUERY = """--sql
    SELECT * FROM jobs WHERE status = 'running' ORDER BY seq
"""
QUEUE_POSITION_QUERY = """--sql
    SELECT COUNT(*) FROM jobs WHERE status = 'queued' AND seq <= ?
"""
MAX_PAGE = 500
# A bulk import keeps the pages it touches in memory rather than spilling them to the WAL mid-transaction.
IMPORT_CACHE_KIB = 256 * 1024
# One page of a listing: a range of the index matching the filters (migration 3), read newest first.
# Several statuses are one such query each, merged (an IN list would make SQLite sort every match).
LIST_QUERY = """--sql
    SELECT * FROM jobs {where} ORDER BY seq DESC LIMIT ?
"""
# Counts read the trigger-kept `job_counts` (a few rows per status and owner), never `jobs`.
COUNT_QUERY = """--sql
    SELECT IFNULL(SUM(n), 0) FROM job_counts {where}
"""
# Stats windows: jobs finished since a time, by status, from the (finished_at, status) index alone. Named:
# left to itself SQLite walks (status, seq) whole to skip sorting the groups.
FINISHED_SINCE_QUERY = """--sql
    SELECT status, COUNT(*) FROM jobs INDEXED BY jobs_finished_status WHERE finished_at >= ? GROUP BY status
"""
# Retention (`animenb gc`): finished before the cutoff, and not tied to an active parent or child
# (an orchestration still running keeps its finished steps); oldest first along the finish-time index, named
# because SQLite would otherwise read every finished job through (status, seq) and sort them.
GC_CANDIDATES_QUERY = """--sql
    SELECT * FROM jobs AS j INDEXED BY jobs_finished_status
    WHERE j.status IN ('succeeded', 'failed', 'cancelled', 'lost') AND j.finished_at < ?
      AND NOT EXISTS (SELECT 1 FROM jobs AS c WHERE c.parent_id = j.id AND c.status IN ('queued', 'running'))
      AND NOT EXISTS (SELECT 1 FROM jobs AS p WHERE p.id = j.parent_id AND p.status IN ('queued', 'running'))
    ORDER BY j.finished_at ASC LIMIT ?
"""


def _dumps(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), default=str)


def worker_name(device: str = "") -> str:
    return f"{socket.gethostname()}:{os.getpid()}" + (f"/{device}" if device else "")


class SqliteJobStore(JobStoreBase):
    def __init__(self, path: str | Path = ":memory:"):
        self.db = SqliteDatabase(path)
        self.schema_version = Migrator(self.db).run()

    # -- helpers -------------------------------------------------------------------
    @staticmethod
    def _record(row) -> JobRecord:
        error = JobError(row["error_type"], row["error_message"] or "") if row["error_type"] else None
        return JobRecord(
            id=row["id"],
            seq=row["seq"],
            kind=row["kind"],
            phase=row["phase"],
            status=JobStatus(row["status"]),
            status_sequence=row["status_sequence"],
            parameters=json.loads(row["parameters"]),
            progress=json.loads(row["progress"]),
            outputs=JobOutputs.from_dict(json.loads(row["outputs"])),
            error=error,
            owner=row["owner"],
            visibility=row["visibility"],
            parent_id=row["parent_id"],
            attempts=row["attempts"],
            requeues=row["requeues"],
            worker=row["worker"],
            created_at=row["created_at"],
            started_at=row["started_at"],
            finished_at=row["finished_at"],
            updated_at=row["updated_at"],
            extra=json.loads(row["extra"]),
        )

    @staticmethod
    def _statuses(status) -> list[str] | None:
        if status is None:
            return None
        statuses = [status] if isinstance(status, (str, JobStatus)) else list(status)
        return list(dict.fromkeys(JobStatus(s).value for s in statuses))

    @classmethod
    def _where(
        cls, status=None, owner=None, visibility=None, phase=None, top_level=False, *, table="jobs"
    ) -> tuple[list[str], list[Any]]:
        """Filters shared by `jobs` and `job_counts` (the same column names, but for `top_level`)."""
        clauses: list[str] = []
        args: list[Any] = []
        if top_level:  # `jobs` knows a child by its parent; `job_counts` keeps the flag (migration 5)
            clauses.append("parent_id IS NULL" if table == "jobs" else "top_level = 1")
        if phase is not None:
            clauses.append("phase = ?")
            args.append(int(phase))
        statuses = cls._statuses(status)
        if statuses is not None:
            clauses.append(f"status IN ({','.join('?' * len(statuses))})")
            args.extend(statuses)
        if owner is not None:
            clauses.append("owner = ?")
            args.append(owner)
        if visibility is not None:
            clauses.append("visibility = ?")
            args.append(visibility)
        return clauses, args

    @staticmethod
    def _cursor(cursor) -> int | None:
        if cursor is None:
            return None
        try:
            return int(cursor)
        except (TypeError, ValueError):
            raise ValueError(f"`cursor` must be a cursor returned by a previous page, got {cursor!r}.") from None

    def _get(self, cur, job_id: str) -> JobRecord:
        row = cur.execute("SELECT * FROM jobs WHERE id = ?", (job_id,)).fetchone()
        if row is None:
            raise JobNotFoundError(job_id)
        return self._record(row)

    # -- interface -------------------------------------------------------------------
    def create(
        self,
        *,
        phase,
        parameters,
        kind="phase",
        owner="anonymous",
        visibility="public",
        parent_id=None,
        job_id=None,
        extra=None,
    ) -> JobRecord:
        job_id = job_id or uuid.uuid4().hex
        now = time.time()
        with self.db.transaction() as cur:
            cur.execute(
                """--sql
                INSERT INTO jobs (id, kind, phase, status, status_sequence, parameters, owner, visibility,
                                  parent_id, extra, created_at, updated_at)
                VALUES (?, ?, ?, 'queued', 1, ?, ?, ?, ?, ?, ?, ?)
                """,
                (job_id, kind, phase, _dumps(parameters), owner, visibility, parent_id, _dumps(extra or {}), now, now),
            )
            return self._get(cur, job_id)

    def get(self, job_id: str) -> JobRecord:
        with self.db.read() as cur:
            return self._get(cur, job_id)

    def list_queries(
        self, *, status=None, owner=None, visibility=None, phase=None, top_level=False, limit=50, cursor=None
    ) -> list[tuple[str, list[Any]]]:
        """The SQL `list()` runs: one (query, args) per status (tests EXPLAIN these)."""
        limit = max(1, min(int(limit), MAX_PAGE))
        before = self._cursor(cursor)
        statuses = self._statuses(status)
        queries = []
        for one in [None] if statuses is None else [[s] for s in statuses]:
            clauses, args = self._where(one, owner, visibility, phase, top_level)
            if before is not None:
                clauses.append("seq < ?")
                args.append(before)
            where = f"WHERE {' AND '.join(clauses)}" if clauses else ""
            queries.append((LIST_QUERY.format(where=where), [*args, limit + 1]))
        return queries

    def list(self, *, status=None, owner=None, visibility=None, phase=None, top_level=False, limit=50, cursor=None):
        limit = max(1, min(int(limit), MAX_PAGE))
        queries = self.list_queries(
            status=status,
            owner=owner,
            visibility=visibility,
            phase=phase,
            top_level=top_level,
            limit=limit,
            cursor=cursor,
        )
        with self.db.read() as cur:
            rows = [row for sql, args in queries for row in cur.execute(sql, args).fetchall()]
        rows.sort(key=lambda row: row["seq"], reverse=True)
        records = [self._record(r) for r in rows[:limit]]
        next_cursor = str(records[-1].seq) if len(rows) > limit else None
        return records, next_cursor

    def count_query(
        self, *, status=None, owner=None, visibility=None, phase=None, top_level=False
    ) -> tuple[str, builtins.list[Any]]:
        clauses, args = self._where(status, owner, visibility, phase, top_level, table="job_counts")
        return COUNT_QUERY.format(where=f"WHERE {' AND '.join(clauses)}" if clauses else ""), args

    def count(self, *, status=None, owner=None, visibility=None, phase=None, top_level=False) -> int:
        sql, args = self.count_query(
            status=status, owner=owner, visibility=visibility, phase=phase, top_level=top_level
        )
        with self.db.read() as cur:
            return cur.execute(sql, args).fetchone()[0]

    def counts_by_status(self) -> dict[str, int]:
        counts = {s.value: 0 for s in JobStatus}
        with self.db.read() as cur:
            for status, n in cur.execute("SELECT status, SUM(n) FROM job_counts GROUP BY status"):
                counts[status] = n
        return counts

    def finished_since(self, since: float) -> dict[str, int]:
        counts = {s.value: 0 for s in TERMINAL_STATES}
        with self.db.read() as cur:
            for status, n in cur.execute(FINISHED_SINCE_QUERY, (float(since),)):
                counts[status] = n
        return counts

    def claim_next(self, worker: str) -> JobRecord | None:
        now = time.time()
        with self.db.transaction(durable=False) as cur:
            row = cur.execute(CLAIM_NEXT_QUERY).fetchone()
            if row is None:
                return None
            cur.execute(
                """--sql
                UPDATE jobs SET status = 'running', status_sequence = status_sequence + 1, attempts = attempts + 1,
                                worker = ?, started_at = ?, updated_at = ?, progress = '{}'
                WHERE id = ? AND status = 'queued'
                """,
                (worker, now, now, row["id"]),
            )
            return self._get(cur, row["id"])

    def next_queued(self, limit: int = 16) -> builtins.list[JobRecord]:
        with self.db.read() as cur:
            return [self._record(row) for row in cur.execute(NEXT_QUEUED_QUERY, (int(limit),)).fetchall()]

    def queued_heads(self, limit: int = 64) -> builtins.list[JobRecord]:
        with self.db.read() as cur:
            return [self._record(row) for row in cur.execute(QUEUED_HEADS_QUERY, (int(limit),)).fetchall()]

    def transition(
        self, job_id, status, *, error=None, outputs=None, progress=None, expected=None, worker=None
    ) -> JobRecord:
        status = JobStatus(status)
        now = time.time()
        # Only a terminal state or a re-queue must survive power loss (sqlite_database's docstring).
        durable = status is not JobStatus.RUNNING
        with self.db.transaction(durable=durable) as cur:
            current = self._get(cur, job_id)
            allowed = TRANSITIONS.get(current.status, frozenset())
            if expected is not None and current.status not in {JobStatus(s) for s in expected}:
                raise InvalidTransitionError(job_id, current.status, status)
            if current.status in TERMINAL_STATES or status not in allowed:
                raise InvalidTransitionError(job_id, current.status, status)
            sets = ["status = ?", "status_sequence = status_sequence + 1", "updated_at = ?"]
            args: list[Any] = [status.value, now]
            if status in TERMINAL_STATES:
                sets.append("finished_at = ?")
                args.append(now)
            if status is JobStatus.RUNNING:
                sets += ["started_at = ?", "attempts = attempts + 1"]
                args.append(now)
            if status is JobStatus.QUEUED:  # re-queued after a crash
                sets += ["started_at = NULL", "requeues = requeues + 1", "progress = '{}'"]
            if worker is not None:
                sets.append("worker = ?")
                args.append(worker)
            if error is not None:
                sets += ["error_type = ?", "error_message = ?"]
                args += [error.type, error.message]
            if outputs is not None:
                if not isinstance(outputs, JobOutputs):
                    raise TypeError(f"`outputs` must be a JobOutputs, got {type(outputs).__name__}.")
                sets.append("outputs = ?")
                args.append(_dumps(outputs.as_dict()))
            if progress is not None:
                sets.append("progress = ?")
                args.append(_dumps(progress))
            cur.execute(f"UPDATE jobs SET {', '.join(sets)} WHERE id = ?", (*args, job_id))
            return self._get(cur, job_id)

    def update_progress(self, job_id: str, progress: dict) -> bool:
        with self.db.transaction(durable=False) as cur:
            cur.execute(
                "UPDATE jobs SET progress = ?, updated_at = ? WHERE id = ? AND status = 'running'",
                (_dumps(progress), time.time(), job_id),
            )
            return cur.rowcount == 1

    def queue_position(self, job_id: str) -> int | None:
        with self.db.read() as cur:
            job = self._get(cur, job_id)
            if job.status is not JobStatus.QUEUED:
                return None
            return cur.execute(QUEUE_POSITION_QUERY, (job.seq,)).fetchone()[0]

    def recover(self, has_output: Callable[[JobRecord], bool]) -> builtins.list[JobRecord]:
        changed = []
        with self.db.transaction(patient=True) as cur:  # start-up: may wait for a lock
            rows = cur.execute(RUNNING_QUERY).fetchall()
            for job in map(self._record, rows):
                if job.requeues == 0 and job.outputs.is_empty and not has_output(job):
                    changed.append(self.transition(job.id, JobStatus.QUEUED))
                else:
                    why = "it had already been re-queued once" if job.requeues else "it had written output files"
                    changed.append(
                        self.transition(
                            job.id,
                            JobStatus.LOST,
                            error=JobError(
                                "Lost",
                                f"The server stopped while this job was running; "
                                f"not re-run because {why}. Partial files, if any, are kept.",
                            ),
                        )
                    )
        return changed

    def delete_finished(self, before: float, *, limit: int = 1000, dry_run: bool = False) -> builtins.list[JobRecord]:
        """Delete (and return) up to `limit` terminal jobs that finished before `before` (epoch s).

        Queued and running jobs are never candidates; the status is re-checked by the DELETE
        in the same transaction. The caller removes the output files afterwards (a crash in
        between leaves orphan files, never a row whose files are gone).
        """
        # One short write transaction per batch, so other writers get the lock in between; a dry run only reads.
        with self.db.read() if dry_run else self.db.transaction() as cur:
            jobs = [self._record(r) for r in cur.execute(GC_CANDIDATES_QUERY, (before, int(limit))).fetchall()]
            if jobs and not dry_run:
                ids = [j.id for j in jobs]
                cur.execute(
                    f"""--sql
                    DELETE FROM jobs WHERE id IN ({",".join("?" * len(ids))})
                      AND status IN ('succeeded', 'failed', 'cancelled', 'lost')
                    """,
                    ids,
                )
        return jobs

    def import_records(self, records: Iterable[JobRecord]) -> int:
        """Insert whole records as they are (a history moved from another store, a benchmark's), in one
        transaction and in the given order, which becomes their `seq` order. Returns how many."""
        rows = (
            (
                r.id,
                r.kind,
                r.phase,
                JobStatus(r.status).value,
                r.status_sequence,
                _dumps(r.parameters),
                _dumps(r.progress),
                _dumps(vars(r.outputs)),
                r.error.type if r.error else None,
                r.error.message if r.error else None,
                r.owner,
                r.visibility,
                r.parent_id,
                r.attempts,
                r.requeues,
                r.worker,
                _dumps(r.extra),
                r.created_at,
                r.started_at,
                r.finished_at,
                r.updated_at,
            )
            for r in records
        )
        with self.db.transaction() as cur, self.db.cache_size(IMPORT_CACHE_KIB):
            cur.executemany(
                """--sql
                INSERT INTO jobs (id, kind, phase, status, status_sequence, parameters, progress, outputs, error_type,
                                  error_message, owner, visibility, parent_id, attempts, requeues, worker, extra,
                                  created_at, started_at, finished_at, updated_at)
                VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
                """,
                rows,
            )
            return cur.rowcount  # executemany sums the rows it inserted (trigger writes not included)

    def close(self) -> None:
        self.db.close()
