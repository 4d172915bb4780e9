"""animenb.widgets.ExplorerPanel, headless: set widget values, click the buttons, assert on images and state."""
import io
import json
import time

import ipywidgets as W
import pytest
from PIL import Image

from animenb import widgets
from animenb.backends.base import SCHEDULERS
from animenb.sweeps.grid import GridLayout
from animenb.widgets import ExplorerPanel, RunRecord, explore, parse_steps


def tiny_panel(tmp_path, **kwargs) -> ExplorerPanel:
    options = dict(models="tiny", width=64, height=64, steps=2, seed=11, output_dir=tmp_path, background=False,
                   compare_steps=[1, 2])
    options.update(kwargs)
    return ExplorerPanel(**options)


@pytest.fixture(scope="module")
def used_panel(tmp_path_factory):
    """One panel that generated once (button click) and compared 1 vs 2 steps: shared by the tests below."""
    import torch

    torch.set_num_threads(1)
    panel = tiny_panel(tmp_path_factory.mktemp("explorer"))
    panel.prompt.value = "girl with a red scarf"
    panel.scheduler.value = "euler"
    panel.generate_button.click()
    generated = dict(status=panel.status, events=list(panel.events), progress=panel.progress.value)
    panel.compare_button.click()
    return panel, generated


def png(data: bytes) -> Image.Image:
    image = Image.open(io.BytesIO(data))
    image.load()
    return image


def test_controls(tmp_path):
    panel = tiny_panel(tmp_path, phase=2, scheduler="ddim", guidance_scale=5.5)
    assert [v for _label, v in panel.phase.options] == ["CHARACTER_SHEET", "ANIMATION_LOOP", "FULL_VIDEO"]
    assert panel.phase.value == "ANIMATION_LOOP" and tuple(panel.scheduler.options) == SCHEDULERS
    assert (panel.steps.value, panel.guidance.value, panel.seed.value, panel.size.value) == (2, 5.5, 11, (64, 64))
    assert panel.compare_steps.value == "1, 2" and panel.cancel_button.disabled
    assert isinstance(panel.widget, W.VBox) and isinstance(panel.progress, W.FloatProgress)
    params = panel.parameters(steps=7)
    assert params["steps"] == 7 and params["scheduler"] == "ddim" and (params["width"], params["height"]) == (64, 64)
    bundle = explore(models="tiny")._repr_mimebundle_()
    assert "application/vnd.jupyter.widget-view+json" in bundle
    with pytest.raises(ValueError, match="`scheduler`"):
        ExplorerPanel(scheduler="plms")


def test_phase_defaults_come_from_the_spec_and_follow_the_phase(tmp_path):
    from animenb.phases.spec import phase_spec

    panel = tiny_panel(tmp_path)
    sheet, loop = phase_spec(1).defaults, phase_spec(2).defaults
    assert (panel.negative_prompt.value, panel.guidance.value) == (sheet["negative_prompt"], sheet["guidance_scale"])
    panel.phase.value = "ANIMATION_LOOP"
    assert (panel.negative_prompt.value, panel.guidance.value) == (loop["negative_prompt"], loop["guidance_scale"])
    panel.negative_prompt.value = "my own"
    panel.phase.value = "FULL_VIDEO"  # an edited field stays as the user left it
    assert panel.negative_prompt.value == "my own" and panel.guidance.value == phase_spec(3).defaults["guidance_scale"]


def test_new_seed_button(tmp_path):
    panel = tiny_panel(tmp_path)
    seeds = set()
    for _ in range(5):
        panel.new_seed_button.click()
        seeds.add(panel.seed.value)
    assert len(seeds) > 1 and all(0 <= s < 2**32 for s in seeds)


def test_generate_button_runs_the_phase(used_panel):
    panel, generated = used_panel
    assert generated["status"] == "done" and generated["progress"] == 100.0
    percents = [e.percent for e in generated["events"]]
    assert percents == sorted(percents) and percents[-1] == 100.0
    assert any(e.step == 8 and e.total_steps == 16 for e in generated["events"])  # 8 poses x 2 steps

    first = panel.history[-1]  # the comparison's runs are not history: this is the generated one
    assert len(panel.history) == 1 and first.phase == "CHARACTER_SHEET" and first.steps == 2
    manifest = json.loads((first.output_dir / "manifest.json").read_text())
    assert manifest["parameters"]["prompt"] == "girl with a red scarf"
    assert (manifest["parameters"]["scheduler"], manifest["seed"], manifest["parameters"]["width"]) == ("euler", 11, 64)
    assert 0.0 <= first.score <= 1.0 and manifest["quality"]["score"] == pytest.approx(first.score)
    assert png(first.thumbnail).size[0] > 0 and first.step_rate > 0
    assert len(first.result.images) == 8 and first.result.images[0].size == (64, 64)
    assert panel.result_image.value == first.result.path("sheet").read_bytes()
    assert "seed 11" in panel.result_view.value and len(panel.history_strip.children) == 1
    assert first.output_dir.parent == panel.output_dir


def test_compare_button_renders_the_grid_and_table(used_panel):
    panel, _ = used_panel
    assert panel.status == "done" and not panel.generate_button.disabled and panel.cancel_button.disabled
    table = panel.comparison
    assert list(table["steps"]) == [1, 2] and set(table["seed"]) == {11}  # same seed, several step counts
    assert (table["seconds"] > 0).all() and table["score"].between(0, 1).all()
    assert list(table.columns) == ["steps", "seconds", "step_rate", "score", "passed", "seed", "output_dir"]
    one, two = panel.comparison_runs
    assert one.output_dir.parent == two.output_dir.parent  # one comparison folder
    sweep = one.output_dir.parent.parent  # a one-axis sweep: its record and grid image beside the runs
    assert json.loads((sweep / "sweep.json").read_text())["axes"] == {"steps": [1, 2]}
    assert Image.open(sweep / "grid.png").size == GridLayout(columns=2, rows=1).size
    assert one.result.images[0].tobytes() != two.result.images[0].tobytes()  # steps changed the image
    cards = panel.compare_grid.children
    assert len(cards) == 2 and "1 steps" in cards[0].children[1].value and "q " in cards[1].children[1].value
    assert png(cards[0].children[0].value).size[0] > 0
    assert "<table" in panel.compare_table.value and "score" in panel.compare_table.value


def test_cancel_stops_the_running_phase(tmp_path, monkeypatch, used_panel):
    panel = tiny_panel(tmp_path)
    real = widgets.PHASE_FUNCTIONS["CHARACTER_SHEET"]

    def cancelling(prompt, on_progress, **kwargs):  # Cancel clicked after the first denoising step
        def hook(event):
            on_progress(event)
            if event.step == 1:
                panel.cancel_button.click()
        return real(prompt, on_progress=hook, **kwargs)

    monkeypatch.setitem(widgets.PHASE_FUNCTIONS, "CHARACTER_SHEET", cancelling)
    assert panel.generate() is None
    assert panel.status == "cancelled" and panel.history == [] and "cancelled at step 1/16" in panel.status_line.value
    assert not panel.generate_button.disabled and panel.cancel_button.disabled


def test_step_previews_are_shown(tmp_path, monkeypatch):
    import base64

    from animenb.progress import Cancelled, ProgressEvent

    panel = tiny_panel(tmp_path)
    buf = io.BytesIO()
    Image.new("RGB", (8, 8), (200, 30, 30)).save(buf, format="PNG")
    url = "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()

    def previewing(prompt, on_progress, **kwargs):  # a backend with sampler previews (e.g. ComfyUI)
        on_progress(ProgressEvent("CHARACTER_SHEET", "pose 1/8: front", 1, 8, 1, 16, 6.25, 3.0, 0.2, preview=url))
        raise Cancelled("stop here")

    monkeypatch.setitem(widgets.PHASE_FUNCTIONS, "CHARACTER_SHEET", previewing)
    panel.generate()
    assert panel.preview.value == buf.getvalue() and panel.preview.format == "png"
    assert panel.progress.value == 6.25 and panel.status == "cancelled"


def fake_record(panel, steps, output_dir, label):
    panel.progress.value = 100.0
    return RunRecord(phase=panel.phase.value, prompt=panel.prompt.value, seed=panel.seed.value,
                     steps=steps or panel.steps.value, scheduler="dpmpp_2m", guidance_scale=7.0,
                     output_dir=output_dir or panel.output_dir, seconds=0.01, thumbnail=b"png")


def test_history_is_newest_first_and_bounded(tmp_path, monkeypatch):
    panel = tiny_panel(tmp_path, history_size=2)
    monkeypatch.setattr(panel, "_run_phase", lambda *a: fake_record(panel, *a))
    monkeypatch.setattr(panel, "_show_result", lambda record: None)
    for seed in (1, 2, 3):
        panel.seed.value = seed
        panel.generate()
    assert [r.seed for r in panel.history] == [3, 2] and len(panel.history_strip.children) == 2


def test_comparison_cancelled_between_step_counts(tmp_path, monkeypatch):
    panel = tiny_panel(tmp_path, compare_steps=[3, 5, 8])
    monkeypatch.setattr(panel, "_warm", lambda: None)

    def run_then_cancel(steps, output_dir, label):
        panel.cancel()
        return fake_record(panel, steps, output_dir, label)

    monkeypatch.setattr(panel, "_run_phase", run_then_cancel)
    assert panel.compare() is None
    assert panel.status == "cancelled" and [r.steps for r in panel.comparison_runs] == [3]
    assert "before 5 steps" in panel.status_line.value


def test_errors_are_shown_not_raised(tmp_path):
    panel = tiny_panel(tmp_path)
    panel.prompt.value = "   "
    panel.generate_button.click()
    assert panel.status == "error" and "`prompt`" in panel.error and "`prompt`" in panel.status_line.value
    panel.prompt.value = "girl"
    panel.compare_steps.value = "8, lots"
    panel.compare_button.click()
    assert panel.status == "error" and "compare steps" in panel.error
    assert not panel.generate_button.disabled


def test_background_click_runs_on_a_thread(tmp_path, monkeypatch):
    panel = tiny_panel(tmp_path, background=True)
    started = []

    def slow(*args):
        started.append(time.monotonic())
        time.sleep(0.2)
        return fake_record(panel, *args)

    monkeypatch.setattr(panel, "_run_phase", slow)
    monkeypatch.setattr(panel, "_show_result", lambda record: None)
    panel.generate_button.click()
    assert panel.generate_button.disabled and not panel.cancel_button.disabled  # busy while the thread runs
    panel.generate_button.click()  # ignored: one run at a time
    panel.wait(10)
    assert len(started) == 1 and panel.status == "done" and len(panel.history) == 1
    assert not panel.generate_button.disabled


@pytest.mark.parametrize("text, expected", [
    ("8, 15, 25, 40", [8, 15, 25, 40]), ("8 15,15  25", [8, 15, 25]), ([40, 8], [40, 8]), ("1", [1]),
])
def test_parse_steps(text, expected):
    assert parse_steps(text) == expected


@pytest.mark.parametrize("text", ["", "8, x", "0", "151", [2.5]])
def test_parse_steps_rejects(text):
    with pytest.raises(ValueError, match="compare steps"):
        parse_steps(text)


def test_explore_notebook_is_committed_clean():
    import nbformat

    from animenb.config import notebooks_dir

    nb = nbformat.read(notebooks_dir() / "00_explore.ipynb", as_version=4)
    tagged = [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])]
    assert len(tagged) == 1 and "generate_now = False" in tagged[0].source  # nbval runs stay cheap
    assert all(not c.get("outputs") and c.get("execution_count") is None for c in nb.cells if c.cell_type == "code")
