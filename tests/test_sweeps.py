"""POST /api/anime/sweeps end to end on a real server (one warm kernel, the tiny profile): validation field by
field, a 2x2 grid with its report and grid image, cancel mid-sweep, and a server restart mid-sweep."""
from __future__ import annotations

import asyncio
import io
import json
import time

import pytest
import pytest_asyncio
from PIL import Image

from animenb.store import JobStatus
from animenb.sweeps.grid import GridLayout
from serverkit import call, ws_messages

pytestmark = [pytest.mark.asyncio(loop_scope="module"), pytest.mark.timeout(600)]

API = "/api/anime"
TINY = {"prompt": "anime girl with blue hair", "seed": 7, "width": 64, "height": 64}
NO_SEED = {k: v for k, v in TINY.items() if k != "seed"}


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def srv(tmp_path_factory, start_live_server):
    async with start_live_server(tmp_path_factory.mktemp("sweeps"), models="tiny") as server:
        _, server.user = server.service.tokens.create("sweep-user", "user")
        yield server


async def sweep(srv, expect=202, **body):
    code, data, _ = await call(srv, "POST", f"{API}/sweeps", body, token=srv.user)
    assert code == expect, data
    return data


async def wait_terminal(srv, job_id, timeout=300):
    deadline = time.monotonic() + timeout
    while not (job := srv.service.store.get(job_id)).terminal:
        assert time.monotonic() < deadline, job
        await asyncio.sleep(0.05)
    return job


async def test_bad_sweeps_are_refused_with_the_field_named(srv):
    code, data, _ = await call(srv, "POST", f"{API}/sweeps", {"parameters": TINY, "axes": {"steps": [1, 2]}})
    assert code == 401, data
    bad = [
        ({"parameters": TINY, "axes": {"colour": [1, 2]}}, "axes.colour"),                 # unknown name
        ({"parameters": TINY, "axes": {"steps": [2, 500]}}, "axes.steps"),                  # out of range
        ({"parameters": TINY, "axes": {"steps": "0-3"}}, "axes.steps"),                     # a range out of range
        ({"parameters": TINY, "axes": {"width": [64, 65]}}, "axes.width"),                  # not a multiple of 8
        ({"parameters": TINY, "axes": {"steps": "1-10", "guidance_scale": "1-7"}}, "axes"),  # 70 cells > the cap
        ({"parameters": TINY, "axes": {"steps": [1, 2], "guidance_scale": [5]}, "mode": "zip"}, "axes"),
        ({"parameters": TINY, "axes": {"steps": [1, 2]}, "mode": "spiral"}, "mode"),
        ({"parameters": {**TINY, "steps": 2}, "axes": {"steps": [1, 2]}}, "axes.steps"),   # both places
        ({"parameters": {**TINY, "width": 63}, "axes": {"steps": [1, 2]}}, "parameters.width"),
        ({"parameters": {"seed": 1}, "axes": {"steps": [1, 2]}}, "parameters.prompt"),
        ({"parameters": TINY}, "axes"),
        ({"parameters": TINY, "axes": {"steps": [1]}, "colour": 1}, "colour"),
        ({"phase": 2, "parameters": TINY, "axes": {"poses": [1]}}, "axes.poses"),
    ]
    before = srv.service.store.count()
    for body, field in bad:
        code, data, _ = await call(srv, "POST", f"{API}/sweeps", body, token=srv.user)
        assert code == 422 and data["error"]["field"] == field, (body, code, data)
    # priced as a whole against the caller's cap: 64 cells of a default 512 px sheet are over a user's 1500
    code, data, _ = await call(srv, "POST", f"{API}/sweeps", {"parameters": {"prompt": "x", "width": 512, "height": 512},
                                                             "axes": {"seed": "1-64"}}, token=srv.user)
    assert code == 422 and data["error"]["code"] == "job_too_costly" and "64 cells" in data["error"]["message"], data
    # its cells count against the caller's queued jobs
    cfg = srv.service.config
    cfg.max_queued_per_user, old = 3, cfg.max_queued_per_user
    try:
        code, data, headers = await call(srv, "POST", f"{API}/sweeps", {"parameters": TINY, "axes": {"steps": "1-4"}},
                                         token=srv.user)
    finally:
        cfg.max_queued_per_user = old
    assert code == 429 and data["error"]["code"] == "too_many_queued" and headers.get("Retry-After"), data
    assert srv.service.store.count() == before


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def grid_2x2(srv):
    reply = await sweep(srv, phase=1, parameters={**NO_SEED, "steps": 2}, axes={"guidance_scale": [5, 7], "seed": "1-2"},
                        visibility="public")
    messages, _, _ = await ws_messages(reply["ws_url"], timeout=500)
    return reply, messages


async def test_a_2x2_grid_runs_every_cell_and_writes_its_report(srv, grid_2x2):
    reply, messages = grid_2x2
    assert reply["kind"] == "sweep" and reply["cells"] == 4 and reply["axes"] == {"guidance_scale": [5.0, 7.0],
                                                                                  "seed": [1, 2]}
    assert messages[-1]["event"] == "finished" and messages[-1]["status"] == "succeeded", messages[-1]
    progress = [m for m in messages if m["event"] == "progress"]
    percents = [m["percent"] for m in progress]
    assert percents == sorted(percents) and progress[-1]["total_steps"] == 4
    assert any(m["eta_seconds"] is not None for m in progress)

    code, body, _ = await call(srv, "GET", f"{API}/generation/{reply['job_id']}/status", token=srv.user)
    assert code == 200 and body["kind"] == "sweep" and body["progress"]["percent"] == 100
    cells = sorted(body["children"], key=lambda c: c["cell"])
    assert [c["values"] for c in cells] == [{"guidance_scale": 5.0, "seed": 1}, {"guidance_scale": 7.0, "seed": 1},
                                            {"guidance_scale": 5.0, "seed": 2}, {"guidance_scale": 7.0, "seed": 2}]
    assert all(c["status"] == "succeeded" and c["score"] is not None for c in cells)
    store = srv.service.store
    for c in cells:
        child = store.get(c["job_id"])
        assert child.parent_id == reply["job_id"] and child.parameters["steps"] == 2
        assert (child.parameters["guidance_scale"], child.parameters["seed"]) == (c["values"]["guidance_scale"],
                                                                                  c["values"]["seed"])
    names = {u.rsplit("/", 1)[1] for u in body["outputs"]}
    assert {"grid.png", "sweep.json", "manifest.json", "report.ipynb"} <= names, names

    code, png, _ = await call(srv, "GET", f"{API}/outputs/{reply['job_id']}/grid.png")
    grid = Image.open(io.BytesIO(png))
    layout = GridLayout(columns=2, rows=2, label_width=192 * 2 // 3)
    assert grid.size == layout.size
    assert "X type: guidance_scale" in grid.info["parameters"] and 'X values: "5, 7"' in grid.info["parameters"]
    assert "Y type: seed" in grid.info["parameters"] and json.loads(grid.info["sweep"])["axes"]["seed"] == [1, 2]
    pixels = grid.convert("L")
    header = pixels.crop((layout.label_width, 0, grid.width, layout.header_height))
    labels = pixels.crop((0, layout.header_height, layout.label_width, grid.height))
    captions = pixels.crop((layout.label_width, layout.header_height + layout.cell, grid.width,
                            layout.header_height + layout.cell + layout.caption_height))
    for band in (header, labels, captions):  # text drawn where the axis labels and the captions go
        assert band.getextrema()[0] < 128

    code, report, _ = await call(srv, "GET", f"{API}/outputs/{reply['job_id']}/report.ipynb")
    nb = json.loads(report)
    assert not [o for c in nb["cells"] for o in c.get("outputs", []) if o.get("output_type") == "error"]
    assert str(srv.service.outputs_dir) not in report.decode()
    assert any("image/png" in o.get("data", {}) for c in nb["cells"] for o in c.get("outputs", []))

    from animenb.runs import to_dataframe

    runs = to_dataframe(store, outputs_dir=srv.service.outputs_dir)
    members = runs[runs["sweep"] == reply["job_id"]]
    assert sorted(members["phase"]) == ["CHARACTER_SHEET"] * 4 + ["SWEEP"]

    code, gallery, _ = await call(srv, "GET", f"{API}/gallery")  # the sweep is one card: its grid
    card = next(g for g in gallery["gallery"] if g["job_id"] == reply["job_id"])
    assert card["url"].endswith("/grid.png") and card["thumbnail_url"].endswith("/grid.png")
    shown = {g["job_id"] for g in gallery["gallery"]}  # its cells have no cards of their own
    assert not shown & {c["job_id"] for c in cells} and gallery["count"] == len(shown)
    code, by_phase, _ = await call(srv, "GET", f"{API}/gallery?phase=1")
    assert {g["job_id"] for g in by_phase["gallery"]} == shown and by_phase["count"] == len(shown)
    code, jobs, _ = await call(srv, "GET", f"{API}/jobs", token=srv.user)  # /jobs still lists every cell
    assert {c["job_id"] for c in cells} <= {j["job_id"] for j in jobs["jobs"]}

    code, listing, _ = await call(srv, "GET", f"{API}/sweeps", token=srv.user)
    assert code == 200 and reply["job_id"] in [s["job_id"] for s in listing["sweeps"]]


async def test_cancelling_a_sweep_cancels_its_cells(srv):
    reply = await sweep(srv, parameters={**NO_SEED, "prompt": "test:sleep 0.1", "steps": 40}, axes={"seed": "1-3"})
    parent = reply["job_id"]
    store = srv.service.store
    deadline = time.monotonic() + 120
    while not [j for j in store.list(limit=20)[0] if j.parent_id == parent and j.status is JobStatus.RUNNING]:
        assert time.monotonic() < deadline
        await asyncio.sleep(0.05)
    code, body, _ = await call(srv, "DELETE", f"{API}/generation/{parent}", token=srv.user)
    assert code == 200, body
    job = await wait_terminal(srv, parent)
    assert job.status is JobStatus.CANCELLED
    kids = [j for j in store.list(limit=20)[0] if j.parent_id == parent]
    assert len(kids) == 3 and all(k.status is JobStatus.CANCELLED for k in kids), [k.status for k in kids]


@pytest.mark.asyncio(loop_scope="function")
async def test_a_server_restart_mid_sweep_keeps_the_finished_cells(tmp_path, start_live_server):
    body = {"parameters": {**TINY, "prompt": "test:progress 0.1"}, "axes": {"steps": [2, 30, 31]}}
    async with start_live_server(tmp_path, models="tiny") as srv:
        _, srv.user = srv.service.tokens.create("restart-user", "user")
        parent = (await sweep(srv, **body))["job_id"]
        store = srv.service.store
        deadline = time.monotonic() + 120
        while True:
            kids = [j for j in store.list(limit=20)[0] if j.parent_id == parent]
            if any(k.status is JobStatus.SUCCEEDED for k in kids) and any(k.status is JobStatus.RUNNING for k in kids):
                break
            assert time.monotonic() < deadline, [(k.status, k.error) for k in kids] + [store.get(parent)]
            await asyncio.sleep(0.05)
        done_before = {k.id for k in kids if k.status is JobStatus.SUCCEEDED}
    async with start_live_server(tmp_path, models="tiny") as srv:
        job = await wait_terminal(srv, parent)
        assert job.status is JobStatus.SUCCEEDED and job.requeues == 1, job
        kids = [srv.service.store.get(i) for i in job.outputs.children]
        assert len(kids) == 3 and all(k.status is JobStatus.SUCCEEDED for k in kids)
        assert done_before <= {k.id for k in kids}  # finished cells are kept, not run again
        steps = sorted(k.parameters["steps"] for k in kids)
        assert steps == [2, 30, 31]


async def test_the_cli_submits_a_sweep_to_a_server(srv, capsys):
    from animenb.cli import main

    argv = ["sweep", "1", "-p", "prompt", "test:progress 0.01", "-p", "width", "64", "-p", "height", "64",
            "-p", "seed", "5", "--axis", "steps=1-2", "--url", srv.base, "--token", srv.user, "--quiet"]
    code = await asyncio.get_running_loop().run_in_executor(None, main, argv)
    out = capsys.readouterr().out
    assert code == 0 and "SUCCEEDED: 2 of 2 cells succeeded" in out and "grid.png" in out, out
    assert await asyncio.get_running_loop().run_in_executor(None, main, argv[:-5] + ["--axis", "colour=1",
                                                                                     "--url", srv.base]) == 2


def test_the_cli_and_the_notebook_function_run_a_sweep_here(tmp_path, capsys):
    import animenb
    from animenb.cli import main

    base = ["-p", "prompt", "anime girl", "-p", "width", "64", "-p", "height", "64", "-p", "seed", "3"]
    assert main(["sweep", "1", *base, "--axis", "steps=1-2", "--models", "tiny", "--quiet",
                 "--output-dir", str(tmp_path / "cli")]) == 0
    out = capsys.readouterr().out
    assert "report:" in out and (tmp_path / "cli" / "report.ipynb").is_file(), out
    assert Image.open(tmp_path / "cli" / "grid.png").size == GridLayout(columns=2, rows=1).size
    df = animenb.sweep(1, {"prompt": "anime girl", "seed": 3, "width": 64, "height": 64},
                       {"steps": [1], "guidance_scale": "5-7:2"}, models="tiny", out_dir=tmp_path / "nb", show=False,
                       progress=False)
    assert list(df["guidance_scale"]) == [5.0, 7.0] and df["quality_score"].notna().all()
    assert set(df["verdict"]) <= {"pass", "fail"} and df.attrs["sweep_dir"] == str(tmp_path / "nb")
    from animenb.runs import to_dataframe

    assert to_dataframe(tmp_path).groupby("sweep").size().to_dict() == {"cli": 3, "nb": 3}  # 2 cells + the sweep
