"""Models as researchers have them, on the diffusers backend, with tiny weights built locally in the real
file layouts: a single-file checkpoint (original SD layout), a VAE file, a kohya LoRA and an A1111 embedding."""
from __future__ import annotations

import hashlib
import io
import os
import subprocess
import sys

import pytest

from animenb import model_files, tiny
from animenb.backends import ImageRequest, get_backend
from animenb.backends.samplers import SAMPLERS
from animenb.profiles import load_profile

REQUEST = dict(prompt="a girl", width=64, height=64, steps=3, seed=1)


def png_digest(image) -> str:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return hashlib.sha256(buffer.getvalue()).hexdigest()


@pytest.fixture(scope="module")
def model_dirs(tmp_path_factory):
    """Folders holding one checkpoint, one VAE, two LoRAs and one embedding; the env vars point at them."""
    root = tmp_path_factory.mktemp("models")
    tiny.build_single_file_checkpoint(root / "checkpoints" / "toon.safetensors",
                                      vae_path=root / "vae" / "toon-vae.safetensors")
    tiny.build_lora(root / "loras" / "alice.safetensors")
    tiny.build_lora(root / "loras" / "chars" / "bob.safetensors", seed=99, text_encoder=False)
    tiny.build_embedding(root / "embeddings" / "EasyNegative.safetensors")
    tiny.build_motion_lora(root / "loras" / "motion" / "zoom.safetensors")
    env = {"ANIMENB_CHECKPOINTS": root / "checkpoints", "ANIMENB_VAES": root / "vae",
           "ANIMENB_LORAS": root / "loras", "ANIMENB_EMBEDDINGS": root / "embeddings"}
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update({k: str(v) for k, v in env.items()})
    yield root
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


@pytest.fixture(scope="module")
def backend(model_dirs):
    return get_backend("diffusers", models="tiny")


def test_single_file_round_trip_keeps_every_weight(tmp_path):
    import torch
    from diffusers import StableDiffusionPipeline

    folder = str(tiny.ensure_tiny_models()["sd"])
    base = StableDiffusionPipeline.from_pretrained(folder, safety_checker=None, requires_safety_checker=False)
    path = tmp_path / "same.ckpt"  # the pickled layout too
    tiny._save_state(tiny.original_layout_state_dict(base), path)
    loaded = StableDiffusionPipeline.from_single_file(str(path), config=folder, local_files_only=True,
                                                      safety_checker=None, requires_safety_checker=False)
    for component in ("unet", "vae", "text_encoder"):
        ours, theirs = getattr(loaded, component).state_dict(), getattr(base, component).state_dict()
        assert set(ours) == set(theirs), component
        assert all(torch.equal(ours[k], theirs[k]) for k in theirs), component


def test_checkpoint_profile_and_request_give_the_same_image(backend, model_dirs, tmp_path):
    by_request = png_digest(backend.text_to_image(ImageRequest(**REQUEST, checkpoint="toon")))
    assert by_request != png_digest(backend.text_to_image(ImageRequest(**REQUEST)))
    profile = tmp_path / "toon.yaml"
    profile.write_text("name: toon\ndefault_size: 64\nroles:\n  sd: {source: toon.safetensors, config: 'tiny:sd'}\n"
                       "  ip_adapter: {source: 'tiny:ip_adapter', subfolder: models, "
                       "weight_name: ip-adapter_tiny.safetensors}\n")
    from_profile = get_backend("diffusers", models=str(profile))
    assert png_digest(from_profile.text_to_image(ImageRequest(**REQUEST))) == by_request


def test_vae_override_changes_only_the_decode(model_dirs, tmp_path):
    profile = tmp_path / "vae.yaml"
    profile.write_text("name: with-vae\ndefault_size: 64\nroles:\n  sd: 'tiny:sd'\n  vae: toon-vae.safetensors\n"
                       "  ip_adapter: {source: 'tiny:ip_adapter', subfolder: models, "
                       "weight_name: ip-adapter_tiny.safetensors}\n")
    with_vae = get_backend("diffusers", models=str(profile))
    plain = get_backend("diffusers", models="tiny")
    assert png_digest(with_vae.text_to_image(ImageRequest(**REQUEST))) != \
        png_digest(plain.text_to_image(ImageRequest(**REQUEST)))


def test_unknown_checkpoint_lists_the_folder(backend):
    with pytest.raises(ValueError, match=r"no checkpoints file named 'nope'.*available: toon"):
        backend.text_to_image(ImageRequest(**REQUEST, checkpoint="nope"))


def test_loras_change_the_image_and_leave_nothing_behind(backend):
    plain = png_digest(backend.text_to_image(ImageRequest(**REQUEST)))
    alice = png_digest(backend.text_to_image(ImageRequest(**REQUEST, loras=[{"name": "alice", "weight": 1.0}])))
    half = png_digest(backend.text_to_image(ImageRequest(**REQUEST, loras=[{"name": "alice", "weight": 0.5}])))
    both = png_digest(backend.text_to_image(ImageRequest(
        **REQUEST, loras=[{"name": "alice", "weight": 1.0}, {"name": "chars/bob", "weight": 0.8}])))
    assert len({plain, alice, half, both}) == 4
    assert [e["name"] for e in backend.last_models["loras"]] == ["alice", "chars/bob"]
    assert png_digest(backend.text_to_image(ImageRequest(**REQUEST))) == plain
    assert backend.last_models["loras"] == []


def test_a_job_after_loras_matches_a_fresh_process(backend, model_dirs):
    backend.text_to_image(ImageRequest(**REQUEST, loras=[{"name": "alice", "weight": 1.0}],
                                       negative_prompt="EasyNegative", clip_skip=2, scheduler="Euler a"))
    warm = png_digest(backend.text_to_image(ImageRequest(**REQUEST)))
    code = ("import hashlib, io; from animenb.backends import get_backend, ImageRequest; "
            f"im = get_backend('diffusers', models='tiny').text_to_image(ImageRequest(**{REQUEST!r})); "
            "b = io.BytesIO(); im.save(b, format='PNG'); print(hashlib.sha256(b.getvalue()).hexdigest())")
    env = {**os.environ, "ANIMENB_THREADS": "1"}
    import torch

    assert torch.get_num_threads() == 1, "the comparison needs the same thread count as the fresh process"
    fresh = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    assert fresh.returncode == 0, fresh.stderr[-2000:]
    assert fresh.stdout.split()[-1] == warm


def test_unknown_or_bad_loras_are_refused_clearly(backend):
    with pytest.raises(ValueError, match=r"no loras file named 'carol'.*available: alice, chars/bob"):
        backend.text_to_image(ImageRequest(**REQUEST, loras=[{"name": "carol", "weight": 1}]))
    with pytest.raises(ValueError, match="weight"):
        ImageRequest(**REQUEST, loras=[{"name": "alice", "weight": 9}])
    with pytest.raises(ValueError, match="name"):
        ImageRequest(**REQUEST, loras=[{"weight": 1}])


def test_embedding_named_in_the_prompt_is_used(backend):
    plain = png_digest(backend.text_to_image(ImageRequest(**REQUEST)))
    a1111 = png_digest(backend.text_to_image(ImageRequest(**REQUEST, negative_prompt="EasyNegative")))
    comfy = png_digest(backend.text_to_image(ImageRequest(**REQUEST, negative_prompt="embedding:EasyNegative")))
    assert a1111 == comfy != plain
    assert backend.last_models["embeddings"][0]["name"] == "EasyNegative"
    assert png_digest(backend.text_to_image(ImageRequest(**REQUEST))) == plain


def test_clip_skip(backend):
    one = png_digest(backend.text_to_image(ImageRequest(**REQUEST, clip_skip=1)))
    assert one == png_digest(backend.text_to_image(ImageRequest(**REQUEST)))
    assert one != png_digest(backend.text_to_image(ImageRequest(**REQUEST, clip_skip=2)))
    with pytest.raises(ValueError, match="clip_skip"):
        ImageRequest(**REQUEST, clip_skip=5)


def test_every_a1111_sampler_runs_and_differs(backend):
    digests = {name: png_digest(backend.text_to_image(ImageRequest(**REQUEST, scheduler=name))) for name in SAMPLERS}
    assert len(set(digests.values())) == len(SAMPLERS)
    # An old id is the same sampler; going back after a Karras sampler leaves no Karras sigmas behind.
    assert png_digest(backend.text_to_image(ImageRequest(**REQUEST, scheduler="dpmpp_2m"))) == digests["DPM++ 2M"]


def test_dpmpp_sde_karras_is_the_sde_scheduler_seeded_by_the_request(backend):
    """A1111's DPM++ SDE Karras is diffusers' DPMSolverSDEScheduler on Karras sigmas. Its Brownian-tree noise is
    seeded from the request (not torch's global RNG), and progress counts the request's steps, not its two model
    calls per step."""
    import torch

    request = ImageRequest(**REQUEST, scheduler="DPM++ SDE Karras")
    steps: list = []
    torch.manual_seed(1)
    first = png_digest(backend.text_to_image(request, on_step=lambda **kw: steps.append(kw)))
    scheduler = backend._pipeline("sd").scheduler
    assert (type(scheduler).__name__, scheduler.config.use_karras_sigmas) == ("DPMSolverSDEScheduler", True)
    assert len(steps) == REQUEST["steps"] and "preview" in steps[-1]
    torch.manual_seed(2)
    assert png_digest(backend.text_to_image(request)) == first
    assert png_digest(backend.text_to_image(ImageRequest(**{**REQUEST, "seed": 2}, scheduler="DPM++ SDE Karras"))) \
        != first


def test_listing_names_sizes_hashes_without_paths(model_dirs):
    listing = model_files.listing()
    assert [e["name"] for e in listing["loras"]] == ["alice", "chars/bob", "motion/zoom"]
    assert [e["name"] for e in listing["checkpoints"]] == ["toon"]
    entry = listing["checkpoints"][0]
    path = model_dirs / "checkpoints" / "toon.safetensors"
    assert entry["bytes"] == path.stat().st_size
    assert entry["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest() and entry["hash"] == entry["sha256"][:10]
    assert len(listing["loras"][0]["hash"]) == 12 and listing["loras"][0]["hash"] != listing["loras"][0]["sha256"][:12]
    assert str(model_dirs) not in repr(listing)


def test_profile_loras_and_clip_skip(model_dirs, tmp_path):
    profile = tmp_path / "styled.yaml"
    profile.write_text("name: styled\ndefault_size: 64\nclip_skip: 2\nloras: [{name: alice, weight: 0.7}]\n"
                       "roles:\n  sd: 'tiny:sd'\n  ip_adapter: {source: 'tiny:ip_adapter', subfolder: models, "
                       "weight_name: ip-adapter_tiny.safetensors}\n")
    loaded = load_profile(str(profile))
    assert loaded.loras == (("alice", 0.7),) and loaded.clip_skip == 2
    styled = get_backend("diffusers", models=loaded)
    styled.text_to_image(ImageRequest(**REQUEST))
    assert styled.last_models["clip_skip"] == 2 and styled.last_models["loras"][0]["weight"] == 0.7
    profile.write_text(profile.read_text().replace("clip_skip: 2", "clip_skip: 7"))
    with pytest.raises(ValueError, match=r"styled.yaml: `clip_skip` must be an integer in \[1, 4\]"):
        load_profile(str(profile))


def test_sheet_pngs_carry_the_recipe_as_a1111_writes_it(model_dirs, tmp_path):
    from sd_parsers import ParserManager

    from animenb.phases import character_sheet

    result = character_sheet("a girl", negative_prompt="EasyNegative", seed=5, steps=2, scheduler="DPM++ 2M Karras",
                             checkpoint="toon", loras=[{"name": "alice", "weight": 0.75}], clip_skip=2,
                             models="tiny", output_dir=tmp_path / "run", display=None)
    path = result.output_dir / "sheet.png"
    from PIL import Image

    with Image.open(path) as image:
        text = image.text["parameters"]
    toon = model_dirs / "checkpoints" / "toon.safetensors"
    assert f"Model hash: {hashlib.sha256(toon.read_bytes()).hexdigest()[:10]}, Model: toon" in text
    assert "<lora:alice:0.75>" in text.splitlines()[0]
    assert 'Clip skip: 2, Lora hashes: "alice: ' in text and 'TI hashes: "EasyNegative: ' in text
    info = ParserManager().parse(str(path))
    sampler = info.samplers[0]
    assert (sampler.name, sampler.parameters["scheduler"]) == ("DPM++ 2M", "Karras")
    assert sampler.model.name == "toon" and sampler.model.hash == hashlib.sha256(toon.read_bytes()).hexdigest()[:10]
    assert "<lora:alice:0.75>" in sampler.prompts[0].value
    assert info.metadata["Clip skip"] == "2"
    assert sampler.negative_prompts[0].value == "EasyNegative"


@pytest.mark.parametrize("name", [*SAMPLERS])
def test_sd_parsers_reads_every_sampler_back(name, tmp_path):
    from PIL import Image
    from sd_parsers import ParserManager

    from animenb import media

    path = media.save_png(Image.new("RGB", (8, 8)), tmp_path / "x.png",
                          {"prompt": "p", "steps": 2, "sampler": name, "cfg_scale": 7.0, "seed": 1, "size": "8x8"})
    sampler = ParserManager().parse(str(path)).samplers[0]
    assert (sampler.name, sampler.parameters["scheduler"]) == SAMPLERS[name].a1111


VIDEO = dict(prompt="a girl", width=64, height=64, steps=2, frames=4, seed=1)
ALICE = [{"name": "alice", "weight": 1.0}]


def frames_digest(frames) -> str:
    return hashlib.sha256("".join(png_digest(frame) for frame in frames).encode()).hexdigest()


def fresh_process_digests() -> tuple[str, str]:
    """The plain image's and the plain animation's digests from a new process (one torch thread, as here)."""
    import torch

    assert torch.get_num_threads() == 1, "the comparison needs the same thread count as the fresh process"
    code = ("import hashlib, io; from animenb.backends import get_backend, ImageRequest, VideoRequest\n"
            "def png(im):\n b = io.BytesIO(); im.save(b, format='PNG'); return hashlib.sha256(b.getvalue()).hexdigest()\n"
            "backend = get_backend('diffusers', models='tiny')\n"
            f"print(png(backend.text_to_image(ImageRequest(**{REQUEST!r}))))\n"
            f"frames = backend.text_to_video(VideoRequest(**{VIDEO!r}))\n"
            "print(hashlib.sha256(''.join(png(f) for f in frames).encode()).hexdigest())\n")
    fresh = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                           env={**os.environ, "ANIMENB_THREADS": "1"}, timeout=600)
    assert fresh.returncode == 0, fresh.stderr[-2000:]
    image, video = fresh.stdout.split()[-2:]
    return image, video


def test_animation_loras_leave_nothing_behind_in_either_order(backend):
    """AnimateDiff's UNet is its own (a motion UNet built from SD's), its text encoder is SD's: a LoRA loaded
    for one kind of job must not reach the next job of the other kind. Both orders, against a fresh process."""
    from animenb.backends import VideoRequest
    from animenb.models import clear_cache

    fresh_image, fresh_video = fresh_process_digests()
    clear_cache()
    # image with a LoRA, then animation without (the motion UNet is built after the image job's LoRA)
    backend.text_to_image(ImageRequest(**REQUEST, loras=ALICE))
    assert frames_digest(backend.text_to_video(VideoRequest(**VIDEO))) == fresh_video
    # animation with a LoRA, then image without
    with_lora = backend.text_to_video(VideoRequest(**VIDEO, loras=ALICE))
    assert backend.last_models["loras"][0]["name"] == "alice"
    assert frames_digest(with_lora) != fresh_video
    assert png_digest(backend.text_to_image(ImageRequest(**REQUEST))) == fresh_image
    # and back: the animation's LoRA is still loaded (not reloaded) yet off for a job without it
    assert frames_digest(backend.text_to_video(VideoRequest(**VIDEO, loras=ALICE))) == frames_digest(with_lora)
    assert frames_digest(backend.text_to_video(VideoRequest(**VIDEO))) == fresh_video


def test_animation_with_a_unet_only_lora_and_the_image_lora_in_turn(backend):
    """A LoRA with no text-encoder layers on the animation, while the image pipeline holds another LoRA in the
    shared text encoder: each job gets exactly its own."""
    from animenb.backends import VideoRequest

    bob = [{"name": "chars/bob", "weight": 0.8}]
    image_alice = png_digest(backend.text_to_image(ImageRequest(**REQUEST, loras=ALICE)))
    video_bob = frames_digest(backend.text_to_video(VideoRequest(**VIDEO, loras=bob)))
    video_both = frames_digest(backend.text_to_video(VideoRequest(**VIDEO, loras=ALICE + bob)))
    assert video_bob != video_both
    assert png_digest(backend.text_to_image(ImageRequest(**REQUEST, loras=ALICE))) == image_alice
    assert frames_digest(backend.text_to_video(VideoRequest(**VIDEO, loras=bob))) == video_bob


def test_a_pose_controlled_job_with_loras_leaves_nothing_behind(backend):
    """The ControlNet pipeline shares the SD pipeline's UNet and text encoder: a LoRA a controlled (sheet) job
    loaded must not stay active for the next plain or controlled job, nor break the animation pipeline."""
    from animenb.backends import VideoRequest
    from animenb.models import clear_cache
    from animenb.poses import builtin_skeletons

    clear_cache()
    skeleton = builtin_skeletons(["front"], 64, 64)[0]
    controlled = {**REQUEST, "control_image": skeleton}
    plain = png_digest(backend.text_to_image(ImageRequest(**REQUEST)))
    control = png_digest(backend.text_to_image(ImageRequest(**controlled)))
    with_lora = png_digest(backend.text_to_image(ImageRequest(**controlled, loras=[{"name": "alice", "weight": 1.0}])))
    assert with_lora != control
    assert png_digest(backend.text_to_image(ImageRequest(**REQUEST))) == plain
    assert png_digest(backend.text_to_image(ImageRequest(**controlled))) == control
    backend.text_to_image(ImageRequest(**controlled, loras=[{"name": "alice", "weight": 1.0}]))
    assert len(backend.text_to_video(VideoRequest("a girl", width=64, height=64, steps=2, frames=4))) == 4


ZOOM = {"motion_lora": "motion/zoom"}


def test_a_motion_lora_moves_the_animation_and_leaves_nothing_behind(backend):
    """A motion LoRA acts on AnimateDiff's motion modules only; with its weight, beside an image LoRA, and never
    in the next job of either kind (same bytes as a fresh process)."""
    from animenb.backends import VideoRequest
    from animenb.models import clear_cache

    fresh_image, fresh_video = fresh_process_digests()
    clear_cache()
    zoom = frames_digest(backend.text_to_video(VideoRequest(**VIDEO, **ZOOM)))
    assert backend.last_models["loras"] == [{"name": "motion/zoom", "hash": backend.last_models["loras"][0]["hash"],
                                             "weight": 1.0}]
    assert zoom != fresh_video
    assert frames_digest(backend.text_to_video(VideoRequest(**VIDEO))) == fresh_video
    assert png_digest(backend.text_to_image(ImageRequest(**REQUEST))) == fresh_image
    half = frames_digest(backend.text_to_video(VideoRequest(**VIDEO, **ZOOM, motion_lora_weight=0.5)))
    with_alice = frames_digest(backend.text_to_video(VideoRequest(**VIDEO, **ZOOM, loras=ALICE)))
    assert len({zoom, half, with_alice, fresh_video}) == 4
    assert [e["name"] for e in backend.last_models["loras"]] == ["alice", "motion/zoom"]
    assert frames_digest(backend.text_to_video(VideoRequest(**VIDEO, **ZOOM))) == zoom  # kept loaded, same bytes
    assert png_digest(backend.text_to_image(ImageRequest(**REQUEST))) == fresh_image
    assert frames_digest(backend.text_to_video(VideoRequest(**VIDEO))) == fresh_video


def test_a_motion_lora_by_hub_id_from_the_hub_cache(backend, model_dirs, tmp_path, monkeypatch):
    """`owner/repo` that is not in the LoRA folder is a hub repo holding diffusers' motion-LoRA file (as
    guoyww/animatediff-motion-lora-zoom-out does), read from the hub cache offline: the same bytes as the file."""
    from huggingface_hub import constants

    from animenb.backends import VideoRequest
    from animenb.backends.diffusers_models import MOTION_LORA_WEIGHT_NAME
    from hubkit import write_hub_cache

    data = (model_dirs / "loras" / "motion" / "zoom.safetensors").read_bytes()
    write_hub_cache(tmp_path / "hub", "someone/motion-lora-zoom", {MOTION_LORA_WEIGHT_NAME: data})
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    by_name = frames_digest(backend.text_to_video(VideoRequest(**VIDEO, **ZOOM)))
    by_hub_id = frames_digest(backend.text_to_video(VideoRequest(**VIDEO, motion_lora="someone/motion-lora-zoom")))
    assert by_hub_id == by_name
    assert backend.last_models["loras"][0]["name"] == "motion-lora-zoom"
    with pytest.raises(ValueError, match="nobody/nothing.*Nor is it a hub repo"):
        backend.text_to_video(VideoRequest(**VIDEO, motion_lora="nobody/nothing"))
    with pytest.raises(ValueError, match="`motion_lora_weight` must be a number in \\[0, 4\\]"):
        VideoRequest(**VIDEO, **ZOOM, motion_lora_weight=-1)


def test_the_loop_records_its_motion_lora_and_sampler_in_the_manifest_and_pngs(model_dirs, tmp_path):
    from PIL import Image
    from sd_parsers import ParserManager

    from animenb.phases import animation_loop

    result = animation_loop("a girl", seed=3, steps=2, width=64, height=64, frames=4, loop_overlap=2,
                            scheduler="DPM++ SDE Karras", motion_lora="motion/zoom", motion_lora_weight=0.75,
                            models="tiny",
                            output_dir=tmp_path / "run", display=None)
    parameters = result.manifest["parameters"]
    assert (parameters["motion_lora"], parameters["motion_lora_weight"]) == ("motion/zoom", 0.75)
    frame = result.output_dir / result.manifest["outputs"]["frames"][0]
    with Image.open(frame) as image:
        text = image.text["parameters"]
    assert "<lora:motion/zoom:0.75>" in text.splitlines()[0] and 'Lora hashes: "motion/zoom: ' in text
    sampler = ParserManager().parse(str(frame)).samplers[0]
    assert "<lora:motion/zoom:0.75>" in sampler.prompts[0].value
    assert (sampler.name, sampler.parameters["scheduler"]) == ("DPM++ SDE", "Karras")
