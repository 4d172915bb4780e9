"""Typed job events and the in-process bus that fans them out (to WebSocket subscribers).

Every event carries the job id, a per-job `seq` (1, 2, 3... assigned by the bus in
publish order, so a client can resume with `after=seq`) and a wall-clock `time`.
`event` names the type: "state" (a snapshot, sent on connect), "queued", "started",
"progress", "finished" (terminal: status succeeded/failed/cancelled/lost).

The bus is used from the server's event loop only (the runner hops threads with
`loop.call_soon_threadsafe`); a subscriber whose callback raises is dropped.
"""

from __future__ import annotations

import logging
import time
from collections import OrderedDict, deque
from dataclasses import asdict, dataclass, field, fields
from typing import Any, Callable, ClassVar

from animenb.progress import PROGRESS_PARTS, ProgressEvent
from animenb.store import JobRecord

log = logging.getLogger(__name__)


def wire_fields(event) -> list:
    """The fields of an event class (or event) that its JSON message carries: all but those marked
    `metadata={"wire": False}`."""
    return [f for f in fields(event) if f.metadata.get("wire", True)]


@dataclass(kw_only=True)
class JobEvent:
    event: ClassVar[str] = "job"
    terminal: ClassVar[bool] = False
    job_id: str
    seq: int = 0
    time: float = field(default_factory=time.time)

    def as_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["event"] = self.event
        return data


@dataclass(kw_only=True)
class JobStateEvent(JobEvent):
    """The job's current state (the `/generation/{id}/status` body), sent first on connect."""

    event: ClassVar[str] = "state"
    state: dict[str, Any]


@dataclass(kw_only=True)
class JobQueuedEvent(JobEvent):
    event: ClassVar[str] = "queued"
    phase: int | None
    queue_position: int | None = None


@dataclass(kw_only=True)
class JobStartedEvent(JobEvent):
    event: ClassVar[str] = "started"
    phase: int | None
    device: str
    attempt: int


@dataclass(kw_only=True)
class JobProgressEvent(JobEvent):
    """One step of the notebook's progress: percent in [0, 100], ETA from the measured step rate."""

    event: ClassVar[str] = "progress"
    percent: float
    step: int
    total_steps: int
    stage: str
    stage_index: int | None = None
    stage_count: int | None = None
    eta_seconds: float | None = None
    elapsed_seconds: float | None = None
    kernel_time: float | None = None  # when the notebook published it (kernel clock)
    preview: str | None = None
    part: str = "generation"  # generation | quality | chain (animenb.progress.PROGRESS_PARTS)

    @classmethod
    def build(
        cls, job_id: str, payload: dict[str, Any], *, floor: float = 0.0, part: str | None = None
    ) -> "JobProgressEvent":
        """From a `PROGRESS_MIME` payload; percent never drops below `floor` (monotonic per job).
        `part` (what progresses) overrides the payload's, which defaults to "generation"."""

        def num(key, kind=float):
            try:
                return None if payload.get(key) is None else kind(payload[key])
            except (TypeError, ValueError):
                return None

        percent = min(100.0, max(floor, num("percent") or 0.0))
        return cls(
            job_id=job_id,
            percent=round(percent, 2),
            step=num("step", int) or 0,
            total_steps=num("total_steps", int) or 0,
            stage=str(payload.get("stage") or ""),
            stage_index=num("stage_index", int),
            stage_count=num("stage_count", int),
            eta_seconds=num("eta_seconds"),
            elapsed_seconds=num("elapsed_seconds"),
            kernel_time=num("time"),
            preview=payload.get("preview") if isinstance(payload.get("preview"), str) else None,
            part=part or (str(payload["part"]) if payload.get("part") in PROGRESS_PARTS else "generation"),
        )

    @classmethod
    def from_progress(cls, job_id: str, event: ProgressEvent) -> "JobProgressEvent":
        """A library `ProgressEvent` (e.g. a chain's) as job `job_id`'s progress event."""
        return cls(
            job_id=job_id,
            percent=event.percent,
            step=event.step,
            total_steps=event.total_steps,
            stage=event.stage,
            stage_index=event.stage_index,
            stage_count=event.stage_count,
            eta_seconds=event.eta_seconds,
            elapsed_seconds=event.elapsed_seconds,
            preview=event.preview,
            part=event.part,
        )

    def progress_dict(self) -> dict[str, Any]:
        """The `progress` object of the status body."""
        return {
            "percent": self.percent,
            "stage": self.stage,
            "part": self.part,
            "step": self.step,
            "total_steps": self.total_steps,
            "eta_seconds": self.eta_seconds,
            "elapsed_seconds": self.elapsed_seconds,
            "updated_at": self.time,
        }


@dataclass(kw_only=True)
class JobFinishedEvent(JobEvent):
    """The job is terminal: its status, error and files (relative paths). Build it with `build(job)`."""

    event: ClassVar[str] = "finished"
    terminal: ClassVar[bool] = True
    status: str
    error: dict[str, str] | None = None
    outputs: list[str] = field(default_factory=list)
    duration_seconds: float | None = None
    # The terminal record itself, for subscribers that send the status body with the event (the WebSocket)
    # without reading the store again; not part of the event's wire form.
    record: JobRecord | None = field(default=None, repr=False, compare=False, metadata={"wire": False})

    @classmethod
    def build(cls, job: JobRecord, *, duration: float | None = None, seq: int = 0) -> "JobFinishedEvent":
        """The one way to make it: from the terminal job's record (`duration`: seconds it ran here, if known)."""
        if not job.terminal:
            raise ValueError(f"`job` must be terminal, got job {job.id} {job.status.value}.")
        return cls(
            job_id=job.id,
            seq=seq,
            status=job.status.value,
            error=job.error.as_dict() if job.error else None,
            outputs=list(job.outputs.files),
            duration_seconds=None if duration is None else round(duration, 3),
            record=job,
        )

    def as_dict(self) -> dict[str, Any]:
        data = {f.name: getattr(self, f.name) for f in wire_fields(self)}
        data["error"] = dict(self.error) if self.error is not None else None
        data["outputs"] = list(self.outputs)
        data["event"] = self.event
        return data


Callback = Callable[[JobEvent], None]


class Subscription:
    __slots__ = ("job_id", "callback")

    def __init__(self, job_id: str | None, callback: Callback):
        self.job_id, self.callback = job_id, callback


class EventBus:
    """Per-job `seq`, a short per-job history for catch-up, many subscribers per job."""

    def __init__(self, history: int = 256, max_jobs: int = 512):
        self.history_size = history
        self.max_jobs = max_jobs
        self._seq: OrderedDict[str, int] = OrderedDict()
        self._history: dict[str, deque[JobEvent]] = {}
        self._subs: dict[str | None, list[Subscription]] = {}

    def subscribe(self, job_id: str | None, callback: Callback) -> Subscription:
        """Events for `job_id` (None: every job's events) go to `callback` until unsubscribed."""
        sub = Subscription(job_id, callback)
        self._subs.setdefault(job_id, []).append(sub)
        return sub

    def unsubscribe(self, sub: Subscription) -> None:
        subs = self._subs.get(sub.job_id)
        if subs and sub in subs:
            subs.remove(sub)
            if not subs:
                del self._subs[sub.job_id]

    def subscriber_count(self, job_id: str | None = None) -> int:
        return len(self._subs.get(job_id, ()))

    def last_seq(self, job_id: str) -> int:
        return self._seq.get(job_id, 0)

    def history(self, job_id: str, after: int = 0) -> list[JobEvent]:
        return [e for e in self._history.get(job_id, ()) if e.seq > after]

    def publish(self, event: JobEvent) -> JobEvent:
        job_id = event.job_id
        event.seq = self._seq.get(job_id, 0) + 1
        self._seq[job_id] = event.seq
        self._seq.move_to_end(job_id)
        if not isinstance(event, JobStateEvent):
            self._history.setdefault(job_id, deque(maxlen=self.history_size)).append(event)
        while len(self._seq) > self.max_jobs:
            old, _ = self._seq.popitem(last=False)
            self._history.pop(old, None)
        for sub in list(self._subs.get(job_id, ())) + list(self._subs.get(None, ())):
            try:
                sub.callback(event)
            except Exception:
                log.exception("event subscriber failed; dropping it")
                self.unsubscribe(sub)
        return event
