"""The sweep's plan (animenb.sweeps.plan): A1111's axis forms, grid and zip order, spec checks naming the field;
and the grid image's layout."""
from __future__ import annotations

import pytest

from animenb.phases.cost import FRAME_STEPS, MIN_STEPS
from animenb.sweeps.grid import GridLayout, grid_pages
from animenb.sweeps.plan import MAX_CELLS, SweepError, build_plan, combine, plan_from_dict


@pytest.mark.parametrize("axis, raw, values", [
    ("steps", [8, 15, 25], [8, 15, 25]),
    ("steps", "8, 15,25", [8, 15, 25]),
    ("steps", "1-4", [1, 2, 3, 4]),
    ("steps", "8-40:8", [8, 16, 24, 32, 40]),
    ("steps", "8-40 (+8)", [8, 16, 24, 32, 40]),
    ("steps", "40-8:16", [40, 24, 8]),
    ("steps", "10-20 [3]", [10, 15, 20]),
    ("steps", [8.0, 9], [8, 9]),                          # JSON's 8.0 is the integer 8
    ("guidance_scale", "5-7:0.5", [5.0, 5.5, 6.0, 6.5, 7.0]),
    ("guidance_scale", "5-7 [5]", [5.0, 5.5, 6.0, 6.5, 7.0]),
    ("guidance_scale", [5, 7.5], [5.0, 7.5]),
    ("scheduler", "euler, ddim", ["euler", "ddim"]),
    ("prompt", ["a girl", "a boy, smiling"], ["a girl", "a boy, smiling"]),
])
def test_axis_forms(axis, raw, values):
    parameters = {} if axis == "prompt" else {"prompt": "x"}
    assert build_plan(1, parameters, {axis: raw}).axes[axis] == values


@pytest.mark.parametrize("axes, mode, field", [
    ({"colour": [1]}, "grid", "axes.colour"),
    ({"reference_image": ["a.png"]}, "grid", "axes.reference_image"),   # image references are not swept
    ({"steps": [0, 2]}, "grid", "axes.steps"),
    ({"steps": "1-2:0.5"}, "grid", "axes.steps"),                        # 1.5 steps
    ({"steps": "0-0:0"}, "grid", "axes.steps"),
    ({"steps": "1-100000"}, "grid", "axes.steps"),
    ({"steps": "lots"}, "grid", "axes.steps"),
    ({"steps": [2, 2]}, "grid", "axes.steps"),
    ({"steps": {"a": 1}}, "grid", "axes.steps"),
    ({"steps": []}, "grid", "axes.steps"),
    ({"scheduler": "DPM++ 9M"}, "grid", "axes.scheduler"),
    ({"seed": f"1-{MAX_CELLS + 1}"}, "grid", "axes"),
    ({"steps": [1], "seed": [1], "width": [64], "height": [64]}, "grid", "axes"),  # 4 axes
    ({}, "grid", "axes"),
    ({"steps": [1, 2], "seed": [1]}, "zip", "axes"),
    ({"steps": [1]}, "diagonal", "mode"),
])
def test_refused_axes_name_the_field(axes, mode, field):
    with pytest.raises(SweepError) as caught:
        build_plan(1, {"prompt": "x"}, axes, mode)
    assert caught.value.field == field, str(caught.value)


def test_a_cell_breaking_a_cross_field_rule_names_its_axis():
    with pytest.raises(SweepError) as caught:  # phase 2: loop_overlap <= frames // 2
        build_plan(2, {"prompt": "x", "loop_overlap": 4}, {"frames": [16, 6]})
    assert caught.value.field == "axes.frames" and "cell {'frames': 6}" in str(caught.value)


def test_grid_and_zip_order_and_cost():
    plan = build_plan(1, {"prompt": "x", "width": 64, "height": 64}, {"steps": [1, 2], "seed": [7, 8], "scheduler": "euler, ddim"})
    assert plan.cells[:3] == [{"steps": 1, "seed": 7, "scheduler": "euler"}, {"steps": 2, "seed": 7, "scheduler": "euler"},
                              {"steps": 1, "seed": 8, "scheduler": "euler"}]  # X fastest, then Y, then Z
    assert len(plan.cells) == 8 and plan.shape() == (2, 2, 2)
    # 8 cells of 8 poses at 64 px, 1 or 2 steps each counted as MIN_STEPS, plus the 8 frames each writes
    assert plan.cost(default_size=512) == pytest.approx(8 * 64 * 64 * (MIN_STEPS * 8 + FRAME_STEPS * 8) / 1e6)
    assert plan_from_dict(plan.as_dict()) == plan
    assert combine({"steps": [1, 2], "seed": [7, 8]}, "zip") == [{"steps": 1, "seed": 7}, {"steps": 2, "seed": 8}]


def test_grid_pages_have_the_layouts_size():
    plan = build_plan(1, {"prompt": "x"}, {"steps": [1, 2, 3], "seed": [1, 2], "guidance_scale": [5, 7]})
    results = [{"status": "succeeded", "quality_score": 0.5, "verdict": "fail"}] * len(plan.cells)
    pages = grid_pages(plan.axes, plan.cells, results, [None] * len(plan.cells), cell=64)
    layout = GridLayout(columns=3, rows=2, cell=64, label_width=64 * 2 // 3, title_height=26)
    assert len(pages) == 2 and all(p.size == layout.size for p in pages)
    zipped = build_plan(1, {"prompt": "x"}, {"steps": [1, 2], "seed": [1, 2]}, "zip")
    pages = grid_pages(zipped.axes, zipped.cells, results[:2], [None, None], mode="zip", cell=64)
    assert len(pages) == 1 and pages[0].size == GridLayout(columns=2, rows=1, cell=64).size


def test_a_stored_recipe_this_version_refuses_fails_the_parent(tmp_path):
    import asyncio
    from types import SimpleNamespace

    from animenb.runner.events import EventBus
    from animenb.runner.public_paths import PathScrubber
    from animenb.runner.sweep_jobs import SweepDriver
    from animenb.store import JobStatus, SqliteJobStore

    store = SqliteJobStore()
    finished = []
    async def record_end(job_id, status, **fields):  # the runner's end write, without its retries
        return store.transition(job_id, status, **fields)

    host = SimpleNamespace(store=store, bus=EventBus(), outputs_dir=tmp_path, public_paths=PathScrubber(outputs_dir=tmp_path),
                           finished=lambda job, duration=None: finished.append(job), record_end=record_end)
    bad = {"phase": 1, "parameters": {"prompt": "x"}, "axes": {"steps": [0]}, "mode": "grid"}
    store.create(phase=1, kind="sweep", parameters={"prompt": "x", "sweep": bad})
    parent = store.claim_next("w")
    asyncio.run(SweepDriver(host).start(parent, None))
    job = store.get(parent.id)
    assert job.status is JobStatus.FAILED and "axes.steps" in job.error.message and finished == [job]
