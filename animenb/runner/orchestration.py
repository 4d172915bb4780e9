"""Server-side orchestration: one parent job drives CHARACTER_SHEET -> gate -> ANIMATION_LOOP -> gate ->
FULL_VIDEO -> gate through child jobs.

The parent is a job of kind "orchestration" (phase None), run by `OrchestrationDriver` (the
runner's job-kind registry). It is queued like any job; when the runner claims it, no notebook
runs: the driver starts an `Orchestrator` task on the event loop and the runner goes straight back to
the queue, so the parent never holds a slot while it waits for its children (one warm slot is
enough). The chain's loop (policy, retries, thresholds, progress, record) is `animenb.chain.ChainRun`,
the same the in-process `orchestrate()` runs: this module runs each attempt as a child job, waits for
it and applies the restart policy.

Each phase attempt is a real child job (kind "phase", `parent_id` = the parent, its own
outputs/<child_id>/): the phase notebook, scored in the same kernel with the attempt's threshold
(the child's own `extra["quality_threshold"]`), on a warm slot. Children jump the queue (the
runner's priority list) so a chain is not interleaved with jobs queued after it started. The
child's manifest["quality"] decides the gate; when the retries run out the parent fails with error
{"type": "QualityGateFailed", "message": <reason>}. A child that fails for any other reason (a cell
error, a dead kernel) fails the parent with that error.

Progress: the parent publishes its own `JobProgressEvent`s (part "chain", the chain's progress fed
with the children's events) and persists them, so `/generation/<parent>/status` and
`/ws/job/<parent>` show the chain. `children_summary()` lists the children (id, phase, attempt,
status, score).

Cancel of the parent cancels its current child (queued or running) and stops the chain: the
parent becomes `cancelled`. A child cancelled on its own cancels the parent too.

Record: outputs/<parent_id>/orchestration.json (`animenb.chain.ChainRecord`, written after every
attempt). When the policy ends the chain (succeeded, or a failed gate) the final files of the
passing runs are hard-linked (copied across file systems) into outputs/<parent_id>/ and the
parent's manifest.json is written (`animenb.chain.parent_manifest`: the in-process shape), so a
succeeded parent has a gallery entry of its own.

Restart policy (`recover_orchestrations`, run before the store's own `recover()`): a parent left
`running` by a dead process does not vanish. Its active children become `lost` (running) or
`cancelled` (queued), and the parent is re-queued: when the runner claims it again, it resumes
from its finished children listed in orchestration.json (their seeds are deterministic, so the
resumed chain runs exactly the attempts that were missing). After `MAX_RESUMES` re-queues a
parent becomes `lost` instead, so a chain that crashes the server cannot loop forever.
"""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
import time
from pathlib import Path
from typing import Any, Callable

from animenb.chain import (
    CHAIN,
    MAX_RETRIES,
    RECORD_KIND,
    RECORD_NAME,
    Attempt,
    AttemptOutcome,
    ChainRun,
    final_files,
    parent_quality,
    read_record,
)
from animenb.manifest import MANIFEST_NAME
from animenb.phases.catalog import get_phase
from animenb.progress import ProgressEvent
from animenb.store import InvalidTransitionError, JobError, JobNotFoundError, JobOutputs, JobRecord, JobStatus

from .drivers import JobDriver, JobHost, output_files, running_jobs
from .events import JobFinishedEvent, JobProgressEvent, JobStartedEvent
from .executors import Slot

log = logging.getLogger(__name__)

ORCHESTRATION_KIND = RECORD_KIND
MAX_RESUMES = 2
# Request fields (validated with POST /orchestrate's body) passed to every phase notebook as they are.
COMMON_FIELDS = ("negative_prompt", "guidance_scale", "scheduler")


def child_info(job: JobRecord) -> dict | None:
    """The orchestration facts stored in a child's `extra` (None for other jobs)."""
    info = job.extra.get("orchestration")
    return info if isinstance(info, dict) else None


def child_attempt(job: JobRecord) -> tuple[str, int]:
    """(phase name, attempt number) of a child job."""
    info = child_info(job) or {}
    phase = info.get("phase") or job.phase
    if phase is None:
        raise ValueError(f"Job {job.id} is not a phase attempt of an orchestration.")
    return get_phase(phase).name, int(info.get("attempt") or 1)


def child_row(job: JobRecord) -> dict:
    """One line of the parent's `children` list."""
    info = child_info(job) or {}
    quality = job.outputs.quality or {}
    return {
        "job_id": job.id,
        "phase": job.phase,
        "phase_name": info.get("phase"),
        "attempt": info.get("attempt"),
        "seed": job.parameters.get("seed"),
        "status": job.status.value,
        "score": quality.get("score"),
        "threshold": quality.get("threshold", job.extra.get("quality_threshold")),
        "passed": quality.get("passed"),
        "error": job.error.as_dict() if job.error else None,
    }


class Orchestrator:
    """Drives one parent job (see module docstring): the chain's loop is `animenb.chain.ChainRun`; this
    runs each attempt as a child job. Created and started by `OrchestrationDriver`; `on_finish(parent_id)`
    runs once the parent is terminal in the store, before its finished event."""

    def __init__(self, runner: JobHost, parent: JobRecord, on_finish: Callable[[str], None] | None = None):
        self.runner = runner
        self.parent = parent
        self.on_finish = on_finish
        params = dict(parent.parameters)
        common = {k: params[k] for k in COMMON_FIELDS if params.get(k) is not None}
        self.chain = ChainRun(
            runner.outputs_dir / parent.id,
            params,
            seed=int(params.get("seed") or 0),
            max_retries=int(params.get("max_retries", MAX_RETRIES.default)),
            thresholds=params.get("thresholds"),
            phase_options={link.phase: common for link in CHAIN},
            job_id=parent.id,
            publish=self._publish,
            advisory=bool(params.get("advisory_gates")),
            on_review=params.get("on_review", "continue"),
        )
        self.out_dir = self.chain.root
        self.current_child: str | None = None
        self.cancel_requested = False
        self.task: asyncio.Task | None = None
        self._persisted_at = 0.0

    @property
    def children(self) -> list[str]:
        return self.chain.record.children

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
        runner, parent, chain = self.runner, self.parent, self.chain
        runner.bus.publish(
            JobStartedEvent(job_id=parent.id, phase=None, device="orchestrator", attempt=parent.attempts)
        )
        status, error, reason = JobStatus.FAILED, None, ""
        try:
            self.out_dir.mkdir(parents=True, exist_ok=True)
            self._resume()
            while (attempt := chain.next_attempt("queued")) is not None:
                if self.cancel_requested:
                    raise _Stop(
                        JobStatus.CANCELLED,
                        JobError("Cancelled", f"Cancelled before {attempt.phase} attempt {attempt.number} started."),
                    )
                child = await self._submit_child(attempt)
                self._save_record()  # the child is on record before it runs
                outcome = self._outcome(await self._wait_child(child))
                assert outcome is not None
                chain.add(attempt, outcome)
            assert chain.ended is not None
            status = JobStatus.SUCCEEDED if chain.ended.action == "succeeded" else JobStatus.FAILED
            reason = chain.ended.reason
            if status is JobStatus.FAILED:
                error = JobError("QualityGateFailed", reason)
        except _Stop as stop:
            status, error, reason = stop.status, stop.error, stop.error.message
        except asyncio.CancelledError:
            # The server is stopping: the parent stays `running`; recover_orchestrations decides at the next start.
            chain.record.data["reason"] = "server stopped"
            self._save_record()
            raise
        except Exception as exc:  # a bug or a store failure: never leave the parent running
            log.exception("orchestration %s failed", parent.id)
            reason = self.runner.public_paths.scrub(str(exc))  # the log above keeps the absolute paths
            status, error = JobStatus.FAILED, JobError(type(exc).__name__, reason or type(exc).__name__)
        await self._finish(status, error, reason)

    def _resume(self) -> None:
        """Replay the children a previous process finished (restart policy)."""
        previous = read_record(self.out_dir)
        replayed = 0
        for child_id in (previous or {}).get("children", []):
            try:
                job = self.runner.store.get(child_id)
            except JobNotFoundError:
                continue
            self.chain.record.add_child(job.id)
            outcome = self._outcome(job, strict=False)
            if outcome is None:
                continue
            self.chain.replay(*child_attempt(job), outcome)
            replayed += 1
        if previous:
            log.info("orchestration %s resumes after %d finished attempt(s)", self.parent.id, replayed)
        self._save_record()

    async def _submit_child(self, attempt: Attempt) -> JobRecord:
        values = {
            k: v for k, v in attempt.parameters.items() if v is not None or k not in ("width", "height")
        }  # None: the notebook's own default
        extra = {
            "orchestration": {"parent_id": self.parent.id, "phase": attempt.phase, "attempt": attempt.number},
            "quality_threshold": attempt.threshold,
        }
        child = await self.runner.submit_child(
            values,
            phase=get_phase(attempt.phase).id,
            owner=self.parent.owner,
            visibility=self.parent.visibility,
            parent_id=self.parent.id,
            extra=extra,
            priority=True,
        )
        self.chain.record.add_child(child.id)
        self.current_child = child.id
        return child

    async def _wait_child(self, child: JobRecord) -> JobRecord:
        """Until the child is terminal, relaying its progress to the parent."""
        loop = asyncio.get_running_loop()
        done: asyncio.Future = loop.create_future()

        def on_event(event) -> None:
            if isinstance(event, JobProgressEvent):
                self.chain.relay(event)
            elif isinstance(event, JobStartedEvent):
                self.chain.progress.stage("starting")
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

    def _outcome(self, job: JobRecord, strict: bool = True) -> AttemptOutcome | None:
        """The gate's verdict on a finished child. `strict`: a child that did not succeed stops the chain
        (raises `_Stop`); otherwise (resuming) it is skipped (None) and its attempt runs again."""
        info = child_info(job) or {}
        if job.status is not JobStatus.SUCCEEDED:
            if not strict:
                return None
            where = f"{info.get('phase')} attempt {info.get('attempt')} (job {job.id})"
            if job.status is JobStatus.CANCELLED or self.cancel_requested:
                raise _Stop(JobStatus.CANCELLED, JobError("Cancelled", f"Cancelled during {where}."))
            message = job.error.message if job.error else job.status.value
            raise _Stop(
                JobStatus.FAILED,
                JobError(job.error.type if job.error else "ChildFailed", f"{where} {job.status.value}: {message}"),
            )
        quality = job.outputs.quality or {}
        phase, _ = child_attempt(job)
        return AttemptOutcome(
            self.runner.outputs_dir / job.id,
            quality.get("score"),
            quality.get("threshold", self.chain.thresholds.get(phase)),
            bool(quality.get("passed")),
            metrics=dict(quality.get("metrics") or {}),
            job_id=job.id,
            error=quality.get("error"),
            failures=list(quality.get("failures") or []),
            verdict=quality.get("verdict"),
        )

    # -- progress -----------------------------------------------------------------------
    def _publish(self, event: ProgressEvent, milestone: bool) -> None:
        """The chain's progress -> the parent's job event (every one) and the store (throttled steps)."""
        self.runner.bus.publish(JobProgressEvent.from_progress(self.parent.id, event))
        now = time.monotonic()
        if milestone or now - self._persisted_at >= self.runner.progress_interval:
            self._persisted_at = now
            self.runner.store_progress(self.parent.id, self.progress_dict())

    def progress_dict(self) -> dict:
        progress = self.chain.progress
        event = progress.last_event
        data: dict[str, Any] = (
            JobProgressEvent.from_progress(self.parent.id, event).progress_dict()
            if event
            else {"percent": progress.percent}
        )
        data.update(phase=progress.phase.name, attempt=progress.attempt, current_child=self.current_child)
        return data

    # -- record and outcome -----------------------------------------------------------------
    def _save_record(self) -> None:
        try:
            self.chain.save()
        except OSError:
            log.exception("orchestration %s: could not write %s", self.parent.id, RECORD_NAME)

    def _link_finals(self) -> list[tuple[Path, str]]:
        """Hard-link (or copy) the passing runs' final files into the parent's directory: (target, kind)."""
        linked = []
        for source, kind, stem in final_files(self.chain.passed):
            target = self.out_dir / f"{stem}{source.suffix}"
            try:
                target.unlink(missing_ok=True)
                try:
                    os.link(source, target)
                except OSError:
                    shutil.copy2(source, target)
                linked.append((target, kind))
            except OSError:
                log.exception("orchestration %s: could not link %s", self.parent.id, source)
        return linked

    async def _finish(self, status: JobStatus, error: JobError | None, reason: str) -> None:
        runner, parent, chain = self.runner, self.parent, self.chain
        chain.record.finish(status.value, reason)
        self._save_record()
        listed: list[dict] = []
        ended_by_policy = status is JobStatus.SUCCEEDED or (error is not None and error.type == "QualityGateFailed")
        if ended_by_policy and chain.attempts:
            try:
                listed = chain.write_manifest(self._link_finals())["files"]
            except OSError as exc:  # e.g. a full disk: the parent fails clearly instead of staying running
                log.exception("orchestration %s: could not write %s", parent.id, MANIFEST_NAME)
                status = JobStatus.FAILED
                reason = self.runner.public_paths.scrub(f"could not write the orchestration's {MANIFEST_NAME}: {exc}")
                error = JobError(type(exc).__name__, reason)
        outputs = JobOutputs(
            files=output_files(self.out_dir),
            manifest=MANIFEST_NAME if listed else None,
            listed=listed,
            seed=chain.parameters.get("seed"),
            record=RECORD_NAME,
            children=self.children,
            reason=reason,
            quality=parent_quality(chain.attempts, status is JobStatus.SUCCEEDED),
        )
        progress = self.progress_dict()
        stage = "done" if status is JobStatus.SUCCEEDED else status.value
        progress.update(stage=f"{stage}: {reason}" if reason else stage, current_child=None)
        await end_parent(
            runner,
            parent.id,
            status,
            error=error,
            outputs=outputs,
            progress=progress,
            on_finish=self.on_finish,
            duration=time.perf_counter() - chain.started,
        )

    def children_summary(self) -> list[dict]:
        return children_summary(self.runner.store, self.children)


async def end_parent(
    host: JobHost,
    parent_id: str,
    status: JobStatus,
    *,
    error: JobError | None,
    outputs: JobOutputs,
    progress: dict,
    on_finish: Callable[[str], None] | None,
    duration: float,
) -> JobRecord:
    """A parent job (an orchestration, a sweep) made terminal: stored (100 % when it succeeded) like a phase
    job's end (`record_end`: off the event loop, retried until the store takes it), `on_finish` told, then its
    finished event published."""
    if status is JobStatus.SUCCEEDED:
        progress.update(percent=100.0, eta_seconds=0.0)
    job = await host.record_end(parent_id, status, error=error, outputs=outputs, progress=progress)
    if on_finish is not None:
        on_finish(parent_id)
    host.finished(job, duration=duration)
    return job


class _Stop(Exception):
    def __init__(self, status: JobStatus, error: JobError):
        super().__init__(error.message)
        self.status, self.error = status, error


def children_summary(store, child_ids: list[str]) -> list[dict]:
    rows = []
    for child_id in child_ids:
        try:
            rows.append(child_row(store.get(child_id)))
        except JobNotFoundError:
            rows.append({"job_id": child_id, "status": "unknown"})
    return rows


def recover_orchestrations(runner: JobHost) -> list[JobRecord]:
    """Restart policy for parents a dead process left running (module docstring). Runs before the
    store's `recover()`, so their children are settled here, not re-queued as orphans."""
    store = runner.store
    changed: list[JobRecord] = []
    parents = running_parents(store, ORCHESTRATION_KIND)
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
                    changed.append(
                        store.transition(
                            child.id,
                            JobStatus.LOST,
                            error=JobError(
                                "Lost",
                                f"The server stopped while this job ran for orchestration {parent.id}; "
                                "the orchestration runs this attempt again.",
                            ),
                        )
                    )
                elif child.status is JobStatus.QUEUED:
                    changed.append(
                        store.transition(
                            child.id,
                            JobStatus.CANCELLED,
                            error=JobError(
                                "Cancelled",
                                f"The server stopped before this job ran for orchestration {parent.id}; "
                                "the orchestration runs this attempt again.",
                            ),
                        )
                    )
            except InvalidTransitionError:
                pass
        changed += requeue_parent(store, parent, "orchestration", "children")
    return changed


def running_parents(store, kind: str) -> list[JobRecord]:
    """Every job of `kind` left `running` (an index range of the store, whatever the history)."""
    return [j for j in running_jobs(store) if j.kind == kind]


def requeue_parent(store, parent: JobRecord, what: str, kept: str) -> list[JobRecord]:
    """A parent a dead process left running goes back to the queue, or becomes `lost` after `MAX_RESUMES`
    re-queues (so a parent that crashes the server cannot loop forever). Returns the changed record, if any."""
    try:
        if parent.requeues < MAX_RESUMES:
            return [store.transition(parent.id, JobStatus.QUEUED)]
        return [
            store.transition(
                parent.id,
                JobStatus.LOST,
                error=JobError(
                    "Lost",
                    f"The server stopped while this {what} ran, {parent.requeues + 1} times; "
                    f"not resumed again. Finished {kept} are kept.",
                ),
            )
        ]
    except InvalidTransitionError:
        return []


class OrchestrationDriver(JobDriver):
    """Job kind "orchestration": each claimed parent gets an `Orchestrator` task on the event loop and the
    runner goes straight back to the queue (a parent never holds a slot while its children run)."""

    kind = ORCHESTRATION_KIND
    uses_slot = False

    def __init__(self, host: JobHost):
        super().__init__(host)
        # parent job id -> what drives it (an Orchestrator; a SweepRun for sweeps): cancel(), task, progress_dict()
        self.orchestrations: dict[str, Any] = {}

    def recover(self) -> list[JobRecord]:
        return recover_orchestrations(self.host)

    async def start(self, job: JobRecord, slot: Slot | None) -> None:
        orchestrator = Orchestrator(self.host, job, on_finish=self._forget)
        self.orchestrations[job.id] = orchestrator
        orchestrator.start()

    def _forget(self, job_id: str) -> None:
        self.orchestrations.pop(job_id, None)

    async def cancel(self, job: JobRecord) -> JobRecord:
        """Cancel the current child and let the chain's task end the parent as cancelled (waits ~3 s at most)."""
        orchestrator = self.orchestrations.get(job.id)
        if orchestrator is not None and orchestrator.task is not None:
            await orchestrator.cancel()
            try:
                await asyncio.wait_for(asyncio.shield(orchestrator.task), timeout=3 * self.host.cancel_grace + 2)
            except (asyncio.TimeoutError, asyncio.CancelledError, Exception):
                pass
        return self.host.store.get(job.id)

    def active(self) -> list[str]:
        return list(self.orchestrations)

    def describe(self) -> dict:
        return {"orchestrations": sorted(self.orchestrations)}

    def live_progress(self, job_id: str) -> dict | None:
        orchestrator = self.orchestrations.get(job_id)
        return None if orchestrator is None else orchestrator.progress_dict()

    def children(self, job: JobRecord) -> list[dict]:
        """The parent's children rows: the live chain's, else those its outputs (or its record) name."""
        live = self.orchestrations.get(job.id)
        if live is not None:
            return live.children_summary()
        ids = job.outputs.children
        if job.outputs.record is None:  # not finished (a dead process left it): its record names them
            ids = (read_record(self.host.outputs_dir / job.id) or {}).get("children", [])
        return children_summary(self.host.store, [i for i in ids if isinstance(i, str)])

    async def stop(self) -> None:
        """The server is stopping: end the chains' tasks; their parents stay `running` for `recover()`."""
        tasks = [o.task for o in self.orchestrations.values() if o.task is not None]
        for task in tasks:
            task.cancel()
        for task in tasks:
            try:
                await task
            except (asyncio.CancelledError, Exception):
                pass
