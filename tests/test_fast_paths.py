"""Profile `fast_paths:` settings: parsed and checked with clear errors, applied to the real tiny pipelines."""
import numpy as np
import pytest
import torch

from animenb.backends import ImageRequest, VideoRequest, get_backend
from animenb.fast_paths import FastPaths, parse_fast_paths
from animenb.profiles import load_profile

TINY_ROLES = """roles:
  sd: tiny:sd
  motion_adapter: tiny:motion_adapter
  svd: tiny:svd
  ip_adapter:
    source: tiny:ip_adapter
    subfolder: models
    weight_name: ip-adapter_tiny.safetensors
"""


def tiny_profile(tmp_path, name: str, fast_paths: str):
    path = tmp_path / f"{name}.yaml"
    path.write_text(f"name: {name}\ndefault_size: 64\ndevice: cpu\n{TINY_ROLES}fast_paths:\n{fast_paths}")
    return load_profile(path)


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def test_defaults_resolve_per_device_and_size():
    fast = FastPaths()
    assert fast.attention == "sdpa" and not fast.compile_unet and not fast.cpu_offload
    assert fast.use_channels_last("cpu") and fast.use_channels_last("cuda:0") and not fast.use_channels_last("mps")
    assert not fast.use_vae_slicing(64, 64) and fast.use_vae_slicing(512, 64)
    assert not fast.use_vae_tiling(1024, 1024) and fast.use_vae_tiling(1032, 64)
    assert fast.chunk_size("svd", "cpu") == fast.chunk_size("svd", "cuda") == 8
    assert fast.chunk_size("animatediff", "cpu") == 1 and fast.chunk_size("animatediff", "cuda") == 16
    fixed = FastPaths(decode_chunk_size=4, vae_slicing=False, vae_tiling=True, channels_last=False)
    assert fixed.chunk_size("svd", "cpu") == fixed.chunk_size("animatediff", "cuda") == 4
    assert not fixed.use_vae_slicing(2048, 2048) and fixed.use_vae_tiling(64, 64)
    assert not fixed.use_channels_last("cuda")


@pytest.mark.parametrize("data, message", [
    ({"attention": "flash"}, r"`attention` must be one of sdpa, eager, got 'flash'"),
    ({"channels_last": "yes"}, r"`channels_last` must be auto, true or false, got 'yes'"),
    ({"vae_tiling": 1}, r"`vae_tiling` must be auto, true or false, got 1"),
    ({"decode_chunk_size": 0}, r"`decode_chunk_size` must be auto or an integer in \[1, 64\], got 0"),
    ({"decode_chunk_size": True}, r"`decode_chunk_size` must be auto or an integer"),
    ({"compile_unet": "auto"}, r"`compile_unet` must be true or false, got 'auto'"),
    ({"slicing": True}, r"unknown `fast_paths` setting\(s\) slicing; settings are attention, channels_last"),
    (["sdpa"], r"`fast_paths` must be a mapping"),
])
def test_bad_settings_name_the_file_the_setting_and_the_value(data, message):
    with pytest.raises(ValueError, match=r"Profile /x/p.yaml: .*" + message):
        parse_fast_paths(data, "/x/p.yaml")


def test_profile_yaml_carries_fast_paths(tmp_path):
    profile = tiny_profile(tmp_path, "fast", "  attention: eager\n  decode_chunk_size: 3\n")
    assert profile.fast_paths == FastPaths(attention="eager", decode_chunk_size=3)
    assert profile.as_dict()["fast_paths"]["decode_chunk_size"] == 3
    assert load_profile("tiny").fast_paths == FastPaths()  # the shipped profiles keep the defaults
    assert load_profile("anime-sd15").fast_paths == FastPaths()
    path = tmp_path / "broken.yaml"
    path.write_text(f"name: broken\n{TINY_ROLES}fast_paths:\n  vae_slicing: sometimes\n")
    with pytest.raises(ValueError, match=r"broken.yaml: `fast_paths`: `vae_slicing` must be auto, true or false"):
        load_profile(path)


def test_cpu_offload_without_cuda_is_a_clear_error(tmp_path):
    backend = get_backend("diffusers", models=tiny_profile(tmp_path, "offload", "  cpu_offload: true\n"))
    with pytest.raises(ValueError, match=r"`cpu_offload` needs a CUDA device, got 'cpu'"):
        backend.text_to_image(ImageRequest(prompt="x", width=64, height=64, steps=1, seed=1))


def test_eager_attention_and_channels_last_are_applied_and_change_nothing_visible(tmp_path):
    from diffusers.models.attention_processor import AttnProcessor, AttnProcessor2_0

    request = ImageRequest(prompt="anime girl", width=64, height=64, steps=2, seed=3)
    plain = get_backend("diffusers", models=tiny_profile(
        tmp_path, "plain", "  attention: sdpa\n  channels_last: false\n"))
    tuned = get_backend("diffusers", models=tiny_profile(
        tmp_path, "tuned", "  attention: eager\n  channels_last: true\n"))
    reference, image = plain.text_to_image(request), tuned.text_to_image(request)
    pipe = tuned._pipeline("sd")
    kinds = {type(p) for p in pipe.unet.attn_processors.values()}
    assert AttnProcessor in kinds and AttnProcessor2_0 not in kinds
    assert any("IPAdapter" in k.__name__ for k in kinds)  # the IP-Adapter's own processors are kept
    convs = [m.weight for m in pipe.unet.modules() if isinstance(m, torch.nn.Conv2d)]
    assert convs and all(w.is_contiguous(memory_format=torch.channels_last) for w in convs)
    assert {type(p) for p in plain._pipeline("sd").unet.attn_processors.values()} >= {AttnProcessor2_0}
    # Same maths in another order: equal to within float rounding, not necessarily bit for bit.
    difference = np.abs(np.asarray(reference, dtype=np.int16) - np.asarray(image, dtype=np.int16))
    assert difference.max() <= 2


def test_per_call_settings_reach_the_vae(tmp_path):
    backend = get_backend("diffusers", models=tiny_profile(
        tmp_path, "chunks", "  decode_chunk_size: 2\n  vae_slicing: true\n  vae_tiling: false\n"))
    pipe = backend._pipeline("animatediff")
    calls = []
    decode = pipe.vae.decode

    def counting_decode(z, *args, **kwargs):
        calls.append(z.shape[0])
        return decode(z, *args, **kwargs)

    pipe.vae.decode = counting_decode
    try:
        frames = backend.text_to_video(VideoRequest(prompt="x", width=64, height=64, steps=1, seed=1, frames=5))
    finally:
        del pipe.vae.decode
    assert len(frames) == 5 and calls == [2, 2, 1]  # decode_chunk_size frames per VAE call
    assert pipe.vae.use_slicing is True and pipe.vae.use_tiling is False
    auto = get_backend("diffusers", models=tiny_profile(tmp_path, "auto", "  attention: sdpa\n"))
    auto.text_to_image(ImageRequest(prompt="x", width=64, height=64, steps=1, seed=1))
    vae = auto._pipeline("sd").vae
    assert vae.use_slicing is False and vae.use_tiling is False  # auto: 64 px needs neither
