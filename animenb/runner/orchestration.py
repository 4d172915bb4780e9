"""Server-side orchestration: one parent job drives CHARACTER_SHEET -> gate -> ANIMATION_LOOP -> gate ->
FULL_VIDEO -> gate through child jobs.

The parent is a job of kind "orchestration" (phase None). It is queued like any job; when a
worker claims it, the worker does not run a notebook: it starts an `Orchestrator` task on the
event loop and goes straight back to the queue, so the parent never holds a kernel while it
waits for its children (one warm kernel is enough). The chain policy is `animenb.orchestrate`'s
pure functions (`next_step`, `attempt_parameters`, `resolve_thresholds`, `ProgressPlan`,
`eta_seconds`), the same ones the in-process `orchestrate()` uses.

Each phase attempt is a real child job (kind "phase", `parent_id` = the parent, its own
outputs/<child_id>/): the phase notebook, then the quality notebook with the attempt's
threshold, on a warm kernel. Children jump the queue (the runner's priority list) so a chain is
not interleaved with jobs queued after it started. The child's manifest["quality"] decides the
gate; a failed gate retries the phase with `attempt_seed(seed, phase, k)` up to `max_retries`,
then the parent fails with error {"type": "QualityGateFailed", "message": <reason>}. A child that
fails for any other reason (a cell error, a dead kernel) fails the parent with that error.

Progress: the parent publishes its own `JobProgressEvent`s (percent across the chain, never
decreasing; stage "phase i/3 NAME · attempt k/n · <child stage>"; the child's step/total_steps;
ETA from the measured work rate) and persists them, so `/generation/<parent>/status` and
`/ws/job/<parent>` show the chain. `children_summary()` lists the children (id, phase, attempt,
status, score).

Cancel of the parent cancels its current child (queued or running) and stops the chain: the
parent becomes `cancelled`. A child cancelled on its own cancels the parent too.

Record: outputs/<parent_id>/orchestration.json (written after every attempt): parameters, the
children with their verdicts, status and reason. On success the final files of the passing runs
are hard-linked (copied across file systems) into outputs/<parent_id>/ with a manifest.json, so
the parent has a gallery entry of its own.

Restart policy (`recover_orchestrations`, run before the store's own `recover()`): a parent left
`running` by a dead process does not vanish. Its active children become `lost` (running) or
`cancelled` (queued), and the parent is re-queued: when a worker claims it again, it resumes
from its finished children listed in orchestration.json (their seeds are deterministic, so the
resumed chain runs exactly the attempts that were missing). After `MAX_RESUMES` re-queues a
parent becomes `lost` instead, so a chain that crashes the server cannot loop forever.
"""
from __future__ import annotations

import asyncio
import json
import logging
import os
import shutil
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from animenb.manifest import file_entry, utc_now, write_json_atomic
from animenb.orchestrate import (CHAIN, SCORING_SHARE, ProgressPlan, attempt_parameters, eta_seconds, next_step,
                                 resolve_thresholds)
from animenb.phases.catalog import get_phase
from animenb.store import InvalidTransitionError, JobError, JobNotFoundError, JobRecord, JobStatus

from .events import JobFinishedEvent, JobProgressEvent, JobStartedEvent

if TYPE_CHECKING:
    from .runner import JobRunner

log = logging.getLogger(__name__)

ORCHESTRATION_KIND = "orchestration"
RECORD_NAME = "orchestration.json"
MAX_RESUMES = 2
QUALITY_STAGE = "quality: "
# Final files linked into the parent's directory: phase -> ((child manifest outputs key, kind, name), ...)
FINAL_FILES = {
    "CHARACTER_SHEET": (("sheet", "sheet", "sheet"), ("reference", "reference", "reference")),
    "ANIMATION_LOOP": (("gif", "loop", "loop"), ("mp4", "loop_mp4", "loop"), ("webp", "webp", "loop")),
    "FULL_VIDEO": (("mp4", "video", "video"),),
}
# Request fields (validated by the orchestrate handler) passed to every phase notebook as they are.
COMMON_FIELDS = ("negative_prompt", "guidance_scale", "scheduler")


def child_info(job: JobRecord) -> dict | None:
    """The orchestration facts stored in a child's `extra` (None for other jobs)."""
    info = job.extra.get("orchestration") if isinstance(job.extra, dict) else None
    return info if isinstance(info, dict) else None


def _quality_of(job: JobRecord) -> dict | None:
    quality = job.outputs.get("quality") if isinstance(job.outputs, dict) else None
    return quality if isinstance(quality, dict) else None


def child_row(job: JobRecord) -> dict:
    """One line of the parent's `children` list."""
    info = child_info(job) or {}
    quality = _quality_of(job) or {}
    return {"job_id": job.id, "phase": job.phase, "phase_name": info.get("phase"), "attempt": info.get("attempt"),
            "seed": job.parameters.get("seed"), "status": job.status.value, "score": quality.get("score"),
            "threshold": quality.get("threshold", info.get("threshold")), "passed": quality.get("passed"),
            "error": job.error.as_dict() if job.error else None}


def read_record(out_dir: Path) -> dict | None:
    try:
        return json.loads((out_dir / RECORD_NAME).read_text())
    except (OSError, ValueError):
        return None


class Orchestrator:
    """Drives one parent job (see module docstring). Created and started by the runner."""

    def __init__(self, runner: "JobRunner", parent: JobRecord):
        self.runner = runner
        self.parent = parent
        self.params: dict[str, Any] = dict(parent.parameters)
        self.out_dir = runner.outputs_dir / parent.id
        self.max_retries = int(self.params.get("max_retries", 2))
        self.gates = resolve_thresholds(self.params.get("thresholds"))
        self.children: list[str] = []
        self.current_child: str | None = None
        self.cancel_requested = False
        self.task: asyncio.Task | None = None
        # progress across the chain
        self.plan = ProgressPlan.for_chain()
        self.units_done = 0.0
        self.fraction = 0.0
        self.percent = 0.0
        self.phase = get_phase(CHAIN[0].phase)
        self.attempt = 1
        self.last_progress: JobProgressEvent | None = None
        self._origin: tuple[float, float] | None = None
        self._persisted_at = 0.0
        self._started = time.perf_counter()

    # -- lifecycle ---------------------------------------------------------------------
    def start(self) -> asyncio.Task:
        self.task = asyncio.get_running_loop().create_task(self._run(), name=f"animenb-orchestration-{self.parent.id}")
        return self.task

    async def cancel(self) -> None:
        """Stop the chain: cancel the current child (the chain loop then ends the parent as cancelled)."""
        self.cancel_requested = True
        child = self.current_child
        if child is not None:
            await self.runner.cancel(child)

    # -- the chain ------------------------------------------------------------------------
    async def _run(self) -> None:
        runner, parent = self.runner, self.parent
        runner.bus.publish(JobStartedEvent(job_id=parent.id, phase=None, device="orchestrator",
                                           attempt=parent.attempts))
        status, error, reason = JobStatus.FAILED, None, ""
        history: list[dict] = []
        passed: dict[str, str] = {}
        try:
            self.out_dir.mkdir(parents=True, exist_ok=True)
            history, passed = self._resume()
            while (step := next_step(history, self.max_retries)).action == "run":
                if self.cancel_requested:
                    raise _Stop(JobStatus.CANCELLED, JobError("Cancelled", "Cancelled before "
                                                              f"{step.phase} attempt {step.attempt} started."))
                self.phase, self.attempt, self.fraction = get_phase(step.phase), step.attempt, 0.0
                child = self._submit_child(step.phase, step.attempt, passed)
                self._save_record(history, "running", "")  # the child is on record before it runs
                self._emit("queued")
                done = await self._wait_child(child)
                history_row = self._verdict(done)
                history.append(history_row)
                if history_row["passed"]:
                    passed[step.phase] = str(runner.outputs_dir / done.id)
                self._end_attempt(history_row)
                self._save_record(history, "running", "")
            status = JobStatus.SUCCEEDED if step.action == "succeeded" else JobStatus.FAILED
            reason = step.reason
            if status is JobStatus.FAILED:
                error = JobError("QualityGateFailed", reason)
        except _Stop as stop:
            status, error, reason = stop.status, stop.error, stop.error.message
        except asyncio.CancelledError:
            # The server is stopping: the parent stays `running`; recover_orchestrations decides at the next start.
            self._save_record(history, "running", "server stopped")
            raise
        except Exception as exc:  # a bug or a store failure: never leave the parent running
            log.exception("orchestration %s failed", parent.id)
            status, error, reason = JobStatus.FAILED, JobError(type(exc).__name__, str(exc) or type(exc).__name__), \
                str(exc)
        self._finish(history, passed, status, error, reason)

    def _resume(self) -> tuple[list[dict], dict[str, str]]:
        """History and passing runs from the children a previous process finished (restart policy)."""
        history: list[dict] = []
        passed: dict[str, str] = {}
        record = read_record(self.out_dir)
        if not record:
            self._save_record(history, "running", "")
            return history, passed
        for child_id in record.get("children", []):
            try:
                job = self.runner.store.get(child_id)
            except JobNotFoundError:
                continue
            self.children.append(job.id)
            row = self._verdict(job, strict=False)
            if row is None:
                continue
            history.append(row)
            if row["passed"]:
                passed[row["phase"]] = str(self.runner.outputs_dir / job.id)
            self.phase, self.attempt = get_phase(row["phase"]), row["attempt"]
            self._end_attempt(row, emit=False)
        log.info("orchestration %s resumes after %d finished attempt(s)", self.parent.id, len(history))
        self._save_record(history, "running", "")
        return history, passed

    def _submit_child(self, phase: str, attempt: int, passed: dict[str, str]) -> JobRecord:
        p = self.params
        common = {k: p[k] for k in COMMON_FIELDS if p.get(k) is not None}
        values = attempt_parameters(phase, attempt, prompt=p["prompt"], seed=int(p["seed"]), root=self.out_dir,
                                    passed=passed, steps=int(p.get("steps", 15)), width=p.get("width"),
                                    height=p.get("height"), reference_image=p.get("reference_image"),
                                    phase_options={phase: common})
        values.pop("output_dir")   # the runner gives every job outputs/<job_id>/
        values.pop("models")       # ... and the server's model profile
        for key in ("width", "height"):
            if values.get(key) is None:
                values.pop(key, None)
        info = {"parent_id": self.parent.id, "phase": phase, "attempt": attempt, "threshold": self.gates[phase]}
        child = self.runner.submit(values, phase=get_phase(phase).id, owner=self.parent.owner,
                                   visibility=self.parent.visibility, parent_id=self.parent.id,
                                   extra={"orchestration": info}, priority=True)
        self.children.append(child.id)
        self.current_child = child.id
        return child

    async def _wait_child(self, child: JobRecord) -> JobRecord:
        """Until the child is terminal, relaying its progress to the parent."""
        loop = asyncio.get_running_loop()
        done: asyncio.Future = loop.create_future()

        def on_event(event) -> None:
            if isinstance(event, JobProgressEvent):
                self._on_child_progress(event)
            elif isinstance(event, JobStartedEvent):
                self._emit("starting")
            elif isinstance(event, JobFinishedEvent) and not done.done():
                done.set_result(event.status)

        sub = self.runner.bus.subscribe(child.id, on_event)
        try:
            job = self.runner.store.get(child.id)
            if not job.terminal:
                await done
        finally:
            self.runner.bus.unsubscribe(sub)
            self.current_child = None
        return self.runner.store.get(child.id)

    def _verdict(self, job: JobRecord, strict: bool = True) -> dict | None:
        """The history row of a finished child. `strict`: a child that did not succeed stops the chain
        (raises `_Stop`); otherwise (resuming) it is skipped and its attempt runs again."""
        info = child_info(job) or {}
        if job.status is not JobStatus.SUCCEEDED:
            if not strict:
                return None
            where = f"{info.get('phase')} attempt {info.get('attempt')} (job {job.id})"
            if job.status is JobStatus.CANCELLED or self.cancel_requested:
                raise _Stop(JobStatus.CANCELLED, JobError("Cancelled", f"Cancelled during {where}."))
            message = job.error.message if job.error else job.status.value
            raise _Stop(JobStatus.FAILED, JobError(job.error.type if job.error else "ChildFailed",
                                                   f"{where} {job.status.value}: {message}"))
        quality = _quality_of(job) or {}
        return {"phase": info.get("phase"), "attempt": int(info.get("attempt") or 1), "job_id": job.id,
                "seed": job.parameters.get("seed"), "score": quality.get("score"),
                "threshold": quality.get("threshold", info.get("threshold")),
                "passed": bool(quality.get("passed")), "error": quality.get("error")}

    # -- progress -----------------------------------------------------------------------
    def _units_now(self) -> float:
        index = self.plan.index
        current = self.plan.units[index] if index < len(self.plan.units) else 0.0
        return self.units_done + self.fraction * current

    def _on_child_progress(self, event: JobProgressEvent) -> None:
        if event.stage.startswith(QUALITY_STAGE):
            fraction = (1.0 - SCORING_SHARE) + SCORING_SHARE * event.percent / 100.0
            stage = "scoring: " + event.stage[len(QUALITY_STAGE):]
        else:
            fraction = (1.0 - SCORING_SHARE) * event.percent / 100.0
            stage = event.stage
        self.fraction = max(self.fraction, min(1.0, fraction))
        if self._origin is None and event.step >= 1:
            self._origin = (time.perf_counter(), self._units_now())
        self._emit(stage, step=event.step, total=event.total_steps, preview=event.preview)

    def _end_attempt(self, row: dict, emit: bool = True) -> None:
        self.fraction = 1.0
        score = "not scored" if row.get("score") is None else f"{row['score']:.3f}"
        if emit:
            self._emit(f"gate {'passed' if row['passed'] else 'failed'} ({score})")
        self.units_done += self.plan.units[self.plan.index] if self.plan.index < len(self.plan.units) else 0.0
        self.plan = self.plan.advance() if row["passed"] else self.plan.retry()
        self.fraction = 0.0
        self.percent = max(self.percent, self.plan.percent(0.0))

    def eta(self) -> float | None:
        if self._origin is None:
            return None
        t0, u0 = self._origin
        eta = eta_seconds(self._units_now() - u0, self.plan.remaining_units(self.fraction), time.perf_counter() - t0)
        return None if eta is None else round(eta, 3)

    def _emit(self, inner: str, step: int = 0, total: int = 0, preview: str | None = None) -> None:
        self.percent = max(self.percent, round(self.plan.percent(self.fraction), 2))
        stage = (f"phase {self.phase.id}/{len(CHAIN)} {self.phase.name} · attempt {self.attempt}/"
                 f"{self.max_retries + 1} · {inner}")
        event = JobProgressEvent(job_id=self.parent.id, percent=self.percent, step=step, total_steps=total,
                                 stage=stage, stage_index=self.phase.id, stage_count=len(CHAIN),
                                 eta_seconds=self.eta(), elapsed_seconds=round(time.perf_counter() - self._started, 3),
                                 preview=preview)
        self.last_progress = event
        self.runner.bus.publish(event)
        now = time.monotonic()
        if now - self._persisted_at >= self.runner.progress_interval or not step:
            self._persisted_at = now
            self.runner.store.update_progress(self.parent.id, self.progress_dict())

    def progress_dict(self) -> dict:
        data = self.last_progress.progress_dict() if self.last_progress else {"percent": self.percent}
        data.update(phase=self.phase.name, attempt=self.attempt, current_child=self.current_child)
        return data

    # -- record and outcome -----------------------------------------------------------------
    def _save_record(self, history: list[dict], status: str, reason: str) -> None:
        params = {k: v for k, v in self.params.items()}
        record = {"kind": ORCHESTRATION_KIND, "job_id": self.parent.id, "status": status, "reason": reason,
                  "updated_at": utc_now(), "parameters": params, "max_retries": self.max_retries,
                  "thresholds": self.gates, "chain": [link.phase for link in CHAIN],
                  "children": list(self.children), "attempts": history}
        try:
            write_json_atomic(self.out_dir / RECORD_NAME, record)
        except OSError:
            log.exception("orchestration %s: could not write %s", self.parent.id, RECORD_NAME)

    def _link_finals(self, passed: dict[str, str]) -> list[dict]:
        """Hard-link (or copy) the passing runs' final files into the parent's directory."""
        entries = []
        for phase, wanted in FINAL_FILES.items():
            if phase not in passed:
                continue
            run = Path(passed[phase])
            try:
                outputs = json.loads((run / "manifest.json").read_text()).get("outputs", {})
            except (OSError, ValueError):
                continue
            for key, kind, stem in wanted:
                rel = outputs.get(key)
                if not isinstance(rel, str) or not (run / rel).is_file():
                    continue
                target = self.out_dir / f"{stem}{Path(rel).suffix}"
                try:
                    if target.exists():
                        target.unlink()
                    try:
                        os.link(run / rel, target)
                    except OSError:
                        shutil.copy2(run / rel, target)
                    entries.append(file_entry(self.out_dir, target, kind))
                except OSError:
                    log.exception("orchestration %s: could not link %s", self.parent.id, run / rel)
        return entries

    def _finish(self, history: list[dict], passed: dict[str, str], status: JobStatus, error: JobError | None,
                reason: str) -> None:
        runner, parent = self.runner, self.parent
        self._save_record(history, status.value, reason)
        files = self._link_finals(passed) if status is JobStatus.SUCCEEDED else []
        final: dict[str, dict] = {}
        for row in history:
            final[row["phase"]] = row
        scores = [r["score"] for r in final.values() if r.get("score") is not None]
        quality = {"score": min(scores) if scores else None, "passed": status is JobStatus.SUCCEEDED,
                   "threshold": None,
                   "phases": {p: {k: r.get(k) for k in ("score", "threshold", "passed", "attempt", "job_id")}
                              for p, r in final.items()}}
        if files:
            manifest = {"phase": {"id": None, "name": "ORCHESTRATION"}, "created_at": utc_now(),
                        "parameters": self.params, "seed": self.params.get("seed"), "status": status.value,
                        "reason": reason, "children": list(self.children), "record": RECORD_NAME,
                        "files": files, "quality": quality}
            try:
                write_json_atomic(self.out_dir / "manifest.json", manifest)
            except OSError as exc:  # e.g. a full disk: the parent fails clearly instead of staying running
                log.exception("orchestration %s: could not write manifest.json", parent.id)
                files, status = [], JobStatus.FAILED
                reason = f"could not write the orchestration's manifest.json: {exc}"
                error = JobError(type(exc).__name__, reason)
        outputs = {"files": runner_output_files(self.out_dir), "manifest": "manifest.json" if files else None,
                   "listed": files, "seed": self.params.get("seed"), "record": RECORD_NAME,
                   "children": list(self.children), "reason": reason, "quality": quality}
        progress = self.progress_dict()
        stage = "done" if status is JobStatus.SUCCEEDED else status.value
        progress.update(stage=f"{stage}: {reason}" if reason else stage, current_child=None)
        if status is JobStatus.SUCCEEDED:
            progress.update(percent=100.0, eta_seconds=0.0)
        try:
            job = runner.store.transition(parent.id, status, error=error, outputs=outputs, progress=progress)
        except InvalidTransitionError:
            job = runner.store.get(parent.id)
        runner.orchestrations.pop(parent.id, None)
        runner._publish_finished(job, duration=time.perf_counter() - self._started)

    def children_summary(self) -> list[dict]:
        return children_summary(self.runner.store, self.children)


class _Stop(Exception):
    def __init__(self, status: JobStatus, error: JobError):
        super().__init__(error.message)
        self.status, self.error = status, error


def runner_output_files(out_dir: Path) -> list[str]:
    from .runner import output_files

    return output_files(out_dir)


def children_summary(store, child_ids: list[str]) -> list[dict]:
    rows = []
    for child_id in child_ids:
        try:
            rows.append(child_row(store.get(child_id)))
        except JobNotFoundError:
            rows.append({"job_id": child_id, "status": "unknown"})
    return rows


def children_of(runner: "JobRunner", parent: JobRecord) -> list[dict] | None:
    """The parent's children rows (None when `parent` is not an orchestration)."""
    if parent.kind != ORCHESTRATION_KIND:
        return None
    live = runner.orchestrations.get(parent.id)
    if live is not None:
        return live.children_summary()
    ids = parent.outputs.get("children") if isinstance(parent.outputs, dict) else None
    if not isinstance(ids, list):
        record = read_record(runner.outputs_dir / parent.id) or {}
        ids = record.get("children", [])
    return children_summary(runner.store, [i for i in ids if isinstance(i, str)])


def recover_orchestrations(runner: "JobRunner") -> list[JobRecord]:
    """Restart policy for parents a dead process left running (module docstring). Runs before the
    store's `recover()`, so their children are settled here, not re-queued as orphans."""
    store = runner.store
    changed: list[JobRecord] = []
    cursor = None
    parents: list[JobRecord] = []
    while True:
        page, cursor = store.list(status="running", limit=500, cursor=cursor)
        parents += [j for j in page if j.kind == ORCHESTRATION_KIND]
        if cursor is None:
            break
    active: list[JobRecord] = []  # children are found by parent_id too, in case the record missed one
    if parents:
        cursor = None
        while True:
            page, cursor = store.list(status=["queued", "running"], limit=500, cursor=cursor)
            active += [j for j in page if j.parent_id]
            if cursor is None:
                break
    for parent in parents:
        record = read_record(runner.outputs_dir / parent.id) or {}
        ids = [i for i in record.get("children", []) if isinstance(i, str)]
        ids += [j.id for j in active if j.parent_id == parent.id and j.id not in ids]
        for child_id in ids:
            try:
                child = store.get(child_id)
            except JobNotFoundError:
                continue
            try:
                if child.status is JobStatus.RUNNING:
                    changed.append(store.transition(child.id, JobStatus.LOST, error=JobError(
                        "Lost", f"The server stopped while this job ran for orchestration {parent.id}; "
                                "the orchestration runs this attempt again.")))
                elif child.status is JobStatus.QUEUED:
                    changed.append(store.transition(child.id, JobStatus.CANCELLED, error=JobError(
                        "Cancelled", f"The server stopped before this job ran for orchestration {parent.id}; "
                                     "the orchestration runs this attempt again.")))
            except InvalidTransitionError:
                pass
        try:
            if parent.requeues < MAX_RESUMES:
                changed.append(store.transition(parent.id, JobStatus.QUEUED))
            else:
                changed.append(store.transition(parent.id, JobStatus.LOST, error=JobError(
                    "Lost", f"The server stopped while this orchestration ran, {parent.requeues + 1} times; "
                            "not resumed again. Finished children are kept.")))
        except InvalidTransitionError:
            pass
    return changed
