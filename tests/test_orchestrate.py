"""animenb.orchestrate: the gated chain offline with the tiny profile, the CLI and notebook 06 (the chain's
pure policy: test_chain.py).

Tiny random-weight outputs are noise and fail the default gates (the 8 poses are one pattern: pose
distinctness), so the successful chain is tested with the gates set to 0.0 (which scales every
critical floor to 0 too), and the forced failure with 1.01.
"""
from __future__ import annotations

import json
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import nbformat
import papermill
import pytest

from animenb import cli
from animenb.manifest import read_manifest
from animenb.chain import ORCHESTRATION, RECORD_NAME, attempt_dir, attempt_seed
from animenb.orchestrate import orchestrate

NOTEBOOK = Path(__file__).resolve().parent.parent / "notebooks" / "06_orchestrate.ipynb"
FAST = dict(models="tiny", steps=2, width=64, height=64, display=None,
            # shorter loop and video than the defaults: the chain logic is the same, the test 2x faster
            phase_options={"ANIMATION_LOOP": {"frames": 8, "loop_overlap": 2},
                           "FULL_VIDEO": {"frames": 6, "seconds": 1.0, "fps": 8}})


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    return tmp_path_factory.mktemp("orchestrate")


@pytest.fixture(scope="module")
def notebook_run(workdir):
    """Notebook 06 under papermill in its own kernel, started first so it overlaps the in-process chains."""
    previous = os.environ.get("ANIMENB_THREADS")
    os.environ["ANIMENB_THREADS"] = "1"  # read by the kernel at launch (inherits the environment)
    out = workdir / "nb"
    out.mkdir()
    pool = ThreadPoolExecutor(max_workers=1)
    future = pool.submit(papermill.execute_notebook, str(NOTEBOOK), str(out / "notebook.ipynb"),
                         parameters={"prompt": 'girl "quoted" \\ prompt', "seed": 5, "steps": 2, "width": 64,
                                     "height": 64, "models": "tiny", "threshold": 0.0, "max_retries": 0,
                                     "output_dir": str(out / "run")},
                         kernel_name="python3", progress_bar=False)  # never cwd=: it chdirs the whole process
    yield future, out
    future.result(timeout=600) if not future.done() else None
    pool.shutdown(wait=True)
    if previous is None:
        os.environ.pop("ANIMENB_THREADS", None)
    else:
        os.environ["ANIMENB_THREADS"] = previous


@pytest.fixture(scope="module")
def torch_one_thread():
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def chain_ok(workdir, notebook_run, torch_one_thread):
    events = []
    result = orchestrate("anime girl, blue hair", seed=11, thresholds=0.0, output_dir=workdir / "ok",
                         on_progress=events.append, **FAST)
    return result, events


@pytest.fixture(scope="module")
def chain_fail(workdir, notebook_run, torch_one_thread):
    events = []
    result = orchestrate("anime girl, blue hair", seed=11, thresholds=1.01, max_retries=2,
                         output_dir=workdir / "fail", on_progress=events.append, **FAST)
    return result, events


@pytest.mark.parametrize("kwargs, match", [
    (dict(max_retries=-1), "max_retries"), (dict(max_retries=1.5), "max_retries"), (dict(steps=0), "steps"),
    (dict(thresholds=-1), "thresholds"), (dict(phase_options={"FULL_VIDEO": {"seed": 3}}), "phase_options"),
    (dict(phase_options={"PHASE_9": {}}), "phase"),
])
def test_bad_inputs_raise_before_any_work(tmp_path, kwargs, match):
    with pytest.raises(ValueError, match=match):
        orchestrate("girl", models="tiny", output_dir=tmp_path / "x", display=None, **kwargs)
    assert not (tmp_path / "x").exists()
    with pytest.raises(ValueError, match="prompt"):
        orchestrate("  ", models="tiny", display=None)


def test_a_bad_reference_image_raises_before_any_work(tmp_path):
    not_a_run = tmp_path / "not_a_run"
    not_a_run.mkdir()
    with pytest.raises(ValueError, match="manifest.json"):
        orchestrate("girl", models="tiny", reference_image=not_a_run, output_dir=tmp_path / "x", display=None)
    assert not (tmp_path / "x").exists()


def test_a_real_error_is_recorded_then_raised(tmp_path, monkeypatch):
    import animenb.orchestrate

    def broken(*args, **kwargs):
        raise RuntimeError("backend exploded")

    monkeypatch.setitem(animenb.orchestrate.PHASE_FUNCTIONS, "CHARACTER_SHEET", broken)
    with pytest.raises(RuntimeError, match="backend exploded"):
        orchestrate("girl", models="tiny", output_dir=tmp_path / "err", display=None)
    record = json.loads((tmp_path / "err" / RECORD_NAME).read_text())
    assert record["status"] == "error" and record["reason"] == "RuntimeError: backend exploded"
    assert record["phases"][0]["status"] == "running" and record["finished_at"]


# ----------------------------------------------------------------------------- the chain, offline

def test_chain_succeeds_when_the_gates_allow_it(chain_ok):
    result, _ = chain_ok
    assert result.succeeded and result.status == "succeeded", result.reason
    assert [(a.phase, a.attempt, a.passed, a.decision) for a in result.attempts] == [
        ("CHARACTER_SHEET", 1, True, "advance"), ("ANIMATION_LOOP", 1, True, "advance"),
        ("FULL_VIDEO", 1, True, "advance")]
    assert all(a.seed == 11 and a.threshold == 0.0 and 0.0 <= a.score <= 1.0 for a in result.attempts)
    for a in result.attempts:  # each attempt was scored and recorded in its own run directory
        run = result.output_dir / a.output_dir
        assert run == attempt_dir(result.output_dir, a.phase, 1)
        quality = read_manifest(run)["quality"]
        assert quality["score"] == a.score and quality["threshold"] == 0.0 and quality["passed"] is True
        assert "embedding_consistency" in quality["metrics"]  # the IP-Adapter CLIP encoder was used
        assert (run / "quality.json").is_file()
    record = json.loads((result.output_dir / RECORD_NAME).read_text())
    assert record["status"] == "succeeded" and [p["status"] for p in record["phases"]] == ["passed"] * 3
    assert record["timings"]["total_seconds"] > 0
    manifest = read_manifest(result.output_dir)
    assert manifest["phase"] == {"id": None, "name": ORCHESTRATION} and manifest["status"] == "succeeded"
    assert manifest["quality"]["passed"] is True
    assert manifest["quality"]["score"] == min(a.score for a in result.attempts)
    for key in ("sheet", "gif", "video"):
        assert result.path(key).is_file()
    assert {f["kind"] for f in manifest["files"]} >= {"sheet", "gif", "video", "orchestration"}


def test_phase_2_used_phase_1s_sheet_and_phase_3_a_loop_frame(chain_ok):
    result, _ = chain_ok
    sheet, loop, video = (result.results[name] for name in ("CHARACTER_SHEET", "ANIMATION_LOOP", "FULL_VIDEO"))
    loop_params = read_manifest(loop.output_dir)["parameters"]
    assert loop_params["reference_image"] == str(sheet.output_dir)
    assert loop.manifest["outputs"]["reference"] == "reference.png"
    video_params = read_manifest(video.output_dir)["parameters"]
    assert video_params["image"] == str(loop.output_dir / loop.manifest["outputs"]["frames"][0])
    assert (loop_params["frames"], video_params["frames"]) == (8, 6)  # phase_options reached the phases


def test_forced_gate_failure_retries_with_new_seeds_then_fails(chain_fail):
    result, _ = chain_fail
    assert result.status == "failed" and not result.succeeded
    assert [(a.phase, a.attempt, a.decision) for a in result.attempts] == [
        ("CHARACTER_SHEET", 1, "retry"), ("CHARACTER_SHEET", 2, "retry"), ("CHARACTER_SHEET", 3, "fail")]
    seeds = [a.seed for a in result.attempts]
    assert seeds == [attempt_seed(11, 1, k) for k in (1, 2, 3)] and len(set(seeds)) == 3
    assert [a.seed_source for a in result.attempts] == ["base"] + ["sha256(base:phase:attempt)"] * 2
    for a in result.attempts:
        assert read_manifest(result.output_dir / a.output_dir)["seed"] == a.seed
    assert result.reason.startswith("CHARACTER_SHEET failed its quality gate (threshold 1.01) after 3 attempts")
    for a in result.attempts:
        assert f"seed {a.seed} -> {a.score:.3f}" in result.reason
    record = json.loads((result.output_dir / RECORD_NAME).read_text())
    assert record["status"] == "failed" and record["reason"] == result.reason
    assert [p["status"] for p in record["phases"]] == ["failed", "skipped", "skipped"]
    assert not (result.output_dir / "2_animation_loop").exists()
    assert read_manifest(result.output_dir)["quality"]["passed"] is False


@pytest.mark.parametrize("which", ["chain_ok", "chain_fail"])
def test_overall_progress_never_decreases(which, request):
    result, events = request.getfixturevalue(which)
    percents = [e.percent for e in events]
    assert percents == sorted(percents) and len(events) > 20
    assert all(e.phase == ORCHESTRATION and e.stage_count == 3 for e in events)
    running = [e for e in events if e.stage.startswith("phase ")]
    assert any("phase 1/3 CHARACTER_SHEET · attempt 1/3" in e.stage for e in running)
    assert any(e.eta_seconds is not None and e.eta_seconds > 0 for e in running)
    if which == "chain_ok":
        assert percents[-1] == 100.0
        assert any("phase 3/3 FULL_VIDEO · attempt 1/3" in e.stage for e in running)
    else:
        assert any("attempt 3/3" in e.stage for e in running) and percents[-1] < 100.0
        assert events[-1].stage.startswith("failed: CHARACTER_SHEET failed its quality gate")


# ----------------------------------------------------------------------------- CLI and notebook

def test_cli_exit_codes(chain_ok, workdir, monkeypatch, capsys):
    code = cli.main(["orchestrate", "--models", "tiny", "girl", "--seed", "3", "--steps", "2", "--max-retries",
                     "0", "--threshold", "1.01", "--quiet", "--output-dir", str(workdir / "cli_fail")])
    out = capsys.readouterr().out
    assert code == 1, out
    assert "phase 1 CHARACTER_SHEET" in out and "FAILED -> fail" in out
    assert "FAILED: CHARACTER_SHEET failed its quality gate (threshold 1.01) after 1 attempt:" in out

    assert cli.main(["orchestrate", "girl", "--max-retries", "-1"]) == 2  # a usage error

    # exit 0: the success path prints one line per phase; the chain itself is the fixture's run
    import animenb.orchestrate

    monkeypatch.setattr(animenb.orchestrate, "orchestrate", lambda *a, **k: chain_ok[0])
    assert cli.main(["orchestrate", "girl", "--quiet"]) == 0
    out = capsys.readouterr().out
    assert [line.split()[:3] for line in out.splitlines()[:3]] == [
        ["phase", "1", "CHARACTER_SHEET"], ["phase", "2", "ANIMATION_LOOP"], ["phase", "3", "FULL_VIDEO"]]
    assert "SUCCEEDED: all 3 gates passed" in out


def test_cli_on_tiny_names_the_failed_property_and_runs_through_with_advisory_gates(workdir, capsys):
    args = ["orchestrate", "--models", "tiny", "girl", "--seed", "3", "--steps", "2", "--max-retries", "0", "--quiet"]
    assert cli.main(args + ["--output-dir", str(workdir / "cli_tiny")]) == 1
    out, err = capsys.readouterr()
    assert "random weights fail the quality gates by design" in err and "--advisory-gates" in err
    attempt_line = next(line for line in out.splitlines() if line.startswith("phase 1"))
    assert "FAILED -> fail: " in attempt_line and " < " in attempt_line.split("FAILED -> fail: ")[1]
    record = json.loads((workdir / "cli_tiny" / "orchestration.json").read_text())
    failures = record["attempts"][0]["failures"]
    assert failures and all(f.split()[0] in out for f in failures)  # each failed rule is named in the output

    assert cli.main(args + ["--advisory-gates", "--output-dir", str(workdir / "cli_tiny_through")]) == 0
    out, err = capsys.readouterr()
    assert "advisory" not in err
    assert [line.split()[:3] for line in out.splitlines()[:3]] == [
        ["phase", "1", "CHARACTER_SHEET"], ["phase", "2", "ANIMATION_LOOP"], ["phase", "3", "FULL_VIDEO"]]
    assert "SUCCEEDED: ran through with advisory gates" in out


def test_notebook_has_one_parameters_cell_and_no_outputs():
    nb = nbformat.read(NOTEBOOK, as_version=4)
    tagged = [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])]
    assert len(tagged) == 1
    for name in ("prompt", "seed", "steps", "width", "height", "models", "max_retries", "threshold", "output_dir",
                 "reference_image", "backend"):
        assert f"\n{name} = " in "\n" + tagged[0].source, name
    assert "\nsteps = 15\n" in tagged[0].source and "\nthreshold = None " in tagged[0].source
    assert all(not c.get("outputs") for c in nb.cells if c.cell_type == "code")


def test_notebook_runs_the_chain_under_papermill(notebook_run):
    future, out = notebook_run
    future.result(timeout=600)
    record = json.loads((out / "run" / RECORD_NAME).read_text())
    assert record["status"] == "succeeded", record["reason"]
    assert record["parameters"]["prompt"] == 'girl "quoted" \\ prompt'
    executed = nbformat.read(out / "notebook.ipynb", as_version=4)
    outputs = [o for c in executed.cells for o in c.get("outputs", [])]
    assert any("text/html" in o.get("data", {}) and "seed_source" in o["data"]["text/html"] for o in outputs)
    assert any("image/png" in o.get("data", {}) or "image/gif" in o.get("data", {}) for o in outputs)
