"""Server-side sweeps: one parent job (kind "sweep") with one child phase job per cell of an X/Y/Z grid.

Like an orchestration parent (`animenb.runner.orchestration`), the parent holds no slot: when the runner
claims it, `SweepDriver` starts a `SweepRun` task on the event loop that submits every cell as a child job
(kind "phase", `parent_id` = the parent, `extra["sweep"]` = {parent_id, cell, values}) and waits for them.
The children are ordinary queued jobs of the parent's owner: they are not given priority, so the runner's
turn order interleaves them with other callers' jobs, and every idle slot (each Ray actor) takes one.

Progress: the parent publishes `JobProgressEvent`s (part "chain") over its children: percent is the mean of
the cells' percents, `step`/`total_steps` count finished cells, the ETA comes from the time spent so far.

Cancel of the parent cancels every child still queued or running; the parent becomes `cancelled`.

When every cell has ended, the parent writes its results into outputs/<parent_id>/ (`animenb.sweeps.report`:
sweep.json, grid.png, manifest.json) and executes the comparison notebook there (report.ipynb). It succeeds
when at least one cell succeeded (the failed cells are named in its `reason`) and fails when none did.

Restart (`recover_sweeps`, before the store's `recover()`): a parent left `running` is re-queued (at most
`MAX_RESUMES` times, then `lost`: the orchestration's `requeue_parent`); its children are ordinary jobs the
store's own policy settles. When the parent runs again it reads sweep.json: cells whose child finished are
kept, a child still queued or running is waited for, and a cell whose child was lost is submitted again.
"""

from __future__ import annotations

import asyncio
import logging
import time

from animenb.manifest import MANIFEST_NAME
from animenb.store import JobError, JobNotFoundError, JobOutputs, JobRecord, JobStatus
from animenb.sweeps.plan import SweepPlan, plan_from_dict
from animenb.sweeps.report import (
    RECORD_NAME,
    SWEEP_KIND,
    cell_row,
    read_record,
    run_report,
    write_record,
    write_results,
)

from .drivers import JobHost, output_files
from .events import JobFinishedEvent, JobProgressEvent, JobStartedEvent
from .executors import Slot
from .orchestration import OrchestrationDriver, child_row, end_parent, requeue_parent, running_parents

log = logging.getLogger(__name__)

RESUBMITTED = (JobStatus.LOST,)  # a cell whose child ended so is run again when the parent resumes


def sweep_info(job: JobRecord) -> dict | None:
    """The sweep facts stored in a child's `extra` (None for other jobs)."""
    info = job.extra.get("sweep")
    return info if isinstance(info, dict) else None


class SweepRun:
    """Drives one sweep parent (module docstring)."""

    def __init__(self, host: JobHost, parent: JobRecord, on_finish=None):
        self.host, self.parent, self.on_finish = host, parent, on_finish
        self.plan: SweepPlan = plan_from_dict(parent.parameters["sweep"])
        self.out_dir = host.outputs_dir / parent.id
        self.child_ids: list[str | None] = [None] * len(self.plan.cells)
        self.percents = [0.0] * len(self.plan.cells)
        self.cancel_requested = False
        self.task: asyncio.Task | None = None
        self._started = time.perf_counter()
        self._persisted_at = 0.0
        self._last: JobProgressEvent | None = None

    def start(self) -> asyncio.Task:
        self.task = asyncio.get_running_loop().create_task(self._run(), name=f"animenb-sweep-{self.parent.id}")
        return self.task

    async def cancel(self) -> None:
        """Cancel every child still queued or running, all at once (the runner's cancel also stops a child
        claimed a moment ago, once its driver has it)."""
        self.cancel_requested = True
        active = [c for c in self.child_ids if c is not None and not self.host.store.get(c).terminal]
        await asyncio.gather(*(self.host.cancel(child_id) for child_id in active))

    # -- the cells -----------------------------------------------------------------------------
    async def _run(self) -> None:
        host, parent = self.host, self.parent
        host.bus.publish(JobStartedEvent(job_id=parent.id, phase=parent.phase, device="sweep", attempt=parent.attempts))
        try:
            self.out_dir.mkdir(parents=True, exist_ok=True)
            self._resume()
            for index, child_id in enumerate(self.child_ids):
                if child_id is None and not self.cancel_requested:
                    await self._submit(index)
            self._save_record()
            await self._wait_all()
            status, error, reason = self._outcome()
        except asyncio.CancelledError:  # the server is stopping: the parent stays running for recover_sweeps
            raise
        except Exception as exc:  # a bug or a store failure: never leave the parent running
            log.exception("sweep %s failed", parent.id)
            reason = host.public_paths.scrub(str(exc)) or type(exc).__name__
            status, error = JobStatus.FAILED, JobError(type(exc).__name__, reason)
        await self._finish(status, error, reason)

    def _resume(self) -> None:
        for entry in (read_record(self.out_dir) or {}).get("cells", []):
            index, child_id = entry.get("index"), entry.get("job_id")
            if not (isinstance(index, int) and 0 <= index < len(self.child_ids) and isinstance(child_id, str)):
                continue
            try:
                child = self.host.store.get(child_id)
            except JobNotFoundError:
                continue
            if child.status not in RESUBMITTED:
                self.child_ids[index] = child_id
        kept = sum(1 for c in self.child_ids if c is not None)
        if kept:
            log.info(
                "sweep %s resumes with %d of %d cells already submitted", self.parent.id, kept, len(self.child_ids)
            )

    async def _submit(self, index: int) -> None:
        parent = self.parent
        extra = {"sweep": {"parent_id": parent.id, "cell": index, "values": self.plan.cells[index]}}
        child = await self.host.submit_child(
            self.plan.values(index),
            phase=self.plan.phase,
            owner=parent.owner,
            visibility=parent.visibility,
            parent_id=parent.id,
            extra=extra,
        )
        self.child_ids[index] = child.id

    async def _wait_all(self) -> None:
        """Until every child is terminal, relaying their progress to the parent."""
        loop = asyncio.get_running_loop()
        remaining = {child_id for child_id in self.child_ids if child_id is not None}
        all_done: asyncio.Future = loop.create_future()
        index_of = {child_id: i for i, child_id in enumerate(self.child_ids)}

        def ended(child_id: str) -> None:
            remaining.discard(child_id)
            self.percents[index_of[child_id]] = 100.0
            self._publish()
            if not remaining and not all_done.done():
                all_done.set_result(None)

        def on_event(event) -> None:
            if event.job_id not in index_of:
                return
            if isinstance(event, JobProgressEvent):
                self.percents[index_of[event.job_id]] = max(self.percents[index_of[event.job_id]], event.percent)
                self._publish()
            elif isinstance(event, JobFinishedEvent):
                ended(event.job_id)

        subs = [self.host.bus.subscribe(child_id, on_event) for child_id in self.child_ids]
        try:
            for child_id in list(remaining):
                if self.host.store.get(child_id).terminal:
                    ended(child_id)
            if remaining:
                await all_done
        finally:
            for sub in subs:
                self.host.bus.unsubscribe(sub)

    # -- progress --------------------------------------------------------------------------------
    def _publish(self, milestone: bool = False) -> None:
        total = len(self.percents)
        done = sum(1 for p in self.percents if p >= 100.0)
        percent = round(min(99.0, sum(self.percents) / total), 2)  # 100 only once the results are written
        if self._last is not None:
            percent = max(percent, self._last.percent)
        elapsed = time.perf_counter() - self._started
        eta = elapsed * (100.0 - percent) / percent if percent > 0 else None
        event = JobProgressEvent(
            job_id=self.parent.id,
            percent=percent,
            step=done,
            total_steps=total,
            stage=f"{done}/{total} cells done",
            eta_seconds=eta,
            elapsed_seconds=elapsed,
            part="chain",
        )
        self._last = event
        self.host.bus.publish(event)
        now = time.monotonic()
        if milestone or now - self._persisted_at >= self.host.progress_interval:
            self._persisted_at = now
            self.host.store_progress(self.parent.id, self.progress_dict())

    def progress_dict(self) -> dict:
        return self._last.progress_dict() if self._last else {"percent": 0.0, "stage": "submitting cells"}

    # -- outcome ---------------------------------------------------------------------------------
    def _children(self) -> list[JobRecord | None]:
        rows = []
        for child_id in self.child_ids:
            try:
                rows.append(self.host.store.get(child_id) if child_id else None)
            except JobNotFoundError:
                rows.append(None)
        return rows

    def _record_cells(self) -> list[dict]:
        cells = []
        for index, child in enumerate(self._children()):
            entry = {
                "index": index,
                "values": self.plan.cells[index],
                "job_id": self.child_ids[index],
                "status": child.status.value if child else None,
            }
            if child is not None:
                entry["run_dir"] = f"../{child.id}"
                if child.finished_at and child.started_at:
                    entry["seconds"] = round(child.finished_at - child.started_at, 3)
                if child.error:
                    entry["error"] = self.host.public_paths.scrub(child.error.message)
            cells.append(entry)
        return cells

    def _save_record(self, **fields) -> None:
        try:
            write_record(self.out_dir, self.plan, self._record_cells(), job_id=self.parent.id, **fields)
        except OSError:
            log.exception("sweep %s: could not write %s", self.parent.id, RECORD_NAME)

    def _outcome(self) -> tuple[JobStatus, JobError | None, str]:
        children = self._children()
        ok = [c for c in children if c is not None and c.status is JobStatus.SUCCEEDED]
        not_ok = [(i, c) for i, c in enumerate(children) if c is None or c.status is not JobStatus.SUCCEEDED]
        listed = ", ".join(f"cell {i} {c.status.value if c else 'missing'}" for i, c in not_ok[:8])
        if self.cancel_requested or any(c is not None and c.status is JobStatus.CANCELLED for _, c in not_ok):
            done = f"{len(ok)} of {len(children)} cells done"
            return JobStatus.CANCELLED, JobError("Cancelled", f"Cancelled with {done}."), f"cancelled: {done}"
        if not ok:
            return (
                JobStatus.FAILED,
                JobError("SweepFailed", f"No cell succeeded: {listed}."),
                f"no cell succeeded: {listed}",
            )
        reason = f"{len(ok)} of {len(children)} cells succeeded" + (f"; {listed}" if not_ok else "")
        return JobStatus.SUCCEEDED, None, reason

    async def _finish(self, status: JobStatus, error: JobError | None, reason: str) -> None:
        host, parent = self.host, self.parent
        self._save_record(status=status.value, reason=reason)
        listed: list[dict] = []
        if status is not JobStatus.CANCELLED:
            try:
                rows = [
                    cell_row(
                        self.plan,
                        i,
                        host.outputs_dir / c if c else None,
                        status=entry["status"],
                        job_id=c,
                        error=entry.get("error"),
                        seconds=entry.get("seconds"),
                    )
                    for i, (c, entry) in enumerate(zip(self.child_ids, self._record_cells()))
                ]
                listed = write_results(
                    self.out_dir, self.plan, rows, status=status.value, reason=reason, job_id=parent.id
                )
                await asyncio.get_running_loop().run_in_executor(
                    None, lambda: run_report(self.out_dir, host.notebooks_dir, public_text=host.public_paths.scrub)
                )
            except Exception as exc:  # the cells stand; the report's failure is said in the reason
                log.exception("sweep %s: the report failed", parent.id)
                reason += f"; the report failed: {host.public_paths.scrub(str(exc))[:300]}"
        outputs = JobOutputs(
            files=output_files(self.out_dir),
            manifest=MANIFEST_NAME if listed else None,
            listed=listed,
            seed=self.plan.parameters.get("seed"),
            record=RECORD_NAME,
            children=[c for c in self.child_ids if c],
            reason=reason,
        )
        stage = "done" if status is JobStatus.SUCCEEDED else status.value
        await end_parent(
            host,
            parent.id,
            status,
            error=error,
            outputs=outputs,
            progress={**self.progress_dict(), "stage": f"{stage}: {reason}"},
            on_finish=self.on_finish,
            duration=time.perf_counter() - self._started,
        )

    def children_summary(self) -> list[dict]:
        return children_rows(self.host.store, [c for c in self.child_ids if c])


def children_rows(store, child_ids: list[str]) -> list[dict]:
    """The parent's `children` rows: the orchestration's (`child_row`) plus each cell's index and values."""
    rows: list[dict] = []
    for child_id in child_ids:
        try:
            job = store.get(child_id)
        except JobNotFoundError:
            rows.append({"job_id": child_id, "status": "unknown"})
            continue
        info = sweep_info(job) or {}
        rows.append({**child_row(job), "cell": info.get("cell"), "values": info.get("values")})
    return rows


def recover_sweeps(host: JobHost) -> list[JobRecord]:
    """Restart policy for sweep parents a dead process left running (module docstring)."""
    changed: list[JobRecord] = []
    for parent in running_parents(host.store, SWEEP_KIND):
        changed += requeue_parent(host.store, parent, "sweep", "cells")
    return changed


class SweepDriver(OrchestrationDriver):
    """Job kind "sweep": each claimed parent gets a `SweepRun` task; it holds no slot. Cancel, live progress
    and stop are the orchestration driver's (a `SweepRun` drives its parent as an `Orchestrator` does:
    `cancel()`, `task`, `progress_dict()`)."""

    kind = SWEEP_KIND

    def recover(self) -> list[JobRecord]:
        return recover_sweeps(self.host)

    async def start(self, job: JobRecord, slot: Slot | None) -> None:
        try:
            run = SweepRun(self.host, job, on_finish=self._forget)
        except Exception as exc:  # a stored recipe this version refuses: the parent fails, never stays running
            log.exception("sweep %s: cannot start", job.id)
            await end_parent(
                self.host,
                job.id,
                JobStatus.FAILED,
                error=JobError(type(exc).__name__, self.host.public_paths.scrub(str(exc)) or type(exc).__name__),
                outputs=JobOutputs(),
                progress={},
                on_finish=None,
                duration=0.0,
            )
            return
        self.orchestrations[job.id] = run
        run.start()

    def describe(self) -> dict:
        return {"sweeps": sorted(self.orchestrations)}

    def children(self, job: JobRecord) -> list[dict]:
        live = self.orchestrations.get(job.id)
        if live is not None:
            return live.children_summary()
        ids = job.outputs.children or [
            c.get("job_id") for c in (read_record(self.host.outputs_dir / job.id) or {}).get("cells", [])
        ]
        return children_rows(self.host.store, [i for i in ids if isinstance(i, str)])
