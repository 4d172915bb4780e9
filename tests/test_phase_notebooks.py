"""The phase notebooks under papermill, in real kernels, with the tiny profile."""
import json

import nbformat
import papermill as pm
import pytest

from animenb.config import notebooks_dir
from animenb.media import animation_frames_and_seconds, video_frames_and_seconds
from animenb.phases import PHASES

FAST = dict(models="tiny", steps=2, width=64, height=64)


def _run(notebook, output_dir, **parameters):
    output_dir.mkdir(parents=True, exist_ok=True)
    executed = output_dir / "notebook.ipynb"
    pm.execute_notebook(str(notebooks_dir() / notebook), str(executed), kernel_name="python3",
                        parameters={**FAST, "output_dir": str(output_dir), **parameters}, progress_bar=False)
    return json.loads((output_dir / "manifest.json").read_text()), nbformat.read(executed, as_version=4)


@pytest.mark.parametrize("phase", PHASES, ids=lambda p: p.name)
def test_notebook_has_one_parameters_cell_and_no_outputs(phase):
    nb = nbformat.read(notebooks_dir() / phase.notebook, as_version=4)
    tagged = [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])]
    assert len(tagged) == 1
    for name in ("prompt", "negative_prompt", "seed", "steps", "width", "height", "models", "output_dir"):
        assert f"\n{name} = " in "\n" + tagged[0].source
    assert all(not c.get("outputs") for c in nb.cells if c.cell_type == "code")


def test_phase_notebooks_chain_under_papermill(tmp_path):
    sheet, nb = _run("01_character_sheet.ipynb", tmp_path / "p1", prompt='girl "quoted" \\ prompt', seed=5)
    assert sheet["phase"]["name"] == "CHARACTER_SHEET" and len(sheet["outputs"]["poses"]) == 8
    assert sheet["parameters"]["prompt"] == 'girl "quoted" \\ prompt'  # reached the kernel verbatim
    assert any(o.get("output_type") == "display_data" for c in nb.cells for o in c.get("outputs", []))

    loop, _ = _run("02_animation_loop.ipynb", tmp_path / "p2", seed=5, reference_image=str(tmp_path / "p1"))
    assert animation_frames_and_seconds(tmp_path / "p2" / loop["outputs"]["gif"]) == (16, 2.0)
    assert video_frames_and_seconds(tmp_path / "p2" / loop["outputs"]["mp4"]) == (16, 2.0)

    video, _ = _run("03_full_video.ipynb", tmp_path / "p3", seed=5, image=str(tmp_path / "p2"), frames=6)
    assert video_frames_and_seconds(tmp_path / "p3" / video["outputs"]["mp4"]) == (120, 5.0)
    assert video["models"] == "tiny (random weights)"
