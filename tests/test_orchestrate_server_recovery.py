"""Restart policy of orchestration parents (animenb.runner.orchestration), without a server."""
from __future__ import annotations

import json
from types import SimpleNamespace

from animenb.runner.events import EventBus
from animenb.runner.orchestration import (MAX_RESUMES, ORCHESTRATION_KIND, RECORD_NAME, Orchestrator,
                                          recover_orchestrations)
from animenb.store import JobStatus, SqliteJobStore


def fake_runner(tmp_path):
    return SimpleNamespace(store=SqliteJobStore(), outputs_dir=tmp_path, bus=EventBus(), progress_interval=0.25,
                           orchestrations={})


def make_parent(runner, children=()):
    parent = runner.store.create(phase=None, kind=ORCHESTRATION_KIND, parameters={
        "prompt": "p", "seed": 5, "steps": 2, "max_retries": 1, "thresholds": {"CHARACTER_SHEET": 0.5}})
    parent = runner.store.claim_next("w")
    (runner.outputs_dir / parent.id).mkdir()
    (runner.outputs_dir / parent.id / RECORD_NAME).write_text(json.dumps({"children": list(children)}))
    return parent


def make_child(runner, parent_id, phase, attempt, status, quality=None):
    child = runner.store.create(phase=phase, parameters={"prompt": "p", "seed": 5 + attempt}, parent_id=parent_id,
                                extra={"orchestration": {"phase": ["CHARACTER_SHEET", "ANIMATION_LOOP"][phase - 1],
                                                         "attempt": attempt, "threshold": 0.5}})
    if status is not JobStatus.QUEUED:
        runner.store.transition(child.id, JobStatus.RUNNING)
    if status not in (JobStatus.QUEUED, JobStatus.RUNNING):
        runner.store.transition(child.id, status, outputs={"files": ["manifest.json"], "quality": quality})
    return child


def test_a_running_parent_is_requeued_and_its_active_children_settled(tmp_path):
    runner = fake_runner(tmp_path)
    store = runner.store
    parent = make_parent(runner)
    done = make_child(runner, parent.id, 1, 1, JobStatus.SUCCEEDED, {"score": 0.9, "passed": True, "threshold": 0.5})
    running = make_child(runner, parent.id, 2, 1, JobStatus.RUNNING)
    queued = make_child(runner, parent.id, 2, 2, JobStatus.QUEUED)
    (tmp_path / parent.id / RECORD_NAME).write_text(json.dumps({"children": [done.id, running.id, queued.id]}))
    other = store.create(phase=1, parameters={"prompt": "q"})  # an ordinary queued job: untouched

    changed = recover_orchestrations(runner)
    assert {j.id: j.status for j in changed} == {running.id: JobStatus.LOST, queued.id: JobStatus.CANCELLED,
                                                 parent.id: JobStatus.QUEUED}
    assert store.get(done.id).status is JobStatus.SUCCEEDED and store.get(other.id).status is JobStatus.QUEUED
    assert "runs this attempt again" in store.get(running.id).error.message
    assert store.get(parent.id).requeues == 1


def test_resume_rebuilds_the_chain_from_finished_children(tmp_path):
    runner = fake_runner(tmp_path)
    parent = make_parent(runner)
    passed = make_child(runner, parent.id, 1, 1, JobStatus.SUCCEEDED, {"score": 0.9, "passed": True, "threshold": 0.5})
    lost = make_child(runner, parent.id, 2, 1, JobStatus.LOST)
    (tmp_path / parent.id / RECORD_NAME).write_text(json.dumps({"children": [passed.id, lost.id]}))
    orch = Orchestrator(runner, runner.store.get(parent.id))
    history, done = orch._resume()
    assert [(h["phase"], h["attempt"], h["passed"]) for h in history] == [("CHARACTER_SHEET", 1, True)]
    assert done == {"CHARACTER_SHEET": str(tmp_path / passed.id)}
    assert orch.plan.index == 1 and orch.percent > 30  # the resumed chain's percent starts where it was
    from animenb.orchestrate import next_step

    assert (next_step(history, 1).phase, next_step(history, 1).attempt) == ("ANIMATION_LOOP", 1)  # the lost one again


def test_a_parent_that_keeps_crashing_becomes_lost(tmp_path):
    runner = fake_runner(tmp_path)
    parent = make_parent(runner)
    for _ in range(MAX_RESUMES):
        recover_orchestrations(runner)
        runner.store.claim_next("w")
    recover_orchestrations(runner)
    job = runner.store.get(parent.id)
    assert job.status is JobStatus.LOST and "not resumed again" in job.error.message
