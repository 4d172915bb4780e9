"""animenb.runs: runs as a DataFrame from constructed manifests, a job store and real tiny runs; the figures."""
import datetime as dt
import json
import math
from pathlib import Path

import pandas as pd
import pytest
from matplotlib.figure import Figure

from animenb.runs import (COLUMNS, build_demo_runs, denoising_steps, plot_quality_vs_steps, plot_time_vs_steps,
                          summary, to_dataframe)


def manifest(phase_id, name, *, steps=15, created="2025-03-01T10:00:00.000+00:00", generate=2.0, total=2.5,
             score=None, image=None, prompt="girl", seed=1):
    m = {"created_at": created, "phase": {"id": phase_id, "name": name},
         "parameters": {"prompt": prompt, "seed": seed, "steps": steps, "scheduler": "dpmpp_2m",
                        "guidance_scale": 7.0, "width": 64, "height": 64, "image": image},
         "seed": seed, "models": "tiny (random weights)", "backend": {"backend": "diffusers"},
         "timings": {"generate_seconds": generate, "write_seconds": 0.1, "total_seconds": total},
         "outputs": {}, "files": []}
    if score is not None:
        m["quality"] = {"score": score, "passed": score >= 0.8, "threshold": 0.8}
    return m


def write(root: Path, rel: str, data) -> Path:
    path = root / rel
    path.mkdir(parents=True, exist_ok=True)
    (path / "manifest.json").write_text(data if isinstance(data, str) else json.dumps(data))
    return path


@pytest.fixture
def outputs(tmp_path):
    root = tmp_path / "outputs"
    write(root, "a-sheet", manifest(1, "CHARACTER_SHEET", steps=10, generate=4.0, score=0.9,
                                    created="2025-03-01T10:00:00+00:00"))
    write(root, "b-loop", manifest(2, "ANIMATION_LOOP", steps=20, generate=5.0, score=0.5,
                                   created="2025-03-02T23:59:00+00:00"))
    write(root, "c-video", manifest(3, "FULL_VIDEO", steps=5, generate=2.0, created="2025-03-03T08:00:00+00:00"))
    # an orchestration: its own manifest plus sub-runs below it
    write(root, "orch", {"phase": {"id": None, "name": "ORCHESTRATION"}, "created_at": "2025-03-04T00:00:00+00:00",
                         "status": "succeeded", "parameters": {"prompt": "girl", "steps": 8},
                         "timings": {"total_seconds": 9.0}, "quality": {"score": 0.81, "passed": True}})
    write(root, "orch/1_character_sheet", manifest(1, "CHARACTER_SHEET", steps=8, created="2025-03-04T00:01:00+00:00"))
    write(root, "broken", "{not json")
    write(root, "not-a-run", {"hello": "world"})
    return root


def test_rows_from_manifests(outputs):
    df = to_dataframe(outputs)
    assert list(df.columns) == COLUMNS
    assert len(df) == 5  # broken and not-a-run skipped
    assert list(df["run"]) == ["orch/1_character_sheet", "orch", "c-video", "b-loop", "a-sheet"]  # newest first
    sheet = df.set_index("run").loc["a-sheet"]
    assert (sheet["phase"], sheet["phase_id"], sheet["steps"], sheet["seed"]) == ("CHARACTER_SHEET", 1, 10, 1)
    assert sheet["denoising_steps"] == 80 and sheet["step_rate"] == pytest.approx(20.0)  # 8 poses x 10 / 4 s
    assert sheet["quality_score"] == 0.9 and sheet["passed"] is True and sheet["threshold"] == 0.8
    assert sheet["duration_seconds"] == 2.5 and sheet["models"] == "tiny (random weights)"
    video = df.set_index("run").loc["c-video"]
    assert video["denoising_steps"] == 10 and math.isnan(video["quality_score"])  # source image + SVD; unscored
    assert df.set_index("run").loc["orch/1_character_sheet", "parent"] == "orch"
    orch = df.set_index("run").loc["orch"]
    assert (orch["phase"], orch["status"], orch["duration_seconds"], orch["quality_score"]) == (
        "ORCHESTRATION", "succeeded", 9.0, 0.81)
    assert pd.isna(orch["phase_id"]) and pd.isna(orch["denoising_steps"]) and math.isnan(orch["step_rate"])
    assert pd.isna(df.set_index("run").loc["a-sheet", "parent"])
    assert str(df["created_at"].dt.tz) == "UTC" and str(df["steps"].dtype) == "Int64"


@pytest.mark.parametrize("phase, runs", [
    (1, {"a-sheet", "orch/1_character_sheet"}),
    ("animation_loop", {"b-loop"}),
    ([2, "FULL_VIDEO"], {"b-loop", "c-video"}),
    ("orchestration", {"orch"}),
])
def test_phase_filter(outputs, phase, runs):
    assert set(to_dataframe(outputs, phase=phase)["run"]) == runs


@pytest.mark.parametrize("since, until, runs", [
    ("2025-03-02", None, {"b-loop", "c-video", "orch", "orch/1_character_sheet"}),
    (None, "2025-03-02", {"a-sheet", "b-loop"}),  # a bare date includes the whole day (23:59)
    (dt.date(2025, 3, 2), dt.date(2025, 3, 3), {"b-loop", "c-video"}),
    ("2025-03-02T00:00:00Z", "2025-03-02T12:00:00+00:00", set()),
    (dt.datetime(2025, 3, 3, 8, 0, tzinfo=dt.timezone.utc), None, {"c-video", "orch", "orch/1_character_sheet"}),
])
def test_date_filter(outputs, since, until, runs):
    assert set(to_dataframe(outputs, since=since, until=until)["run"]) == runs


def test_bad_sources_are_one_line_errors(tmp_path, outputs):
    with pytest.raises(FileNotFoundError, match="no outputs directory"):
        to_dataframe(tmp_path / "missing")
    with pytest.raises(ValueError, match="`source`"):
        to_dataframe(42)
    with pytest.raises(ValueError, match="`phase`"):
        to_dataframe(outputs, phase=7)
    with pytest.raises(ValueError, match="`since`"):
        to_dataframe(outputs, since="yesterday-ish")


def test_empty_outputs_gives_empty_frame_with_columns(tmp_path, monkeypatch):
    monkeypatch.setenv("ANIMENB_OUTPUTS", str(tmp_path / "nothing-here"))
    df = to_dataframe()
    assert df.empty and list(df.columns) == COLUMNS
    for fig in (plot_quality_vs_steps(df), plot_time_vs_steps(df)):
        assert isinstance(fig, Figure) and "no runs" in fig.axes[0].texts[0].get_text()


@pytest.mark.parametrize("phase, parameters, expected", [
    ("CHARACTER_SHEET", {"steps": 15}, 120),
    ("ANIMATION_LOOP", {"steps": 15}, 15),
    ("FULL_VIDEO", {"steps": 15, "image": None}, 30),
    ("FULL_VIDEO", {"steps": 15, "image": "runs/loop"}, 15),
    ("CHARACTER_SHEET", {"steps": "15"}, None),
])
def test_denoising_steps(phase, parameters, expected):
    assert denoising_steps(phase, parameters) == expected


def test_store_rows_join_their_manifests(tmp_path):
    store_mod = pytest.importorskip("animenb.store")
    store = store_mod.SqliteJobStore(":memory:")
    outputs = tmp_path / "outputs"
    done = store.create(phase=1, parameters={"prompt": "from store", "steps": 4})
    store.transition(done.id, "running")
    store.transition(done.id, "succeeded",
                     outputs=store_mod.JobOutputs(quality={"score": 0.85, "passed": True, "threshold": 0.8}))
    write(outputs, done.id, manifest(1, "CHARACTER_SHEET", steps=4, score=0.85, prompt="from store",
                                     created="2025-03-05T00:00:00+00:00"))
    queued = store.create(phase=2, parameters={"prompt": "waiting", "steps": 15})
    try:
        df = to_dataframe(store, outputs_dir=outputs)
        assert set(df["job_id"]) == {done.id, queued.id}
        row = df.set_index("job_id").loc[done.id]
        assert (row["status"], row["source"], row["steps"], row["quality_score"]) == ("succeeded", "store", 4, 0.85)
        assert row["output_dir"] == str(outputs / done.id)
        waiting = df.set_index("job_id").loc[queued.id]
        assert (waiting["status"], waiting["phase"], waiting["prompt"]) == ("queued", "ANIMATION_LOOP", "waiting")
        assert pd.isna(waiting["output_dir"])
        # store + the same outputs directory: one row per run, the store's row (with its status) kept
        both = to_dataframe([store, outputs], outputs_dir=outputs)
        assert len(both) == 2 and both.set_index("job_id").loc[done.id, "status"] == "succeeded"
    finally:
        store.close()


# -- real tiny runs ------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny_runs(tmp_path_factory):
    import torch

    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("tiny-runs")
    build_demo_runs(root, steps=(1, 2))
    return root


def test_real_runs_as_dataframe_and_figures(tiny_runs, tmp_path):
    df = to_dataframe(tiny_runs, phase="CHARACTER_SHEET", since=dt.date.today() - dt.timedelta(days=1))
    assert sorted(df["steps"]) == [1, 2] and set(df["seed"]) == {7}
    assert (df["generate_seconds"] > 0).all() and (df["step_rate"] > 0).all()
    assert df["quality_score"].between(0, 1).all() and df["passed"].isin([True, False]).all()
    assert all(Path(p, "manifest.json").is_file() for p in df["output_dir"])
    table = summary(df)
    assert list(table["steps"]) == [1, 2] and list(table["runs"]) == [1, 1]

    quality, timing = plot_quality_vs_steps(df), plot_time_vs_steps(df)
    for fig, name in ((quality, "quality.png"), (timing, "time.png")):
        assert isinstance(fig, Figure)
        ax = fig.axes[0]
        assert ax.get_xlabel() == "steps" and len(ax.collections) == 1  # one phase: one scatter
        assert sorted(ax.collections[0].get_offsets()[:, 0]) == [1.0, 2.0]
        fig.savefig(tmp_path / name)
        assert (tmp_path / name).stat().st_size > 1000
    assert quality.axes[0].get_ylim() == (0, 1.02)
    assert any(line.get_linestyle() == "--" for line in quality.axes[0].lines)  # the gate
    assert "steps/s" in timing.axes[0].get_legend().get_texts()[0].get_text()
    assert pd.api.types.is_datetime64_any_dtype(df["created_at"])


def test_compare_notebook_has_one_parameters_cell():
    import nbformat

    from animenb.config import notebooks_dir

    nb = nbformat.read(notebooks_dir() / "05_compare_runs.ipynb", as_version=4)
    tagged = [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])]
    assert len(tagged) == 1
    for line in ('outputs_dir = ""', "phase = None"):
        assert line in tagged[0].source
    # Its outputs are strict nbval's references (Makefile STRICT_NOTEBOOKS): tests/test_notebooks_committed.py.
