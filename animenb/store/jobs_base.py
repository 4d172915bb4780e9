"""The job store interface. Implementations: `jobs_sqlite.SqliteJobStore` (embedded default).

Contract every implementation keeps:
- `create()` is durable when it returns (the server answers 202 only after it).
- Status changes go through `transition()`/`claim_next()`, which check the current state
  inside the same transaction: terminal states (succeeded, failed, cancelled, lost) are
  final, and every change bumps the job's `status_sequence`.
- `recover()` runs once at start-up, before any job is claimed, for jobs a dead process left
  `running` (policy in `jobs_sqlite`'s docstring); nothing is ever marked succeeded there.
"""

from __future__ import annotations

import builtins
from abc import ABC, abstractmethod
from typing import Any, Callable, Iterable

from .jobs_common import JobError, JobOutputs, JobRecord, JobStatus


class JobStoreBase(ABC):
    @abstractmethod
    def create(
        self,
        *,
        phase: int | None,
        parameters: dict[str, Any],
        kind: str = "phase",
        owner: str = "anonymous",
        visibility: str = "public",
        parent_id: str | None = None,
        job_id: str | None = None,
        extra: dict[str, Any] | None = None,
    ) -> JobRecord:
        """Insert a queued job and commit; returns the stored record."""

    @abstractmethod
    def get(self, job_id: str) -> JobRecord:
        """The job, or `JobNotFoundError`."""

    @abstractmethod
    def list(
        self,
        *,
        status: str | Iterable[str] | None = None,
        owner: str | None = None,
        visibility: str | None = None,
        phase: int | None = None,
        top_level: bool = False,
        limit: int = 50,
        cursor: str | None = None,
    ) -> tuple[list[JobRecord], str | None]:
        """Newest first. Returns (page, next_cursor); pass next_cursor back for the next page.
        `top_level`: only jobs without a parent (a sweep's cells and a chain's steps left out)."""

    @abstractmethod
    def count(
        self,
        *,
        status: str | Iterable[str] | None = None,
        owner: str | None = None,
        visibility: str | None = None,
        phase: int | None = None,
        top_level: bool = False,
    ) -> int:
        """How many jobs match."""

    @abstractmethod
    def counts_by_status(self) -> dict[str, int]:
        """{status: count} for every status (zeros included)."""

    def finished_since(self, since: float) -> dict[str, int]:
        """{terminal status: jobs that reached it at or after `since` (epoch s)} (stats windows)."""
        raise NotImplementedError(f"{type(self).__name__} does not count by finish time")

    def import_records(self, records: Iterable[JobRecord]) -> int:
        """Insert whole records as they are, in order (moving a history between stores); returns how many."""
        raise NotImplementedError(f"{type(self).__name__} does not import records")

    @abstractmethod
    def claim_next(self, worker: str) -> JobRecord | None:
        """Atomically move the oldest queued job to running (attempts + 1) and return it."""

    @abstractmethod
    def next_queued(self, limit: int = 16) -> builtins.list[JobRecord]:
        """The oldest queued jobs, oldest first, without claiming them (a dispatcher that places jobs on
        slots of different kinds looks ahead, then claims one with `transition(..., expected=[QUEUED])`)."""

    def queued_heads(self, limit: int = 64) -> builtins.list[JobRecord]:
        """The oldest queued job of each caller (its `extra["turn"]`, else its owner), oldest first."""
        return self.next_queued(limit)

    @abstractmethod
    def transition(
        self,
        job_id: str,
        status: JobStatus | str,
        *,
        error: JobError | None = None,
        outputs: JobOutputs | None = None,
        progress: dict[str, Any] | None = None,
        expected: Iterable[JobStatus | str] | None = None,
        worker: str | None = None,
    ) -> JobRecord:
        """Change the status (guarded: `InvalidTransitionError` out of terminal states or, when
        `expected` is given, out of any state not in it). `worker`: who claimed it (to running)."""

    @abstractmethod
    def update_progress(self, job_id: str, progress: dict[str, Any]) -> bool:
        """Store the latest progress of a running job; False if it is no longer running."""

    @abstractmethod
    def queue_position(self, job_id: str) -> int | None:
        """1 for the next job to start, None when the job is not queued."""

    @abstractmethod
    def recover(self, has_output: Callable[[JobRecord], bool]) -> builtins.list[JobRecord]:
        """Deal with jobs left `running` by a dead process; returns the changed records."""

    def delete_finished(self, before: float, *, limit: int = 1000, dry_run: bool = False) -> builtins.list[JobRecord]:
        """Delete (and return) terminal jobs finished before `before`; never queued or running ones."""
        raise NotImplementedError(f"{type(self).__name__} does not support retention")

    @abstractmethod
    def close(self) -> None:
        """Release the database."""
