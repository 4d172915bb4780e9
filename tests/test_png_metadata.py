"""Every PNG a phase writes reads back in the ecosystem's own parser (sd-parsers, as image browsers use).

sd-parsers 0.6 reads A1111's `parameters` chunk by field name: `Steps`, `Sampler` + `Schedule type`,
`CFG scale`, `Seed`, `Size`, `Model`. animenb's JSON chunk carries the same values exactly.
"""
from __future__ import annotations

import json

import pytest
import torch
from PIL import Image
from sd_parsers import ParserManager
from sd_parsers.data import Generators

from animenb import media
from animenb.phases import animation_loop, character_sheet, full_video

FAST = dict(models="tiny", steps=2, width=80, height=64, display=None)
NEGATIVE = "lowres, blurry: extra limbs"  # a comma and a colon, as real negative prompts have


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("runs")
    sheet = character_sheet("anime girl, blue hair", negative_prompt=NEGATIVE, seed=5, guidance_scale=6.5,
                            scheduler="dpmpp_2m_karras", output_dir=root / "sheet", **FAST)
    loop = animation_loop("anime girl, blue hair", negative_prompt=NEGATIVE, seed=6, guidance_scale=7.5,
                          scheduler="euler_a", frames=4, loop_overlap=1, reference_image=sheet.output_dir,
                          output_dir=root / "loop", **FAST)
    video = full_video("anime girl, blue hair", negative_prompt=NEGATIVE, seed=7, scheduler="ddim", frames=4,
                       seconds=1.0, fps=8, output_dir=root / "video", **FAST)
    return sheet, loop, video


# (sampler name, schedule type) sd-parsers must report for the phase's scheduler.
EXPECTED = {
    "CHARACTER_SHEET": ("DPM++ 2M", "Karras", 6.5, 5, "animenb-tiny-sd"),
    "ANIMATION_LOOP": ("Euler a", "Uniform", 7.5, 6, "animenb-tiny-sd"),
}


def _pngs(result):
    return sorted(result.output_dir.rglob("*.png"))


def _parse(path):
    with Image.open(path) as im:
        info = ParserManager().parse(im)
    assert info is not None, f"sd-parsers found no metadata in {path}"
    assert info.generator == Generators.AUTOMATIC1111, path
    (sampler,) = info.samplers
    return info, sampler


@pytest.mark.parametrize("index", [0, 1])
def test_sheet_and_loop_pngs_read_back_in_sd_parsers(runs, index):
    result = runs[index]
    name, schedule, cfg, seed, model = EXPECTED[result.phase.name]
    paths = _pngs(result)
    assert len(paths) >= 5
    for path in paths:
        info, sampler = _parse(path)
        own = media.read_png_parameters(path)
        assert info.prompts[0].value == own["prompt"] and own["prompt"].startswith("anime girl, blue hair")
        assert info.negative_prompts[0].value == NEGATIVE
        assert sampler.name == name and sampler.parameters["scheduler"] == schedule
        assert float(sampler.parameters["cfg_scale"]) == cfg and own["cfg_scale"] == cfg
        assert int(sampler.parameters["seed"]) == seed and int(sampler.parameters["steps"]) == 2
        assert sampler.model.name == model
        assert info.metadata["Size"] == "80x64"
        assert info.metadata["Phase"] == result.phase.name
        assert info.metadata["Models"] == "tiny (random weights)"


def test_video_pngs_name_what_made_each(runs):
    result = runs[2]
    source_info, source = _parse(result.path("source_image"))
    assert source.name == "DDIM" and source.model.name == "animenb-tiny-sd"
    assert float(source.parameters["cfg_scale"]) == 7.0 and int(source.parameters["seed"]) == 7
    frames = [path for path in _pngs(result) if path.parent.name == "frames"]
    assert len(frames) == 4
    for index, path in enumerate(frames):
        info, sampler = _parse(path)
        # SVD samples with Euler on Karras sigmas under its own guidance (1.0 -> 3.0 across frames).
        assert (sampler.name, sampler.parameters["scheduler"]) == ("Euler", "Karras")
        assert float(sampler.parameters["cfg_scale"]) == 3.0 and sampler.model.name == "animenb-tiny-svd"
        assert info.metadata["Frame"] == str(index) and info.metadata["Size"] == "80x64"
        assert info.prompts[0].value == "anime girl, blue hair" and info.negative_prompts[0].value == NEGATIVE


def test_values_with_commas_or_colons_are_quoted_as_a1111_does():
    text = media.parameters_text({"prompt": "a, b", "negative_prompt": "c", "steps": 3, "sampler": "euler",
                                  "cfg_scale": 5.0, "seed": 1, "size": "64x64", "model": "m",
                                  "reference_image": "/runs/x, y", "pose": 'say: "hi"'})
    prompt, negative, fields = text.split("\n")
    assert (prompt, negative) == ("a, b", "Negative prompt: c")
    assert fields == ('Steps: 3, Sampler: Euler, Schedule type: Uniform, CFG scale: 5.0, Seed: 1, Size: 64x64, '
                      'Model: m, Reference image: "/runs/x, y", Pose: "say: \\"hi\\""')
    assert json.loads(fields.split("Pose: ", 1)[1]) == 'say: "hi"'


def test_every_scheduler_has_an_a1111_name():
    from animenb.backends.base import SCHEDULERS

    assert set(SCHEDULERS) <= set(media.A1111_SAMPLERS)
    with pytest.raises(ValueError, match="`sampler` must be one of"):
        media.parameters_text({"prompt": "x", "sampler": "lms"})


def test_comfyui_chunks_on_an_image_survive_the_resave(tmp_path):
    image = Image.new("RGB", (8, 8))
    image.info.update({"prompt": '{"1": {"class_type": "EmptyImage", "inputs": {}}}', "workflow": "{}",
                       "parameters": "stale text from another tool"})
    path = media.save_png(image, tmp_path / "x.png", {"prompt": "p", "steps": 1, "sampler": "euler",
                                                      "cfg_scale": 1.0, "seed": 0})
    with Image.open(path) as im:
        assert im.text["prompt"] == image.info["prompt"] and im.text["workflow"] == "{}"
        assert im.text["parameters"].startswith("p\nSteps: 1, Sampler: Euler")
