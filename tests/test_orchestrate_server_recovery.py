"""Restart policy of orchestration parents (animenb.runner.orchestration): the policy on a bare store,
then a real server stopped mid-chain and started again."""
from __future__ import annotations

import json
from types import SimpleNamespace

import pytest

from animenb.runner.events import EventBus
from animenb.chain import RECORD_NAME
from animenb.runner.orchestration import MAX_RESUMES, ORCHESTRATION_KIND, Orchestrator, recover_orchestrations
from animenb.store import JobOutputs, JobStatus, SqliteJobStore


def fake_runner(tmp_path):
    store = SqliteJobStore()
    return SimpleNamespace(store=store, outputs_dir=tmp_path, bus=EventBus(), progress_interval=0.25,
                           orchestrations={}, store_progress=store.update_progress)


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
                                                         "attempt": attempt}, "quality_threshold": 0.5})
    if status is not JobStatus.QUEUED:
        runner.store.transition(child.id, JobStatus.RUNNING)
    if status not in (JobStatus.QUEUED, JobStatus.RUNNING):
        runner.store.transition(child.id, status, outputs=JobOutputs(files=["manifest.json"], quality=quality))
    return child


def test_a_running_parent_is_requeued_and_its_active_children_settled(tmp_path):
    runner = fake_runner(tmp_path)
    store = runner.store
    parent = make_parent(runner)
    done = make_child(runner, parent.id, 1, 1, JobStatus.SUCCEEDED, {"score": 0.9, "passed": True, "threshold": 0.5})
    running = make_child(runner, parent.id, 2, 1, JobStatus.RUNNING)
    queued = make_child(runner, parent.id, 2, 2, JobStatus.QUEUED)
    # the queued child is found by its parent_id
    (tmp_path / parent.id / RECORD_NAME).write_text(json.dumps({"children": [done.id, running.id]}))
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
    orch._resume()
    chain = orch.chain
    assert [(h["phase"], h["attempt"], h["passed"]) for h in chain.history] == [("CHARACTER_SHEET", 1, True)]
    assert chain.passed == {"CHARACTER_SHEET": tmp_path / passed.id}
    assert chain.attempts[0].output_dir == f"../{passed.id}"
    # the resumed chain's percent starts where it was
    assert chain.progress.plan.index == 1 and chain.progress.percent > 30
    attempt = chain.next_attempt()
    assert (attempt.phase, attempt.number) == ("ANIMATION_LOOP", 1)  # the lost one again
    assert attempt.parameters["reference_image"] == str(tmp_path / passed.id)


def test_a_parent_that_keeps_crashing_becomes_lost(tmp_path):
    runner = fake_runner(tmp_path)
    parent = make_parent(runner)
    for _ in range(MAX_RESUMES):
        recover_orchestrations(runner)
        runner.store.claim_next("w")
    recover_orchestrations(runner)
    job = runner.store.get(parent.id)
    assert job.status is JobStatus.LOST and "not resumed again" in job.error.message


@pytest.mark.asyncio
@pytest.mark.timeout(300)
async def test_server_restart_mid_chain_resumes_from_finished_children(tmp_path, start_live_server):
    """Stop the server while phase 2 runs; the next server re-queues the parent, marks the running child
    lost and resumes: phase 1 is not run again, phase 2 attempt 1 runs again with the same seed."""
    import asyncio
    import time

    body = {"prompt": "anime girl", "seed": 3, "steps": 4, "width": 64, "height": 64, "threshold": 0.0,
            "max_retries": 0, "visibility": "public"}
    async with start_live_server(tmp_path, models="tiny") as srv:
        _, token = srv.service.tokens.create("restart-admin", "admin")
        resp = await srv.client.fetch(srv.base + "/api/anime/orchestrate", method="POST", body=json.dumps(body),
                                      headers={"Authorization": f"Bearer {token}",
                                               "Content-Type": "application/json"})
        parent_id = json.loads(resp.body)["job_id"]
        store = srv.service.store
        deadline = time.monotonic() + 120
        while True:
            kids = [j for j in store.list(limit=50)[0] if j.parent_id == parent_id]
            if any(j.phase == 2 and j.status is JobStatus.RUNNING for j in kids):
                break
            assert time.monotonic() < deadline, kids
            await asyncio.sleep(0.05)
    async with start_live_server(tmp_path, models="tiny") as srv:
        store = srv.service.store
        deadline = time.monotonic() + 120
        while not (parent := store.get(parent_id)).terminal:
            assert time.monotonic() < deadline
            await asyncio.sleep(0.1)
        assert parent.status is JobStatus.SUCCEEDED and parent.requeues == 1, parent
        kids = sorted((j for j in store.list(limit=50)[0] if j.parent_id == parent_id), key=lambda j: j.seq)
        assert [(j.phase, j.status.value) for j in kids] == [(1, "succeeded"), (2, "lost"), (2, "succeeded"),
                                                             (3, "succeeded")]
        assert kids[1].parameters["seed"] == kids[2].parameters["seed"]
        assert parent.outputs.children == [j.id for j in kids]
