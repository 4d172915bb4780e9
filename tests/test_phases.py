"""Phase functions end to end on the tiny profile: files, durations, metadata, determinism, progress."""
import hashlib
import json

import numpy as np
import pytest
import torch
from PIL import Image

from animenb.backends import ImageRequest, get_backend
from animenb.media import animation_frames_and_seconds, read_png_parameters, video_frames_and_seconds
from animenb.phases import POSES, animation_loop, character_sheet, full_video
from animenb.phases.common import load_image
from animenb.progress import CancelToken, Cancelled

FAST = dict(models="tiny", steps=2, width=64, height=64, display=None)


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    previous = torch.get_num_threads()
    torch.set_num_threads(1)  # thread count changes SD/SVD bytes: pin it for byte comparisons
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="module")
def sheet(tmp_path_factory):
    events = []
    result = character_sheet("anime girl with blue hair", seed=11, output_dir=tmp_path_factory.mktemp("sheet"),
                             on_progress=events.append, **FAST)
    return result, events


def _sha(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_character_sheet_files_and_metadata(sheet):
    result, _ = sheet
    out = result.output_dir
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["phase"] == {"id": 1, "name": "CHARACTER_SHEET"}
    assert manifest["models"] == "tiny (random weights)"
    assert manifest["seed"] == 11 and manifest["parameters"]["steps"] == 2
    assert {"torch", "diffusers", "python"} <= set(manifest["versions"])
    poses = manifest["outputs"]["poses"]
    assert len(poses) == 8 and all((out / p).is_file() for p in poses)
    assert len({_sha(out / p) for p in poses}) == 8  # 8 distinct poses
    params = read_png_parameters(out / poses[1])
    assert params["pose"] == POSES[1][0] and params["seed"] == 11 and params["models"] == "tiny (random weights)"
    with Image.open(out / "sheet.png") as im:
        assert "Steps: 2" in im.text["parameters"] and im.width == 4 * 64
    recorded = {f["path"]: f["sha256"] for f in manifest["files"]}
    assert recorded["sheet.png"] == _sha(out / "sheet.png")


def test_a_result_shows_as_one_line_not_its_manifest(sheet):
    """The notebook's last line displays the result: its text form names the run, not the whole manifest."""
    result, _ = sheet
    text = repr(result)
    assert text.startswith("PhaseResult(CHARACTER_SHEET, seed=11, models='tiny (random weights)', ")
    assert repr(str(result.output_dir)) in text and "\n" not in text
    assert "sha256" not in text and "versions" not in text and len(text) < 200


def test_character_sheet_progress_is_monotone_with_eta(sheet):
    _, events = sheet
    steps = [e for e in events if e.step > 0]
    assert [e.step for e in steps][-1] == 8 * 2 and events[-1].percent == 100.0
    assert all(b.percent >= a.percent for a, b in zip(events, events[1:]))
    assert any(e.eta_seconds is not None for e in steps)
    assert {e.stage for e in events} >= {"pose 1/8: front", "pose 8/8: surprised"}
    previews = [e.preview for e in events if e.preview]
    assert len(previews) == 8  # each pose's last step carries a latent preview
    import base64
    import io

    with Image.open(io.BytesIO(base64.b64decode(previews[0].split(",", 1)[1]))) as im:
        assert im.format == "PNG" and im.size == (64, 64)


def test_same_seed_same_bytes(sheet, tmp_path):
    result, _ = sheet
    again = character_sheet("anime girl with blue hair", seed=11, output_dir=tmp_path, **FAST)
    for a, b in zip(result.manifest["outputs"]["poses"], again.manifest["outputs"]["poses"]):
        assert _sha(result.output_dir / a) == _sha(again.output_dir / b)
    other = character_sheet("anime girl with blue hair", seed=12, output_dir=tmp_path / "other", **FAST)
    assert _sha(other.output_dir / "reference.png") != _sha(result.output_dir / "reference.png")


def test_reference_image_conditions_every_pose(tmp_path):
    red = Image.new("RGB", (64, 64), (255, 0, 0))
    plain = character_sheet("a knight", seed=3, output_dir=tmp_path / "a", **FAST)
    guided = character_sheet("a knight", seed=3, output_dir=tmp_path / "b", reference_image=red,
                             ip_adapter_scale=1.0, **FAST)
    assert not np.array_equal(np.asarray(plain.images[0]), np.asarray(guided.images[0]))


def test_ip_adapter_scale_zero_is_identical_to_no_reference():
    backend = get_backend("diffusers", models="tiny")
    base = ImageRequest("a cat", width=64, height=64, steps=2, seed=5)
    with_ref = ImageRequest("a cat", width=64, height=64, steps=2, seed=5,
                            ip_adapter_image=Image.new("RGB", (64, 64), "blue"), ip_adapter_scale=0.0)
    assert np.array_equal(np.asarray(backend.text_to_image(base)), np.asarray(backend.text_to_image(with_ref)))


def test_animation_loop_is_exactly_two_seconds_and_closed(sheet, tmp_path):
    result = animation_loop("anime girl with blue hair", seed=11, output_dir=tmp_path,
                            reference_image=sheet[0].output_dir, **FAST)
    outputs = result.manifest["outputs"]
    assert outputs["frame_count"] == 16 and outputs["fps"] == 8 and outputs["duration_seconds"] == 2.0
    assert animation_frames_and_seconds(result.path("gif")) == (16, 2.0)
    assert animation_frames_and_seconds(result.path("webp")) == (16, 2.0)
    assert video_frames_and_seconds(result.path("mp4")) == (16, 2.0)
    assert len(outputs["frames"]) == 16 and outputs["reference"] == "reference.png"
    frames = [np.asarray(f, dtype=np.float32) for f in result.images]
    steps = [np.abs(b - a).mean() for a, b in zip(frames, frames[1:])]
    seam = np.abs(frames[0] - frames[-1]).mean()
    assert seam <= 2 * np.median(steps)  # wrap-around is an ordinary step, not a jump
    # A loop's directory feeds phase 3 its first frame, not the reference it copied from phase 1.
    with Image.open(result.output_dir / outputs["frames"][0]) as first:
        assert np.array_equal(np.asarray(load_image(result.output_dir, "image")), np.asarray(first.convert("RGB")))
    with Image.open(sheet[0].output_dir / "reference.png") as ref:
        assert np.array_equal(np.asarray(load_image(sheet[0].output_dir, "image")), np.asarray(ref.convert("RGB")))


def test_full_video_is_exactly_five_seconds(sheet, tmp_path):
    result = full_video("anime girl", image=sheet[0].output_dir, seed=11, output_dir=tmp_path, frames=8, **FAST)
    outputs = result.manifest["outputs"]
    assert video_frames_and_seconds(result.path("mp4")) == (120, 5.0)
    assert outputs["frame_count"] == 120 and outputs["duration_seconds"] == 5.0 and len(outputs["frames"]) == 8
    assert result.manifest["models"] == "tiny (random weights)"


def test_full_video_without_image_generates_its_source(tmp_path):
    events = []
    result = full_video("anime boy", seed=2, output_dir=tmp_path, frames=4, seconds=1.0, fps=8,
                        on_progress=events.append, **FAST)
    assert (result.output_dir / "source.png").is_file()
    assert events[-1].total_steps == 4 and {"source image"} <= {e.stage for e in events}


@pytest.mark.parametrize("kwargs,message", [
    (dict(prompt=""), "`prompt` must not be empty"),
    (dict(prompt="x", width=65), "`width` must be a multiple of 8"),
    (dict(prompt="x", width=2056), r"`width` must be an integer in \[64, 2048\]"),
    (dict(prompt="x", steps=0), r"`steps` must be an integer in \[1, 150\]"),
    (dict(prompt="x", seed=-5), "`seed` must be an integer"),
    (dict(prompt="x", scheduler="magic"), "`scheduler` must be one of"),
])
def test_bad_inputs_fail_before_generation(kwargs, message, tmp_path):
    args = {**FAST, **kwargs}
    with pytest.raises(ValueError, match=message):
        character_sheet(output_dir=tmp_path / "never", **args)
    assert not (tmp_path / "never").exists()


def test_cancel_stops_at_next_step(tmp_path):
    seen = []
    token = CancelToken()

    def cancel_after_three(event):
        seen.append(event.step)
        if event.step == 3:
            token.cancel()

    with pytest.raises(Cancelled, match="cancelled at step 3/16"):
        character_sheet("x", seed=1, output_dir=tmp_path, on_progress=cancel_after_three, cancel=token, **FAST)
    assert max(seen) == 3 and not (tmp_path / "manifest.json").exists()


def test_a_cancel_token_stops_only_its_own_run(tmp_path):
    """Tokens are per run: another run's token, or a new run starting, neither stops nor clears this one."""
    other = CancelToken()
    other.cancel()
    result = character_sheet("x", seed=1, output_dir=tmp_path / "a", cancel=CancelToken(), **FAST)
    assert result.manifest["seed"] == 1 and other.cancelled
    mine = CancelToken()
    mine.cancel()  # cancelled before it starts: stops at the first step, even though other runs came since
    with pytest.raises(Cancelled, match="at step 1/16"):
        character_sheet("x", seed=1, output_dir=tmp_path / "b", cancel=mine, **FAST)
