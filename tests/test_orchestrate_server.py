"""POST /api/anime/orchestrate end to end: a real server, one warm kernel, the tiny profile (64 px, 2 steps),
gates overridden (0.0 passes everything, 1.01 fails everything)."""
from __future__ import annotations

import asyncio
import json

import pytest
import pytest_asyncio
from serverkit import call, wait_done, wait_for, ws_messages

pytestmark = [pytest.mark.asyncio(loop_scope="module"), pytest.mark.timeout(300)]

API = "/api/anime"


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def srv(tmp_path_factory, start_live_server):
    async with start_live_server(tmp_path_factory.mktemp("orchestrate"), models="tiny") as server:
        _, server.admin = server.service.tokens.create("orch-admin", "admin")
        _, server.user = server.service.tokens.create("orch-user", "user")
        yield server


async def orchestrate(srv, **body):
    body = {"prompt": "anime girl with blue hair", "seed": 7, "steps": 2, "width": 64, "height": 64,
            "visibility": "public", **body}
    code, data, _ = await call(srv, "POST", f"{API}/orchestrate", body, token=srv.admin)
    assert code == 202, data
    assert data["kind"] == "orchestration" and data["status"] == "queued"
    return data


async def ws_events(url, timeout=180):
    return (await ws_messages(url, timeout=timeout))[0]


async def status(srv, job_id):
    code, body, _ = await call(srv, "GET", f"{API}/generation/{job_id}/status", token=srv.admin)
    assert code == 200, body
    return body


async def test_auth_and_validation(srv):
    body = {"prompt": "x", "steps": 2}
    code, data, _ = await call(srv, "POST", f"{API}/orchestrate", body)
    assert code == 401 and data["error"]["code"] == "auth_required"
    code, data, _ = await call(srv, "POST", f"{API}/orchestrate", body, token=srv.user)
    assert code == 403 and data["error"]["code"] == "forbidden"
    bad = [({"steps": 2}, "prompt"), ({"prompt": "x", "max_retries": 11}, "max_retries"),
           ({"prompt": "x", "threshold": "high"}, "threshold"),
           ({"prompt": "x", "thresholds": {"9": 0.5}}, "thresholds"),
           ({"prompt": "x", "threshold": 0.5, "thresholds": {}}, "thresholds"), ({"prompt": "x", "width": 65}, "width"),
           ({"prompt": "x", "models": "sd15"}, "models"), ({"prompt": "x", "phase": 2}, "phase"),
           ({"prompt": "x", "reference_image": "../../etc/passwd"}, "reference_image"),
           ({"prompt": "x", "advisory_gates": "yes"}, "advisory_gates")]
    before = srv.service.store.count()
    for payload, field in bad:
        code, data, _ = await call(srv, "POST", f"{API}/orchestrate", payload, token=srv.admin)
        assert 400 <= code < 500 and data["error"]["field"] == field, (payload, code, data)
    # a server started with `--no-quality` cannot gate: refused, nothing stored
    runner = srv.service.runner
    runner.quality = False
    try:
        code, data, _ = await call(srv, "POST", f"{API}/orchestrate", body, token=srv.admin)
    finally:
        runner.quality = True
    assert code == 409 and data["error"]["code"] == "quality_disabled"
    assert srv.service.store.count() == before


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def chain_ok(srv):
    """One chain that passes every gate, and its WebSocket events to the end."""
    job = await orchestrate(srv, threshold=0.0, max_retries=0)
    return job, await ws_events(job["ws_url"])


async def test_full_chain_succeeds_with_children_progress_and_outputs(srv, chain_ok):
    job, events = chain_ok
    assert events[-1]["event"] == "finished" and events[-1]["status"] == "succeeded", events[-1]
    progress = [e for e in events if e["event"] == "progress"]
    percents = [e["percent"] for e in progress]
    assert percents == sorted(percents) and percents[-1] >= 90
    stages = " ".join(e["stage"] for e in progress)
    for text in ("phase 1/3 CHARACTER_SHEET", "phase 2/3 ANIMATION_LOOP", "phase 3/3 FULL_VIDEO", "scoring",
                 "gate passed"):
        assert text in stages
    assert any(e["eta_seconds"] is not None for e in progress)

    body = await status(srv, job["job_id"])
    assert body["status"] == "succeeded" and body["kind"] == "orchestration" and body["progress"]["percent"] == 100
    children = body["children"]
    assert [(c["phase"], c["attempt"], c["status"]) for c in children] == [(1, 1, "succeeded"), (2, 1, "succeeded"),
                                                                           (3, 1, "succeeded")]
    assert all(c["score"] is not None and c["passed"] for c in children)
    assert "all 3 gates passed" in body["reason"]
    # the chain feeds each phase from the last: phase 2's reference is phase 1's run, phase 3's image a loop frame
    store = srv.service.store
    first, second, third = (store.get(c["job_id"]) for c in children)
    assert all(c.parent_id == job["job_id"] for c in (first, second, third))
    assert second.parameters["reference_image"] == str(srv.service.outputs_dir / first.id)
    assert third.parameters["image"].startswith(str(srv.service.outputs_dir / second.id))
    for child in children:
        child_status = await status(srv, child["job_id"])
        assert any(u.endswith("/notebook.ipynb") for u in child_status["outputs"])
        code, nb, _ = await call(srv, "GET", f"{API}/outputs/{child['job_id']}/notebook.ipynb")
        assert code == 200 and _json(nb)["cells"]
    # the parent's own files: the record, and the final outputs linked from the passing runs
    names = [u.rsplit("/", 1)[1] for u in body["outputs"]]
    assert {"orchestration.json", "manifest.json", "sheet.png", "video.mp4"} <= set(names), names
    code, sheet, _ = await call(srv, "GET", f"{API}/outputs/{job['job_id']}/sheet.png")
    assert code == 200 and sheet[:8] == b"\x89PNG\r\n\x1a\n"
    code, record, _ = await call(srv, "GET", f"{API}/outputs/{job['job_id']}/orchestration.json")
    assert code == 200 and _json(record)["status"] == "succeeded"


async def test_one_status_model_everywhere_children_included(srv, chain_ok):
    """/status, GET /generation/{id}, the /jobs row, the WebSocket `state` snapshot and the `finished` event's
    state are one body (AnimeService.status): an orchestration's children show in all of them."""
    job, events = chain_ok
    job_id = job["job_id"]
    bodies = {"status": await status(srv, job_id)}
    code, bodies["generation"], _ = await call(srv, "GET", f"{API}/generation/{job_id}", token=srv.admin)
    assert code == 200
    code, listing, _ = await call(srv, "GET", f"{API}/jobs?limit=200", token=srv.admin)
    assert code == 200
    bodies["jobs row"] = next(row for row in listing["jobs"] if row["job_id"] == job_id)
    replay = await ws_events(job["ws_url"] + f"?token={srv.admin}")
    assert [e["event"] for e in replay] == ["state", "finished"]
    bodies["ws state"], bodies["ws finished"] = replay[0]["state"], replay[1]["state"]
    bodies["live finished"] = events[-1]["state"]
    for name, body in bodies.items():
        assert body == bodies["status"], name
    assert len(bodies["status"]["children"]) == 3 and bodies["status"]["kind"] == "orchestration"


async def test_server_and_in_process_chains_write_the_same_parent_record_and_manifest(srv, chain_ok, tmp_path):
    """The two orchestrators share animenb.chain: the same chain run both ways leaves parent records and
    manifests with the same keys, file kinds and verdicts (values differ only where runs do: paths, times)."""
    from animenb.chain import RECORD_NAME
    from animenb.manifest import read_manifest
    from animenb.orchestrate import orchestrate as orchestrate_here

    job, _ = chain_ok
    server_dir = srv.service.outputs_dir / job["job_id"]
    local = await asyncio.get_running_loop().run_in_executor(None, lambda: orchestrate_here(
        "anime girl with blue hair", seed=7, steps=2, width=64, height=64, models="tiny", thresholds=0.0,
        max_retries=0, output_dir=tmp_path / "here", display=None))
    assert local.succeeded, local.reason
    theirs, ours = read_manifest(server_dir), read_manifest(local.output_dir)

    def shape(value):
        """Keys all the way down (lists: the shape of their first item; metrics: which ones the scorer could
        compute is the quality step's business), leaves dropped."""
        if isinstance(value, dict):
            return {k: "." if k == "metrics" else shape(v) for k, v in value.items()}
        if isinstance(value, list):
            return [shape(value[0])] if value else []
        return "."

    for key in ("outputs", "quality", "timings"):
        assert shape(theirs[key]) == shape(ours[key]), key
    assert set(theirs) == set(ours)
    assert [f["kind"] for f in theirs["files"]] == [f["kind"] for f in ours["files"]]
    assert {"sheet", "gif", "video", "orchestration"} <= {f["kind"] for f in ours["files"]}
    for key in ("phase", "status", "seed", "models"):
        assert theirs[key] == ours[key], key
    assert theirs["quality"]["threshold"] == ours["quality"]["threshold"] == 0.0
    assert theirs["quality"]["passed"] is ours["quality"]["passed"] is True
    for manifest in (theirs, ours):  # the parent's quality is its weakest final attempt, with that attempt's gate
        weakest = min(manifest["quality"]["phases"].values(), key=lambda p: p["score"])
        assert manifest["quality"]["score"] == weakest["score"]
        for rel in manifest["outputs"].values():
            if isinstance(rel, str):
                assert (server_dir if manifest is theirs else local.output_dir).joinpath(rel).exists(), rel

    record_theirs = json.loads((server_dir / RECORD_NAME).read_text())
    record_ours = json.loads((local.output_dir / RECORD_NAME).read_text())
    assert set(record_theirs) == set(record_ours)
    for key in ("phases", "attempts", "chain", "thresholds", "timings"):
        assert shape(record_theirs[key]) == shape(record_ours[key]), key
    assert [p["status"] for p in record_theirs["phases"]] == [p["status"] for p in record_ours["phases"]]


async def test_failed_gate_retries_with_new_seeds_then_fails_with_reason(srv):
    job = await orchestrate(srv, threshold=1.01, max_retries=1)
    events = await ws_events(job["ws_url"])
    assert events[-1]["status"] == "failed"
    percents = [e["percent"] for e in events if e["event"] == "progress"]
    assert percents == sorted(percents)
    body = await status(srv, job["job_id"])
    assert body["status"] == "failed" and body["error"]["type"] == "QualityGateFailed"
    assert "CHARACTER_SHEET failed its quality gate (threshold 1.01) after 2 attempts" in body["error"]["message"]
    children = body["children"]
    assert [(c["phase"], c["attempt"], c["status"], c["passed"]) for c in children] == [
        (1, 1, "succeeded", False), (1, 2, "succeeded", False)]
    assert children[0]["seed"] == 7 and children[1]["seed"] != 7
    assert all(c["threshold"] == 1.01 for c in children)


async def test_advisory_gates_run_the_chain_through_and_record_each_failure(srv):
    job = await orchestrate(srv, threshold=1.01, max_retries=1, advisory_gates=True)
    events = await ws_events(job["ws_url"])
    assert events[-1]["status"] == "succeeded"
    body = await status(srv, job["job_id"])
    assert "ran through with advisory gates in 3 attempts" in body["reason"]
    assert [(c["phase"], c["attempt"], c["passed"]) for c in body["children"]] == [
        (1, 1, False), (2, 1, False), (3, 1, False)]
    record = json.loads((srv.service.outputs_dir / job["job_id"] / "orchestration.json").read_text())
    assert all(any(f.startswith("score ") for f in a["failures"]) for a in record["attempts"])


async def test_cancel_mid_chain_cancels_the_child_and_stops(srv):
    job = await orchestrate(srv, threshold=0.0, max_retries=0, steps=6)
    parent = job["job_id"]

    async def running_child():
        body = await status(srv, parent)
        kids = [c for c in body.get("children") or [] if c["status"] == "running"]
        return kids[0] if kids and body["progress"]["percent"] > 0 else None

    child = await wait_for(running_child)
    code, body, _ = await call(srv, "DELETE", f"{API}/generation/{parent}", token=srv.admin)
    assert code == 200 and body["status"] == "cancelled", body
    body = await status(srv, parent)
    assert body["status"] == "cancelled" and body["error"]["type"] == "Cancelled"
    kids = body["children"]
    assert kids[-1]["job_id"] == child["job_id"]  # no further phase started
    # the running child is cancelled (or, if it finished in the instant before the cancel, the chain stops there)
    assert kids[-1]["status"] == "cancelled" or (kids[-1]["status"] == "succeeded"
                                                 and "before" in body["error"]["message"]), body
    # the chain's task has ended, so no further child can come
    assert parent not in srv.service.runner.drivers["orchestration"].active()
    assert len((await status(srv, parent))["children"]) == len(kids)
    # the kernel is free for the next job
    code, data, _ = await call(srv, "POST", f"{API}/generate", {"prompt": "test:progress", "steps": 2})
    assert code == 202
    assert (await wait_done(srv, data["job_id"])).status.value == "succeeded"


def _json(body):
    return json.loads(body) if isinstance(body, (bytes, str)) else body
