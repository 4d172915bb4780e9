"""Checkpoints by name, LoRAs, embeddings, clip skip and A1111 samplers on a real ComfyUI (0.3.75, core nodes:
CheckpointLoaderSimple, LoraLoader, CLIPSetLastLayer), with files built locally to fit its reduced checkpoint."""
from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import pytest

from animenb import tiny
from animenb.backends.base import ImageRequest
from animenb.backends.comfyui import ComfyUIBackend
from animenb.backends.samplers import SAMPLERS

try:
    from comfyui.fixtures import CHECKPOINT, _start_or_fail, comfyui_install  # noqa: F401
except ImportError:  # run from another rootdir
    from tests.comfyui.fixtures import CHECKPOINT, _start_or_fail, comfyui_install  # noqa: F401

pytestmark = [pytest.mark.comfyui, pytest.mark.timeout(900)]
TINY = dict(width=64, height=64, steps=2, seed=3)


@pytest.fixture(scope="module")
def server(comfyui_install):
    """A ComfyUI whose LoRA and embeddings folders hold one LoRA and one CLIP-L embedding."""
    import torch
    from safetensors.torch import save_file

    workdir = Path(tempfile.mkdtemp(prefix="animenb-comfyui-models-"))
    paths = {"loras": workdir / "models" / "loras", "embeddings": workdir / "models" / "embeddings"}
    tiny.build_lora_for_checkpoint(comfyui_install / "src" / "models" / "checkpoints" / CHECKPOINT,
                                   paths["loras"] / "alice.safetensors")
    paths["embeddings"].mkdir(parents=True)
    save_file({"emb_params": torch.randn(2, 768, generator=torch.Generator().manual_seed(0))},
              str(paths["embeddings"] / "EasyNegative.safetensors"))
    started = _start_or_fail(comfyui_install, workdir, [], paths)
    yield started
    started.stop()
    shutil.rmtree(workdir, ignore_errors=True)


@pytest.fixture
def backend(server):
    with ComfyUIBackend(server.url, timeout=300) as engine:
        yield engine


def test_named_checkpoint_and_refusal_with_the_list(backend):
    assert backend.text_to_image(ImageRequest("a fox", checkpoint=Path(CHECKPOINT).stem, **TINY)).size == (64, 64)
    with pytest.raises(ValueError, match=rf"no checkpoint named 'counterfeit_v30'; it lists: {CHECKPOINT}"):
        backend.text_to_image(ImageRequest("a fox", checkpoint="counterfeit_v30", **TINY))


def test_lora_clip_skip_and_embedding_change_the_image(backend):
    plain = backend.text_to_image(ImageRequest("a fox", **TINY)).tobytes()
    lora = backend.text_to_image(ImageRequest("a fox", loras=[{"name": "alice", "weight": 1.0}], **TINY)).tobytes()
    assert backend.last_models["loras"][0]["name"] == "alice"
    skip = backend.text_to_image(ImageRequest("a fox", clip_skip=2, **TINY)).tobytes()
    embedding = backend.text_to_image(ImageRequest("a fox", negative_prompt="EasyNegative", **TINY)).tobytes()
    assert backend.last_models["embeddings"] == [{"name": "EasyNegative", "hash": "unknown"}]
    assert len({plain, lora, skip, embedding}) == 4
    assert backend.text_to_image(ImageRequest("a fox", **TINY)).tobytes() == plain  # nothing carried over
    with pytest.raises(ValueError, match="no LoRA named 'bob'; it lists: alice.safetensors"):
        backend.text_to_image(ImageRequest("a fox", loras=[{"name": "bob", "weight": 1.0}], **TINY))


def test_every_a1111_sampler_is_accepted_by_ksampler(backend):
    for name in SAMPLERS:
        assert backend.text_to_image(ImageRequest("a fox", scheduler=name, **TINY)).size == (64, 64), name


def test_a_motion_lora_is_refused_with_the_reason(backend):
    """Core ComfyUI cannot apply an AnimateDiff motion LoRA: a clear refusal before anything reaches the server
    (the phase spec gives the same message as a 422, see test_phase_spec)."""
    from animenb.backends.base import MOTION_LORA_UNSUPPORTED, VideoRequest

    with pytest.raises(ValueError, match="not available on the comfyui backend") as refused:
        backend.text_to_video(VideoRequest("a fox", frames=4, motion_lora="zoom", **TINY))
    assert str(refused.value) == MOTION_LORA_UNSUPPORTED
