"""GET /api/anime/admin/stats: figures from the store, the kernels (model cache), the host and the disk."""
from __future__ import annotations

import pytest
import pytest_asyncio

from serverkit import call, submit, wait_done

API = "/api/anime"


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def srv(tmp_path_factory, start_live_server):
    async with start_live_server(tmp_path_factory.mktemp("admin")) as server:
        server.admin = server.service.tokens.create("ops", "admin")[1]
        yield server


def test_percentiles_and_job_figures():
    from animenb.store import JobError, JobOutputs, JobStatus, SqliteJobStore
    from animenb.server.stats import job_figures, percentile

    assert percentile([], 50) is None and percentile([3.0], 95) == 3.0
    assert percentile(list(range(1, 101)), 50) == 50 and percentile(list(range(1, 101)), 95) == 95
    store = SqliteJobStore()
    for i, (passed, rate) in enumerate([(True, 10.0), (True, 20.0), (False, 30.0), (None, None)]):
        job = store.create(phase=1 + (i == 3), parameters={"prompt": "p", "steps": 10})
        store.claim_next("w")
        quality = None if passed is None else {"score": 0.9 if passed else 0.5, "passed": passed}
        progress = {"step": 10, "elapsed_seconds": 10 / rate} if rate else {}
        store.transition(job.id, JobStatus.SUCCEEDED, outputs=JobOutputs(quality=quality), progress=progress)
    failed = store.create(phase=1, parameters={"prompt": "p"})
    store.claim_next("w")
    store.transition(failed.id, JobStatus.FAILED, error=JobError("X", "x"))
    figures = job_figures(store)
    one = figures["phases"]["1"]
    assert one["name"] == "CHARACTER_SHEET" and one["succeeded"] == 3 and one["failed"] == 1
    assert one["steps_per_second"]["p50"] == 20.0 and one["steps_per_second"]["p95"] == 30.0
    assert one["quality"] == {"scored": 3, "passed": 2, "pass_rate": 0.667}
    assert figures["quality"]["pass_rate"] == 0.667 and figures["phases"]["2"]["quality"]["pass_rate"] is None
    assert one["duration_seconds"]["p50"] is not None


@pytest.mark.asyncio(loop_scope="module")
@pytest.mark.timeout(120)
async def test_admin_stats_body(srv):
    for prompt in ("test:progress", "test:echo stats", "test:error"):
        await wait_done(srv, (await submit(srv, prompt=prompt, steps=4))["job_id"])
    code, stats, _ = await call(srv, "GET", f"{API}/admin/stats", token=srv.admin)
    assert code == 200, stats
    assert stats["queue"]["length"] == 0 and stats["queue"]["max_queue"] == 512
    assert stats["jobs"]["by_status"]["succeeded"] == 2 and stats["jobs"]["by_status"]["failed"] == 1
    phase = stats["phases"]["1"]
    assert phase["succeeded"] == 2 and phase["failed"] == 1
    assert phase["duration_seconds"]["p50"] > 0 and phase["duration_seconds"]["p95"] >= phase["duration_seconds"]["p50"]
    assert phase["steps_per_second"]["p50"] > 0
    assert stats["uptime_seconds"] > 0 and stats["window"]["finished_jobs"] == 3
    assert "available" in stats["gpu"] and stats["host"]["cpu_count"] >= 1
    kernels = stats["kernels"]
    assert kernels["ready"] == 1 and kernels["devices"][0]["rss_bytes"] > 0
    cache = kernels["devices"][0]["model_cache"]
    assert cache is not None and cache["count"] == len(cache["pipelines"]) and "age_seconds" in cache
    assert isinstance(stats["models"]["cache"], list) and stats["models"]["profile"]["profile"]
    disk = stats["disk"]
    assert disk["outputs_bytes"] > 0 and disk["output_dirs"] == 3 and disk["free_bytes"] > 0 and disk["store_bytes"] > 0
    assert disk["outputs_age_seconds"] >= 0
    assert stats["recent"]["last_hour"] == stats["recent"]["last_day"] == {
        "succeeded": 2, "failed": 1, "cancelled": 0, "lost": 0}


@pytest.mark.asyncio(loop_scope="module")
@pytest.mark.timeout(120)
async def test_admin_gc_endpoint(srv):
    job = await submit(srv, prompt="test:echo old")
    await wait_done(srv, job["job_id"])
    running = await submit(srv, prompt="test:sleep 0.05", steps=60)
    code, report, _ = await call(srv, "POST", f"{API}/admin/gc", {"older_than": "0s", "dry_run": True},
                                 token=srv.admin)
    assert code == 200 and job["job_id"] in report["jobs"] and running["job_id"] not in report["jobs"]
    assert srv.service.store.get(job["job_id"])  # dry run: still there
    code, report, _ = await call(srv, "POST", f"{API}/admin/gc", {"older_than": "0s"}, token=srv.admin)
    assert code == 200 and job["job_id"] in report["jobs"] and report["bytes_freed"] > 0
    assert not (srv.service.outputs_dir / job["job_id"]).exists()
    assert srv.service.store.get(running["job_id"]).status.value in ("queued", "running")
    code, body, _ = await call(srv, "GET", f"{API}/generation/{job['job_id']}/status")
    assert code == 404
    await call(srv, "DELETE", f"{API}/generation/{running['job_id']}",
               headers={"X-Cancel-Token": running["cancel_token"]})
