"""Job records, states and errors shared by every job store implementation."""
from __future__ import annotations

import enum
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from typing import Any


class JobStatus(str, enum.Enum):
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"
    LOST = "lost"

    def __str__(self) -> str:
        return self.value


TERMINAL_STATES = frozenset({JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELLED, JobStatus.LOST})
ACTIVE_STATES = frozenset({JobStatus.QUEUED, JobStatus.RUNNING})

# Allowed transitions; terminal states have none (checked inside the writing transaction).
TRANSITIONS: dict[JobStatus, frozenset[JobStatus]] = {
    JobStatus.QUEUED: frozenset({JobStatus.RUNNING, JobStatus.CANCELLED, JobStatus.FAILED, JobStatus.LOST}),
    JobStatus.RUNNING: frozenset({JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELLED, JobStatus.LOST,
                                  JobStatus.QUEUED}),  # QUEUED: re-queued after a crash (see recover())
}


class StoreError(RuntimeError):
    """The job store failed (database unreadable, migration failed...)."""


class JobNotFoundError(KeyError):
    """No job with that id."""

    def __init__(self, job_id: str):
        super().__init__(job_id)
        self.job_id = job_id

    def __str__(self) -> str:
        return f"Job not found: {self.job_id}"


class InvalidTransitionError(ValueError):
    """A status change that is not allowed, e.g. out of a terminal state."""

    def __init__(self, job_id: str, current: JobStatus, requested: JobStatus):
        super().__init__(f"Job {job_id} is {current.value}; cannot become {requested.value}")
        self.job_id, self.current, self.requested = job_id, current, requested


@dataclass(frozen=True)
class JobError:
    type: str
    message: str

    def as_dict(self) -> dict:
        return {"type": self.type, "message": self.message}


def iso(ts: float | None) -> str | None:
    if ts is None:
        return None
    return datetime.fromtimestamp(ts, timezone.utc).isoformat(timespec="milliseconds")


@dataclass(frozen=True)
class JobRecord:
    """One job row. Times are epoch seconds (`iso()` formats them)."""
    id: str
    seq: int                       # insertion order: newest first = highest seq; cursors are seqs
    kind: str                      # "phase" (orchestrations later)
    phase: int | None
    status: JobStatus
    status_sequence: int           # bumped by every status change
    parameters: dict[str, Any]
    progress: dict[str, Any]
    outputs: dict[str, Any]        # {"files": [...], "manifest": {...summary...}, "quality": {...}}
    error: JobError | None
    owner: str
    visibility: str                # "public" | "private"
    parent_id: str | None
    attempts: int                  # times the job was started
    requeues: int                  # times it was re-queued after a crash
    worker: str | None             # "host:pid/device" of the process that ran it
    created_at: float
    started_at: float | None
    finished_at: float | None
    updated_at: float
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def terminal(self) -> bool:
        return self.status in TERMINAL_STATES

    def as_dict(self) -> dict:
        data = asdict(self)
        data["status"] = self.status.value
        data["error"] = self.error.as_dict() if self.error else None
        return data
