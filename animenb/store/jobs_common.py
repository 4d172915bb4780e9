"""Job records, states and errors shared by every job store implementation."""

from __future__ import annotations

import enum
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from typing import Any, Mapping


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
    JobStatus.RUNNING: frozenset(
        {JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELLED, JobStatus.LOST, JobStatus.QUEUED}
    ),  # QUEUED: re-queued after a crash (see recover())
}


class StoreError(RuntimeError):
    """The job store failed (database unreadable, migration failed...)."""


class StoreUnavailable(StoreError):
    """A write could not happen now (the database is locked by another process, or its disk is full);
    nothing was written. The server answers 503 + Retry-After (507 when `full`); retrying may succeed."""

    def __init__(self, reason: str, *, full: bool = False):
        super().__init__(reason)
        self.reason, self.full = reason, full


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
class JobOutputs:
    """What a finished job left in outputs/<job_id>/ (a job that wrote nothing has `JobOutputs()`).

    Every kind fills `files` (every file, relative paths), and, when it wrote one, `manifest`
    ("manifest.json"), `listed` (the manifest's file entries: path, kind, media_type, bytes, sha256),
    `seed` and `quality` (the manifest's quality summary). A phase job adds `notebook` (the executed
    notebook); an orchestration parent `record` (its orchestration.json), `children` (child job ids)
    and `reason` (why the chain ended).
    """

    files: list[str] = field(default_factory=list)
    manifest: str | None = None
    listed: list[dict[str, Any]] = field(default_factory=list)
    seed: int | None = None
    quality: dict[str, Any] | None = None
    notebook: str | None = None
    record: str | None = None
    children: list[str] = field(default_factory=list)
    reason: str | None = None

    @property
    def is_empty(self) -> bool:
        return self == JobOutputs()

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any] | None) -> "JobOutputs":
        """From the stored JSON (keys this version does not know are dropped; wrong types read as unset)."""
        data = data if isinstance(data, Mapping) else {}

        def of(key: str, kind: type | tuple[type, ...]):
            value = data.get(key)
            return value if isinstance(value, kind) and not isinstance(value, bool) else None

        return cls(
            files=[f for f in of("files", list) or [] if isinstance(f, str)],
            manifest=of("manifest", str),
            listed=[f for f in of("listed", list) or [] if isinstance(f, dict)],
            seed=of("seed", int),
            quality=of("quality", dict),
            notebook=of("notebook", str),
            record=of("record", str),
            children=[c for c in of("children", list) or [] if isinstance(c, str)],
            reason=of("reason", str),
        )


@dataclass(frozen=True)
class JobRecord:
    """One job row. Times are epoch seconds (`iso()` formats them)."""

    id: str
    seq: int  # insertion order: newest first = highest seq; cursors are seqs
    kind: str  # "phase" (orchestrations later)
    phase: int | None
    status: JobStatus
    status_sequence: int  # bumped by every status change
    parameters: dict[str, Any]
    progress: dict[str, Any]
    outputs: JobOutputs
    error: JobError | None
    owner: str
    visibility: str  # "public" | "private"
    parent_id: str | None
    attempts: int  # times the job was started
    requeues: int  # times it was re-queued after a crash
    worker: str | None  # "host:pid/device" of the process that ran it
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
