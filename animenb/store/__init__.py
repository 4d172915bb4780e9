"""The job store: an interface (`jobs_base`), records and errors (`jobs_common`), SQLite (`jobs_sqlite`)."""

from .jobs_base import JobStoreBase
from .jobs_common import (
    ACTIVE_STATES,
    TERMINAL_STATES,
    InvalidTransitionError,
    JobError,
    JobNotFoundError,
    JobOutputs,
    JobRecord,
    JobStatus,
    StoreError,
    StoreUnavailable,
)
from .jobs_sqlite import SqliteJobStore

__all__ = [
    "JobStoreBase",
    "SqliteJobStore",
    "JobOutputs",
    "JobRecord",
    "JobStatus",
    "JobError",
    "TERMINAL_STATES",
    "ACTIVE_STATES",
    "StoreError",
    "StoreUnavailable",
    "JobNotFoundError",
    "InvalidTransitionError",
]
