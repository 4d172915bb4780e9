"""Each phase as its model expects: AnimateDiff's own noise schedule and motion scale, per-role native sizes
(SVD-XT's 1024x576 at the source's aspect), SVD's decode chunk through the spec."""
from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import yaml
from PIL import Image

from animenb.backends import ImageToVideoRequest
from animenb.backends.diffusers_backend import use_scheduler
from animenb.models import pipeline
from animenb.phases import full_video
from animenb.profiles import load_profile


def test_animatediff_samples_on_its_linear_beta_schedule_and_sd_keeps_its_own():
    animatediff, sd = pipeline("animatediff", "tiny"), pipeline("sd", "tiny")
    for name in ("dpmpp_2m", "euler_a"):
        use_scheduler(animatediff, name, 0)
        config = animatediff.scheduler.config
        assert (config.beta_schedule, config.timestep_spacing, config.steps_offset) == ("linear", "linspace", 1)
    use_scheduler(sd, "dpmpp_2m", 0)
    assert sd.scheduler.config.beta_schedule == "scaled_linear"


@pytest.mark.parametrize("aspect,size", [(None, (1024, 576)), (16 / 9, (1024, 576)), (9 / 16, (576, 1024)),
                                         (1.0, (768, 768)), (4 / 3, (896, 640))])
def test_svd_xt_renders_at_its_native_pixel_count_at_the_source_aspect(aspect, size):
    profile = load_profile("anime-sd15")
    assert profile.native_size("svd", aspect) == size
    assert profile.native_size("sd", aspect) == (512, 512)  # no `sizes.sd`: the default size, as before


def _profile(tmp_path, **extra):
    data = {**yaml.safe_load((load_profile("tiny").path).read_text()), "name": "tiny-sized", **extra}
    path = tmp_path / "tiny-sized.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


@pytest.mark.parametrize("sizes,message", [({"svd": [1024]}, r"`sizes.svd` must be \[width, height\]"),
                                           ({"svd": [1020, 576]}, "multiples of 8"),
                                           ({"upscaler": [512, 512]}, "for one of the roles")])
def test_bad_profile_sizes_are_refused(tmp_path, sizes, message):
    with pytest.raises(ValueError, match=message):
        load_profile(_profile(tmp_path, sizes=sizes))


def test_full_video_animates_at_the_svd_size_with_the_source_aspect(tmp_path):
    profile = str(_profile(tmp_path, sizes={"svd": [256, 128]}))
    wide = Image.new("RGB", (128, 64), (200, 80, 80))
    result = full_video("a", image=wide, models=profile, steps=1, frames=2, seconds=1.0, fps=2, seed=1, display=None,
                        decode_chunk_size=1, output_dir=tmp_path / "wide")
    assert result.images[0].size == (256, 128)
    assert result.manifest["parameters"]["decode_chunk_size"] == 1
    explicit = full_video("a", image=wide, models=profile, steps=1, frames=2, seconds=1.0, fps=2, seed=1, display=None,
                          width=64, height=64, output_dir=tmp_path / "explicit")
    assert explicit.images[0].size == (64, 64)  # a size asked for is kept


def test_decode_chunk_size_is_checked_with_the_request():
    with pytest.raises(ValueError, match=r"`decode_chunk_size` must be None or an integer in \[1, 64\]"):
        ImageToVideoRequest(image=Image.new("RGB", (64, 64)), decode_chunk_size=0)
    with pytest.raises(ValueError, match="`decode_chunk_size` must be an integer in"):
        full_video(image=Image.new("RGB", (64, 64)), models="tiny", decode_chunk_size=100, display=None)


def test_motion_scale_scales_what_the_motion_modules_add():
    from animenb.backends import VideoRequest, get_backend

    backend = get_backend("diffusers", models="tiny")
    base = VideoRequest("a cat", width=64, height=64, steps=2, seed=3, frames=4)

    def frames(request):
        return np.stack([np.asarray(f, dtype=np.int16) for f in backend.text_to_video(request)])

    trained = frames(base)
    assert np.array_equal(trained, frames(replace(base, motion_scale=1.0)))
    calm, still = frames(replace(base, motion_scale=0.5)), frames(replace(base, motion_scale=0.0))
    assert not np.array_equal(trained, calm) and not np.array_equal(calm, still)
    assert np.array_equal(trained, frames(base))  # the scale is per request: nothing carries into the next
    with pytest.raises(ValueError, match=r"`motion_scale` must be a number in \[0, 2\]"):
        replace(base, motion_scale=3.0)


def test_comfyui_motion_scale_is_animatediff_evolved_scale_multival():
    from animenb.backends import VideoRequest
    from animenb.backends import comfyui_graphs as graphs

    request = VideoRequest("a cat", width=64, height=64, steps=2, frames=4, motion_scale=1.3)
    graph = graphs.text_to_video(request, checkpoint="sd15.safetensors", motion_model="mm.ckpt")
    applied = next(n["inputs"] for n in graph.nodes.values() if n["class_type"] == "ADE_ApplyAnimateDiffModelSimple")
    assert graph.nodes[applied["scale_multival"][0]] == {"class_type": "ADE_MultivalDynamic",
                                                         "inputs": {"float_val": 1.3}}
    plain = graphs.text_to_video(replace(request, motion_scale=1.0), checkpoint="sd15.safetensors",
                                 motion_model="mm.ckpt")
    assert "ADE_MultivalDynamic" not in {n["class_type"] for n in plain.nodes.values()}
