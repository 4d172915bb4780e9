"""Stopping the server with a running job and queued jobs, then starting a new one on the same store:
none is lost, the interrupted job runs again (it wrote nothing), nothing claims success unchecked."""
from __future__ import annotations

import asyncio
import time

import pytest

pytestmark = [pytest.mark.asyncio, pytest.mark.timeout(180)]


async def test_restart_with_queued_jobs_loses_none(tmp_path, start_live_server):
    async with start_live_server(tmp_path) as srv:
        ids = []
        for steps in (60, 2, 2):
            code, data, _ = await srv.request("POST", "/api/anime/generate",
                                              {"prompt": "test:progress 0.05", "steps": steps, "width": 64, "height": 64})
            assert code == 202
            ids.append(data["job_id"])
        for _ in range(200):
            job = srv.service.store.get(ids[0])
            if job.status.value == "running" and job.progress.get("percent", 0) > 0:
                break
            await asyncio.sleep(0.02)
        assert srv.service.store.get(ids[0]).status.value == "running"
    # the first server is gone mid-job: its job is still `running` in the store
    async with start_live_server(tmp_path) as srv:
        recovered = {j.id: j.status.value for j in srv.service.runner.recovered}
        assert recovered == {ids[0]: "queued"}
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            statuses = [srv.service.store.get(i).status.value for i in ids]
            if all(s not in ("queued", "running") for s in statuses):
                break
            await asyncio.sleep(0.05)
        assert statuses == ["succeeded"] * 3
        first = srv.service.store.get(ids[0])
        assert first.attempts == 2 and first.requeues == 1


async def test_job_that_wrote_files_becomes_lost(tmp_path, start_live_server):
    from animenb.store import SqliteJobStore

    store = SqliteJobStore(tmp_path / "home" / "jobs.sqlite")
    job = store.create(phase=1, parameters={"prompt": "test:progress", "steps": 2})
    store.claim_next("dead-host:1/cpu")
    (tmp_path / "outputs" / job.id).mkdir(parents=True)
    (tmp_path / "outputs" / job.id / "pose_1.png").write_bytes(b"partial")
    store.close()
    async with start_live_server(tmp_path) as srv:
        code, status, _ = await srv.request("GET", f"/api/anime/generation/{job.id}/status")
        assert status["status"] == "lost" and status["error"]["type"] == "Lost"
