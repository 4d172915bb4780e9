"""Pose-controlled character sheets: OpenPose skeletons, the ControlNet role on diffusers (tiny random
weights) and ComfyUI's graph, the sheet's kept skeletons, and the pose-following metric on drawn figures."""
from __future__ import annotations

import json
from dataclasses import replace

import cv2
import numpy as np
import pytest
import torch
from PIL import Image

from animenb import tiny
from animenb.backends import ImageRequest, get_backend
from animenb.backends import comfyui_graphs as graphs
from animenb.media import read_png_parameters
from animenb.model_fetch import hub_downloads
from animenb.models import pipeline
from animenb.phases import POSES, character_sheet
from animenb.phases.spec import SpecError, phase_spec
from animenb.poses import (COLOURS, KEYPOINTS, LIMBS, SKELETONS, _placed, builtin_skeletons, draw_skeleton,
                           load_pose_images, mirrored)
from animenb.profiles import ModelNotAvailableError, load_profile, parameters_dir
from animenb.quality.pose_following import pose_following
from animenb.quality.scoring import score_output_dir

FAST = dict(models="tiny", steps=2, width=64, height=64, display=None)
KEYS = [key for key, _caption, _suffix in POSES]


def _pixels(image) -> np.ndarray:
    return np.asarray(image, dtype=np.int16)


# ---------------------------------------------------------------- skeletons


def test_every_sheet_pose_has_a_builtin_skeleton_drawn_in_openpose_colours():
    assert list(SKELETONS) == KEYS
    for width, height in ((64, 64), (512, 512), (512, 768)):
        images = builtin_skeletons(KEYS, width, height)
        assert all(im.size == (width, height) and im.mode == "RGB" for im in images)
        arrays = [np.asarray(im) for im in images]
        assert all((a[0, :] == 0).all() and (a[:, 0] == 0).all() for a in arrays)  # black background
        assert len({a.tobytes() for a in arrays}) == 8
    # Joints are dots in OpenPose's joint colours, at 512 px exactly as OpenPose draws them (4 px).
    front = np.asarray(draw_skeleton(SKELETONS["front"], 512, 512))
    for index, name in enumerate(KEYPOINTS):
        x, y = (round(v) for v in _placed(SKELETONS["front"][index], 512, 512))
        assert tuple(front[y, x]) == COLOURS[index], name
    assert len(LIMBS) == 17


def test_left_and_right_are_the_characters_own():
    r_shoulder, l_shoulder = KEYPOINTS.index("r_shoulder"), KEYPOINTS.index("l_shoulder")
    front, back = SKELETONS["front"], SKELETONS["back"]
    assert front[r_shoulder][0] < 0.5 < front[l_shoulder][0]  # facing us: the right arm on the image's left
    assert back[r_shoulder][0] > 0.5 > back[l_shoulder][0]
    assert back[KEYPOINTS.index("nose")] is None and back[KEYPOINTS.index("r_ear")] is not None
    assert SKELETONS["right"] == mirrored(SKELETONS["left"])
    assert SKELETONS["left"][KEYPOINTS.index("r_eye")] is None  # a profile shows one eye


def test_user_pose_images_from_a_folder_or_a_list(tmp_path):
    skeletons = builtin_skeletons(KEYS, 96, 96)
    for index, image in enumerate(reversed(skeletons)):
        image.save(tmp_path / f"{index:02d}.png")
    loaded = load_pose_images(tmp_path, 8, 64, 64)  # name order, resized to the generation size
    assert [im.size for im in loaded] == [(64, 64)] * 8
    expected = skeletons[-1].resize((64, 64), Image.LANCZOS)
    assert np.array_equal(np.asarray(loaded[0]), np.asarray(expected))
    assert len(load_pose_images(sorted(tmp_path.iterdir()), 8, 64, 64)) == 8
    with pytest.raises(ValueError, match="`pose_images` must hold exactly 8 images"):
        load_pose_images(sorted(tmp_path.iterdir())[:7], 8, 64, 64)
    with pytest.raises(ValueError, match="not a folder"):
        load_pose_images(tmp_path / "00.png", 8, 64, 64)
    with pytest.raises(ValueError, match="is not an image file"):
        load_pose_images([tmp_path / "missing.png"] * 8, 8, 64, 64)


# ---------------------------------------------------------------- pose-following metric on drawn figures


def _figure(key: str, size: int = 128, colour=(200, 60, 90), background=(255, 255, 255),
            thickness: float = 0.06) -> Image.Image:
    """A flat drawn character in the pose of built-in skeleton `key`: limbs as thick strokes, a round head."""
    canvas = np.full((size, size, 3), background, np.uint8)
    points = {name: None if p is None else tuple(round(v) for v in _placed(p, size, size))
              for name, p in zip(KEYPOINTS, SKELETONS[key])}
    stroke = max(2, round(thickness * size))
    for a, b in LIMBS[:12]:  # body limbs; the face is the head below
        pa, pb = points[KEYPOINTS[a]], points[KEYPOINTS[b]]
        if pa and pb:
            cv2.line(canvas, pa, pb, colour, stroke)
    head, neck = points["nose"] or points["r_ear"] or points["l_ear"], points["neck"]
    cv2.circle(canvas, head, max(stroke, round(0.6 * np.hypot(head[0] - neck[0], head[1] - neck[1]))), colour, -1)
    return Image.fromarray(canvas)


@pytest.mark.parametrize("style", [dict(), dict(colour=(30, 30, 40), background=(180, 210, 240), thickness=0.09)])
def test_pose_following_tells_followed_skeletons_from_ignored_ones(style):
    skeletons = builtin_skeletons(KEYS, 128, 128)
    followed = [_figure(key, **style) for key in KEYS]
    score, details = pose_following(followed, skeletons)
    assert score == 1.0 and min(details["margin_per_pose"]) > 0
    # A model that ignores the control draws eight front views: only front-like skeletons "match".
    ignored, _ = pose_following([_figure("front", **style)] * 8, skeletons)
    assert ignored <= 0.4
    # The right figures in the wrong slots.
    shuffled, _ = pose_following(followed[1:] + followed[:1], skeletons)
    assert shuffled <= 0.4
    with pytest.raises(ValueError, match="`skeletons` must hold one image per pose"):
        pose_following(followed, skeletons[:7])


# ---------------------------------------------------------------- ControlNet on diffusers


def test_controlnet_pipeline_shares_the_warm_sd_pipeline_and_its_ip_adapter():
    sd, controlled = pipeline("sd", "tiny"), pipeline("sd_controlnet", "tiny")
    assert controlled.unet is sd.unet and controlled.vae is sd.vae and controlled.text_encoder is sd.text_encoder
    assert controlled.image_encoder is sd.image_encoder is not None  # IP-Adapter still attached
    assert type(controlled.controlnet).__name__ == "ControlNetModel"


def test_the_skeleton_steers_the_image_and_strength_zero_is_no_control():
    backend = get_backend("diffusers", models="tiny")
    front, back, smile = builtin_skeletons(["front", "back", "smile"], 64, 64)
    base = ImageRequest("a knight", width=64, height=64, steps=2, seed=4)
    plain = _pixels(backend.text_to_image(base))
    steered = _pixels(backend.text_to_image(replace(base, control_image=front)))
    assert not np.array_equal(plain, steered)
    assert not np.array_equal(steered, _pixels(backend.text_to_image(replace(base, control_image=smile))))
    assert not np.array_equal(steered, _pixels(backend.text_to_image(replace(base, control_image=back))))
    assert np.array_equal(steered, _pixels(backend.text_to_image(replace(base, control_image=front))))
    off = replace(base, control_image=front, control_scale=0.0)
    assert np.array_equal(plain, _pixels(backend.text_to_image(off)))  # 0 bypasses the ControlNet entirely
    # IP-Adapter still conditions a controlled image.
    referenced = replace(base, control_image=front, ip_adapter_image=Image.new("RGB", (64, 64), "red"),
                         ip_adapter_scale=1.0)
    assert not np.array_equal(steered, _pixels(backend.text_to_image(referenced)))


def test_the_hint_encoder_runs_once_per_image_and_changes_no_pixel():
    """The control image's embedding is computed once per image, not at every step; the pixels are those of
    diffusers' own per-step computation, and the next image (another skeleton) gets its own embedding."""
    import types

    backend = get_backend("diffusers", models="tiny")
    front, smile = builtin_skeletons(["front", "smile"], 64, 64)
    request = ImageRequest("a knight", width=64, height=64, steps=4, seed=4, control_image=front)
    embedding = pipeline("sd_controlnet", "tiny").controlnet.controlnet_cond_embedding
    calls = []
    hook = embedding.conv_in.register_forward_hook(lambda *args: calls.append(1))
    try:
        once = _pixels(backend.text_to_image(request))
        assert len(calls) == 1
        assert not np.array_equal(once, _pixels(backend.text_to_image(replace(request, control_image=smile))))
        assert len(calls) == 2
        cached = embedding.forward
        embedding.forward = types.MethodType(type(embedding).forward, embedding)  # diffusers' own: every step
        try:
            assert np.array_equal(once, _pixels(backend.text_to_image(request)))
            assert len(calls) == 2 + request.steps
        finally:
            embedding.forward = cached
    finally:
        hook.remove()


@pytest.mark.parametrize("kwargs,message", [
    (dict(control_scale=-0.1), r"`control_scale` must be a number in \[0, 2\]"),
    (dict(control_scale=True), r"`control_scale` must be a number"),
    (dict(control_image="pose.png"), "`control_image` must be a PIL image"),
])
def test_bad_control_requests_are_refused(kwargs, message):
    with pytest.raises(ValueError, match=message):
        ImageRequest("x", **kwargs)


def _profile_with_controlnet(tmp_path, name: str, controlnet: str):
    """The tiny profile with its `controlnet` role replaced."""
    path = tmp_path / f"{name}.yaml"
    path.write_text((parameters_dir() / "models" / "tiny.yaml").read_text()
                    .replace("name: tiny\n", f"name: {name}\n")
                    .replace("  controlnet: tiny:controlnet", f"  controlnet: {controlnet}"))
    return load_profile(path)


def test_a_single_file_controlnet_loads_weight_for_weight_and_steers_as_the_folder(tmp_path, monkeypatch):
    folder = tmp_path / "controlnet"
    tiny.build_single_file_controlnet(folder / "tiny_openpose.safetensors")
    tiny.build_single_file_controlnet(folder / "reseeded.safetensors", seed=5)
    monkeypatch.setenv("ANIMENB_CONTROLNETS", str(folder))
    by_name = _profile_with_controlnet(tmp_path, "one-file", "{source: tiny_openpose.safetensors, config: 'tiny:controlnet'}")
    ours = pipeline("sd_controlnet", by_name).controlnet.state_dict()
    theirs = pipeline("sd_controlnet", "tiny").controlnet.state_dict()
    assert set(ours) == set(theirs) and all(torch.equal(ours[k], theirs[k]) for k in theirs)
    request = ImageRequest("a knight", width=64, height=64, steps=2, seed=4,
                           control_image=builtin_skeletons(["smile"], 64, 64)[0])
    from_folder = _pixels(get_backend("diffusers", models="tiny").text_to_image(request))
    assert np.array_equal(from_folder, _pixels(get_backend("diffusers", models=by_name).text_to_image(request)))
    reseeded = _profile_with_controlnet(tmp_path, "reseeded", f"{{source: {folder / 'reseeded.safetensors'}, "
                                                              "config: 'tiny:controlnet'}")
    assert not np.array_equal(from_folder,
                              _pixels(get_backend("diffusers", models=reseeded).text_to_image(request)))


def test_a_single_file_controlnet_names_its_folder_and_default_config(tmp_path, monkeypatch):
    monkeypatch.setenv("ANIMENB_CONTROLNETS", str(tmp_path / "controlnet"))
    missing = _profile_with_controlnet(tmp_path, "missing", "control_v11p_sd15_openpose_fp16.safetensors")
    with pytest.raises(ModelNotAvailableError, match="no controlnet file named .*ANIMENB_CONTROLNETS"):
        missing.resolve("controlnet")
    # Without `config:`, an SD 1.5 ControlNet's configs, which `animenb models download` fetches.
    assert missing.single_file_config("controlnet") == "lllyasviel/control_v11p_sd15_openpose"
    assert ("controlnet", "lllyasviel/control_v11p_sd15_openpose", "config") in {
        (d.role, d.repo_id, d.what) for d in hub_downloads(missing)}


# ---------------------------------------------------------------- the sheet


@pytest.fixture(scope="module")
def controlled_sheet(tmp_path_factory):
    return character_sheet("anime girl with blue hair", seed=11, output_dir=tmp_path_factory.mktemp("posed"),
                           **FAST)


def test_a_controlled_sheet_keeps_the_skeletons_it_followed(controlled_sheet):
    out, manifest = controlled_sheet.output_dir, controlled_sheet.manifest
    assert manifest["parameters"]["pose_strength"] == 1.0 and manifest["parameters"]["pose_images"] is None
    outputs = manifest["outputs"]
    assert outputs["skeletons"] == "skeletons.png"
    assert outputs["pose_skeletons"] == [f"poses/pose_{i + 1:02d}_{key}.openpose.png" for i, key in enumerate(KEYS)]
    assert len(outputs["poses"]) == 8 and not any(p.endswith(".openpose.png") for p in outputs["poses"])
    expected = builtin_skeletons(KEYS, 64, 64)
    for path, skeleton in zip(outputs["pose_skeletons"], expected):
        with Image.open(out / path) as im:
            assert np.array_equal(np.asarray(im.convert("RGB")), np.asarray(skeleton))
    with Image.open(out / "skeletons.png") as im:
        assert im.width == 4 * 64
    kinds = {f["path"]: f["kind"] for f in manifest["files"]}
    assert kinds["skeletons.png"] == "skeletons" and kinds[outputs["pose_skeletons"][0]] == "skeleton"
    assert read_png_parameters(out / outputs["pose_skeletons"][2])["pose"] == "left"


def test_pose_strength_zero_is_the_prompt_only_sheet(controlled_sheet, tmp_path):
    free = character_sheet("anime girl with blue hair", seed=11, output_dir=tmp_path, pose_strength=0.0, **FAST)
    assert "skeletons" not in free.manifest["outputs"] and not list((tmp_path / "poses").glob("*.openpose.png"))
    assert not np.array_equal(_pixels(free.images[1]), _pixels(controlled_sheet.images[1]))


def test_user_pose_images_drive_the_sheet(controlled_sheet, tmp_path):
    folder = tmp_path / "my_poses"
    folder.mkdir()
    mine = builtin_skeletons(list(reversed(KEYS)), 64, 64)
    for index, image in enumerate(mine):
        image.save(folder / f"pose{index}.png")
    result = character_sheet("anime girl with blue hair", seed=11, output_dir=tmp_path / "out", pose_images=folder,
                             **FAST)
    assert result.manifest["parameters"]["pose_images"] == str(folder)
    with Image.open(result.output_dir / result.manifest["outputs"]["pose_skeletons"][0]) as im:
        assert np.array_equal(np.asarray(im.convert("RGB")), np.asarray(mine[0]))
    assert not np.array_equal(_pixels(result.images[0]), _pixels(controlled_sheet.images[0]))


@pytest.mark.parametrize("kwargs,message", [
    (dict(pose_strength=2.5), r"`pose_strength` must be in \[0, 2\]"),
    (dict(pose_strength="strong"), "`pose_strength` must be a finite number"),
    (dict(pose_images="/nonexistent/poses"), "`pose_images` must be a folder of 8 pose images"),
    (dict(pose_images=[Image.new("RGB", (64, 64))] * 3), "`pose_images` must hold exactly 8 images"),
])
def test_bad_pose_inputs_fail_before_generation(kwargs, message, tmp_path):
    with pytest.raises(ValueError, match=message):
        character_sheet("x", output_dir=tmp_path / "never", **{**FAST, **kwargs})
    assert not (tmp_path / "never").exists()


def test_the_spec_documents_pose_control():
    spec = phase_spec("CHARACTER_SHEET")
    assert spec.defaults["pose_strength"] == 1.0 and spec.defaults["pose_images"] is None
    assert spec.param("pose_strength").api and not spec.param("pose_images").api
    with pytest.raises(SpecError) as refused:
        spec.check({"prompt": "x", "pose_strength": -1})
    assert refused.value.field == "pose_strength"


def test_scoring_a_controlled_run_reports_pose_following(controlled_sheet):
    report = score_output_dir(controlled_sheet.output_dir)
    assert 0.0 <= report.metrics["pose_following"] <= 1.0
    assert np.asarray(report.details["pose_skeleton_correlation"]).shape == (8, 8)
    assert "pose_following" not in report.weights  # informational: it does not move the score


# ---------------------------------------------------------------- ComfyUI graph (the live run: test_comfyui_pngs)


def test_comfyui_graph_conditions_both_prompts_on_the_pose():
    request = ImageRequest("a knight", width=64, height=64, steps=2, control_image=Image.new("RGB", (64, 64)),
                           control_scale=0.8)
    graph = graphs.text_to_image(request, checkpoint="sd15.safetensors",
                                 controlnet={"image_name": "pose.png", "controlnet_model": "openpose.safetensors"})
    nodes = {node["class_type"]: (node_id, node["inputs"]) for node_id, node in graph.nodes.items()}
    apply_id, applied = nodes["ControlNetApplyAdvanced"]
    assert applied["strength"] == 0.8 and (applied["start_percent"], applied["end_percent"]) == (0.0, 1.0)
    assert graph.nodes[applied["control_net"][0]]["inputs"] == {"control_net_name": "openpose.safetensors"}
    assert graph.nodes[applied["image"][0]]["inputs"] == {"image": "pose.png"}
    sampler = graph.nodes[graph.sampler]["inputs"]
    assert sampler["positive"] == [apply_id, 0] and sampler["negative"] == [apply_id, 1]
    json.dumps(graph.nodes)
    plain = graphs.text_to_image(request, checkpoint="sd15.safetensors")
    assert "ControlNetApplyAdvanced" not in {n["class_type"] for n in plain.nodes.values()}
