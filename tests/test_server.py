"""The job service end to end: a real server on a free loopback port, one warm kernel for the module.

Small test notebooks (tests/notebooks/, selected by prompts "test:<name>") cover progress,
cancel and kernel death quickly; the last tests run the real phase notebooks with the
`tiny` profile (64x64, 2 steps), scored by the quality gate in the same kernel.
"""
from __future__ import annotations

import asyncio
import io
import json

import nbformat
import pytest
import pytest_asyncio
from PIL import Image

from animenb.progress import PROGRESS_MIME
from serverkit import submit, wait_for, wait_running, wait_status, ws_messages

pytestmark = [pytest.mark.asyncio(loop_scope="module"), pytest.mark.timeout(300)]


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def srv(tmp_path_factory, start_live_server):
    async with start_live_server(tmp_path_factory.mktemp("server"), models="tiny") as server:
        yield server


# -- the contract's quick test commands ----------------------------------------------------------------
async def test_quick_test_commands(srv):
    code, health, _ = await srv.request("GET", "/api/anime/health")
    assert code == 200 and health["status"] == "healthy" and health["version"] == "3.0.0-bulletproof"
    comps = health["components"]
    assert comps["comfyui"]["status"] == "not configured"
    assert comps["models"]["label"] == "tiny (random weights)"
    assert set(comps["gpu"]) >= {"available", "active_generation"}
    assert set(comps["jobs"]) >= {"active_count", "total_tracked"}
    assert comps["kernels"]["ready"] == 1
    assert "WebSocket progress updates" in health["bulletproof_features"]

    code, phases, _ = await srv.request("GET", "/api/anime/phases")
    assert code == 200 and [p["name"] for p in phases["phases"]] == ["CHARACTER_SHEET", "ANIMATION_LOOP", "FULL_VIDEO"]
    assert phases["workflow"] == "Phase 1 to Phase 2 to Phase 3"
    assert phases["quality_gates"] == "80% quality required per phase"
    assert {"id", "name", "description", "engine", "output"} <= set(phases["phases"][0])

    code, jobs, _ = await srv.request("GET", "/api/anime/jobs")
    assert code == 200 and {"jobs", "count", "user"} <= set(jobs) and jobs["user"] == "anonymous"

    code, gallery, _ = await srv.request("GET", "/api/anime/gallery")
    assert code == 200 and isinstance(gallery["gallery"], list)

    accepted = await submit(srv, prompt="test:echo anime girl", width=512, height=512, steps=10)
    assert accepted["status"] == "queued" and accepted["status_url"].endswith("/status")
    assert accepted["ws_url"].startswith("ws://127.0.0.1:")
    assert (await wait_status(srv, accepted["job_id"]))["status"] == "succeeded"


# -- generate -> status -> WebSocket progress -> output -> gallery -------------------------------------
async def test_generate_progress_output_gallery(srv):
    # steps 0.11 s apart: every step is shown (the kernel shows at most one step event per 0.1 s)
    job = await submit(srv, prompt="test:progress 0.11", steps=12, seed=7)
    messages, close_code, _ = await ws_messages(job["ws_url"])
    assert messages[0]["event"] == "state" and messages[0]["state"]["job_id"] == job["job_id"]
    progress = [m for m in messages if m["event"] == "progress"]
    percents = [m["percent"] for m in progress]
    assert len(progress) >= 12 and percents == sorted(percents) and percents[-1] == 100.0
    assert any(m["eta_seconds"] is not None for m in progress)
    assert all({"step", "total_steps", "stage", "time"} <= set(m) for m in progress)
    seqs = [m["seq"] for m in messages[1:]]
    assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs)
    final = messages[-1]
    assert final["event"] == "finished" and final["status"] == "succeeded" and close_code == 1000

    status = await wait_status(srv, job["job_id"])
    assert status["status"] == "succeeded" and status["progress"]["percent"] == 100.0
    assert status["queue_position"] is None and status["error"] is None and status["finished_at"]
    image_url = next(u for u in status["outputs"] if u.endswith("image.png"))
    code, body, headers = await srv.request("GET", image_url)
    assert code == 200 and headers["Content-Type"] == "image/png"
    assert Image.open(io.BytesIO(body)).size == (64, 64)

    code, body, _ = await srv.request("GET", status["notebook_url"])
    nb = nbformat.reads(body.decode(), as_version=4)
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])]
    assert not any(PROGRESS_MIME in o.get("data", {}) for o in outputs)  # consumed, not saved
    assert any("wrote" in o.get("text", "") for o in outputs)

    code, gallery, _ = await srv.request("GET", "/api/anime/gallery")
    item = next(i for i in gallery["gallery"] if i["job_id"] == job["job_id"])
    assert item["prompt"] == "test:progress 0.11" and item["seed"] == 7 and item["phase"] == 1
    code, thumb, headers = await srv.request("GET", item["thumbnail_url"])
    assert code == 200 and Image.open(io.BytesIO(thumb)).size[0] <= 256


async def test_websocket_many_subscribers_and_unknown_job(srv):
    code, data, _ = await srv.request("POST", "/api/anime/generate", {"prompt": "test:sleep 0.02", "steps": 10})
    job_id = data["job_id"]
    results = await asyncio.gather(*(ws_messages(data["ws_url"]) for _ in range(5)))
    for messages, close_code, _ in results:
        assert messages[-1]["event"] == "finished" and close_code == 1000
    # a late subscriber gets the state and the terminal event, then the close
    messages, close_code, _ = await ws_messages(data["ws_url"])
    assert [m["event"] for m in messages] == ["state", "finished"] and close_code == 1000
    messages, close_code, reason = await ws_messages(f"ws://127.0.0.1:{srv.port}/ws/job/{'0' * 32}")
    assert messages == [] and close_code == 4404 and reason == f"Job not found: {'0' * 32}"
    assert job_id


async def test_events_of_every_frame_size_reach_every_subscriber_intact(srv):
    """Progress events go out as one frame built once for all subscribers: payloads under 126 bytes, under
    64 KiB and over it (a preview image) each reach two clients byte for byte, in order, then the close."""
    from animenb.runner.events import JobProgressEvent

    data = await submit(srv, prompt="test:sleep 0.05", steps=60)
    await wait_running(srv, data["job_id"])
    readers = [asyncio.ensure_future(ws_messages(data["ws_url"])) for _ in range(2)]
    await wait_for(lambda: srv.service.bus.subscriber_count(data["job_id"]) >= 2, 30, what="two subscribers")
    previews = ["", "p" * 300, "data:image/png;base64," + "A" * 70_000]
    for preview in previews:
        srv.service.bus.publish(JobProgressEvent.build(data["job_id"], {"percent": 1, "stage": "probe",
                                                                        "preview": preview or None}))
    for messages, close_code, _ in await asyncio.gather(*readers):
        probes = [m for m in messages if m["event"] == "progress" and m["stage"] == "probe"]
        assert [m.get("preview") or "" for m in probes] == previews
        assert messages[-1]["event"] == "finished" and close_code == 1000


async def test_status_shows_live_progress_and_store_is_throttled(srv):
    data = await submit(srv, prompt="test:sleep 0.05", steps=40)
    job_id = data["job_id"]

    async def live_progress():
        _, status, _ = await srv.request("GET", f"/api/anime/generation/{job_id}/status")
        return status["progress"] if status["status"] == "running" and status["progress"]["percent"] > 20 else None

    assert (await wait_for(live_progress, 60, interval=0.05, what="live progress"))["total_steps"] == 40
    # persisted too (throttled to <= 4 writes a second)
    await wait_for(lambda: srv.service.store.get(job_id).progress.get("percent", 0) > 0, 60, what="stored progress")
    assert (await wait_status(srv, job_id))["status"] == "failed"  # sleep.ipynb writes no manifest
    assert srv.service.store.get(job_id).error.type == "MissingOutputError"


# -- cancel -----------------------------------------------------------------------------------------
async def test_cancel_queued_and_running(srv):
    running = await submit(srv, prompt="test:sleep 0.05", steps=150)
    queued = await submit(srv, prompt="test:progress", steps=2)
    await wait_running(srv, running["job_id"])
    assert queued["queue_position"] == 2 or (await srv.request("GET", queued["status_url"]))[1]["queue_position"] == 1

    code, body, _ = await srv.request("DELETE", f"/api/anime/generation/{queued['job_id']}"
                                                f"?cancel_token={queued['cancel_token']}")
    assert code == 200 and body["status"] == "cancelled" and body["started_at"] is None
    # the sleep job is in its loop (a step done), so the cancel interrupts a running cell
    await wait_for(lambda: srv.service.store.get(running["job_id"]).progress.get("step", 0) >= 1, 60,
                   what="the first step")
    code, body, _ = await srv.request("DELETE", f"/api/anime/generation/{running['job_id']}"
                                                f"?cancel_token={running['cancel_token']}")
    assert code == 200 and body["status"] == "cancelled"
    assert body["progress"]["step"] < 150  # interrupted in its loop, not waited for
    assert body["error"]["type"] == "Cancelled"
    code, body, _ = await srv.request("DELETE", f"/api/anime/generation/{running['job_id']}"
                                                f"?cancel_token={running['cancel_token']}")
    assert code == 409 and body["error"]["code"] == "job_finished"
    after = await submit(srv, prompt="test:progress", steps=2)
    assert (await wait_status(srv, after["job_id"]))["status"] == "succeeded"


# -- kernel death -------------------------------------------------------------------------------------
async def test_kernel_death_fails_job_and_next_runs(srv):
    crash = await submit(srv, prompt="test:crash")
    nxt = await submit(srv, prompt="test:progress", steps=3)
    status = await wait_status(srv, crash["job_id"])
    assert status["status"] == "failed" and status["error"]["type"] == "KernelDied"
    assert "died" in status["error"]["message"]
    assert (await wait_status(srv, nxt["job_id"]))["status"] == "succeeded"
    error = await submit(srv, prompt="test:error")
    status = await wait_status(srv, error["job_id"])
    assert status["error"]["type"] == "ValueError"
    assert status["error"]["message"].startswith("ValueError: bad things in cell 2 (notebook cell")


# -- bad input: 4xx JSON, nothing stored -------------------------------------------------------------
BAD_REQUESTS = [
    (b"not json", 400, "invalid_json", None),
    (b"[1, 2]", 400, "invalid_json", None),
    (b"", 400, "invalid_json", None),
    (b'{"width": 64}', 422, "missing_field", "prompt"),
    (b'{"prompt": ""}', 422, "invalid_value", "prompt"),
    (b'{"prompt": 5}', 422, "invalid_value", "prompt"),
    (b'{"prompt": "a", "width": 65}', 422, "invalid_value", "width"),
    (b'{"prompt": "a", "width": "64"}', 422, "invalid_value", "width"),
    (b'{"prompt": "a", "height": 4096}', 422, "invalid_value", "height"),
    (b'{"prompt": "a", "steps": 0}', 422, "invalid_value", "steps"),
    (b'{"prompt": "a", "steps": true}', 422, "invalid_value", "steps"),
    (b'{"prompt": "a", "seed": -2}', 422, "invalid_value", "seed"),
    (b'{"prompt": "a", "phase": 4}', 422, "invalid_value", "phase"),
    (b'{"prompt": "a", "phase": [1]}', 422, "invalid_value", "phase"),
    (b'{"prompt": "a", "evil": 1}', 422, "unknown_field", "evil"),
    (b'{"prompt": "a", "frames": 16}', 422, "unknown_field", "frames"),
    (b'{"prompt": "a", "phase": 2, "reference_image": "../../etc/passwd"}', 422, "invalid_value", "reference_image"),
    (b'{"prompt": "a", "scheduler": "magic"}', 422, "invalid_value", "scheduler"),
    (b'{"prompt": "a", "guidance_scale": NaN}', 422, "invalid_value", "guidance_scale"),
    (b'{"prompt": "' + b"x" * 70000 + b'"}', 413, "body_too_large", None),
]


@pytest.mark.parametrize("raw,status,code,field", BAD_REQUESTS)
async def test_bad_generate_requests(srv, raw, status, code, field):
    before = srv.service.store.count()
    got, body, headers = await srv.request("POST", "/api/anime/generate", raw=raw)
    assert (got, body["error"]["code"], body["error"]["field"]) == (status, code, field), body
    assert headers["Content-Type"].startswith("application/json") and "Traceback" not in json.dumps(body)
    assert srv.service.store.count() == before


@pytest.mark.parametrize("path", [
    "/api/anime/outputs/{job}/../../home/jobs.sqlite",
    "/api/anime/outputs/{job}/%2e%2e/%2e%2e/home/jobs.sqlite",
    "/api/anime/outputs/{job}/.hidden",
    "/api/anime/outputs/{job}//etc/passwd",
    "/api/anime/outputs/{job}/nope.png",
    "/api/anime/outputs/" + "0" * 32 + "/manifest.json",
    "/api/anime/outputs/../home/jobs.sqlite",
    "/api/anime/thumbnails/{job}/../../home/jobs.sqlite",
    "/api/anime/generation/" + "0" * 32 + "/status",
])
async def test_no_path_escapes(srv, path):
    job = (await srv.request("GET", "/api/anime/jobs?status=succeeded&limit=1"))[1]["jobs"]
    job_id = job[0]["job_id"] if job else "f" * 32
    code, body, _ = await srv.request("GET", path.format(job=job_id))
    assert code in (403, 404) and isinstance(body, dict) and "error" in body


async def test_jobs_pagination_and_filter(srv):
    code, page1, _ = await srv.request("GET", "/api/anime/jobs?limit=2")
    assert len(page1["jobs"]) == 2 and page1["next_cursor"]
    code, page2, _ = await srv.request("GET", f"/api/anime/jobs?limit=2&cursor={page1['next_cursor']}")
    ids1, ids2 = [j["job_id"] for j in page1["jobs"]], [j["job_id"] for j in page2["jobs"]]
    assert not set(ids1) & set(ids2)
    created = [j["created_at"] for j in page1["jobs"] + page2["jobs"]]
    assert created == sorted(created, reverse=True)
    code, failed, _ = await srv.request("GET", "/api/anime/jobs?status=failed")
    assert failed["count"] >= 1 and all(j["status"] == "failed" for j in failed["jobs"])
    code, bad, _ = await srv.request("GET", "/api/anime/jobs?status=done")
    assert code == 422 and bad["error"]["field"] == "status"
    code, bad, _ = await srv.request("GET", "/api/anime/jobs?limit=0")
    assert code == 422 and bad["error"]["field"] == "limit"


# -- the real phase notebooks with tiny models -----------------------------------------------------------
@pytest.mark.slow
async def test_real_phases_tiny_end_to_end(srv):
    sheet = await submit(srv, prompt="anime girl with blue hair", seed=1, phase=1)
    status = await wait_status(srv, sheet["job_id"], timeout=240)
    assert status["status"] == "succeeded", status["error"]
    assert any(u.endswith("manifest.json") for u in status["outputs"])
    assert status["quality"] is not None and "score" in status["quality"], status["quality"]
    # tiny random weights draw the same noise pattern in every pose: the gate fails it, and says why
    assert status["quality"]["passed"] is False and status["quality"]["failures"], status["quality"]
    # scored in the job's own kernel: the executed notebook ends with the gate's cell and its decision
    executed = nbformat.read(srv.service.outputs_dir / sheet["job_id"] / "notebook.ipynb", as_version=4)
    step = executed.cells[-1]
    assert step.metadata["tags"] == ["animenb-job-step"] and "score_job(" in step.source
    assert "'passed': False" in step.outputs[-1]["data"]["text/plain"], step.outputs
    loop = await submit(srv, prompt="anime girl waving", seed=2, phase="ANIMATION_LOOP",
                        reference_image=sheet["job_id"], frames=8, fps=8)
    video = await submit(srv, prompt="anime girl", seed=3, phase=3, image=sheet["job_id"], frames=4, seconds=1.0)
    for job in (loop, video):
        status = await wait_status(srv, job["job_id"], timeout=240)
        assert status["status"] == "succeeded", status["error"]
    code, gallery, _ = await srv.request("GET", "/api/anime/gallery")
    phases = {i["phase"] for i in gallery["gallery"] if i["job_id"] in (sheet["job_id"], loop["job_id"], video["job_id"])}
    assert phases == {1, 2, 3}
    code, loops, _ = await srv.request("GET", "/api/anime/gallery?phase=ANIMATION_LOOP&limit=1")
    assert code == 200 and [i["job_id"] for i in loops["gallery"]] == [loop["job_id"]]  # filtered before paging
    assert loops["count"] == 1
    code, bad, _ = await srv.request("GET", "/api/anime/gallery?phase=9")
    assert code == 422 and bad["error"]["field"] == "phase"
    item = next(i for i in gallery["gallery"] if i["job_id"] == video["job_id"])
    assert item["url"] and item["thumbnail_url"]
    code, thumb, _ = await srv.request("GET", item["thumbnail_url"])
    assert code == 200 and Image.open(io.BytesIO(thumb)).format == "PNG"
