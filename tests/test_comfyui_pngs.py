"""PNGs made on the ComfyUI backend go back into ComfyUI and into A1111 readers.

Each pose PNG keeps ComfyUI's `prompt` chunk (the API graph that made it). Posted as-is to the
real ComfyUI's `/prompt`, with ComfyUI's caches emptied first, it is recomputed (no node served
from cache) and gives the same pixels. The same PNG reads back in sd-parsers as A1111 metadata.
"""
from __future__ import annotations

import json
import time
import urllib.parse
import urllib.request
import uuid
from io import BytesIO

import pytest
from PIL import Image
from sd_parsers import ParserManager

from animenb.backends.comfyui import ComfyUIBackend

try:
    from comfyui.fixtures import CHECKPOINT, comfyui_install, comfyui_packs_server  # noqa: F401
except ImportError:  # run from another rootdir
    from tests.comfyui.fixtures import CHECKPOINT, comfyui_install, comfyui_packs_server  # noqa: F401

pytestmark = [pytest.mark.comfyui, pytest.mark.timeout(600)]


def _post(url: str, path: str, body: dict) -> dict:
    request = urllib.request.Request(url + path, data=json.dumps(body).encode(), method="POST",
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=30) as response:
        text = response.read()
    return json.loads(text) if text else {}


def _run(url: str, prompt: dict, timeout: float = 300) -> dict:
    """Queue `prompt` as a plain client would and poll /history until it is there."""
    prompt_id = _post(url, "/prompt", {"prompt": prompt, "client_id": uuid.uuid4().hex})["prompt_id"]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with urllib.request.urlopen(f"{url}/history/{prompt_id}", timeout=30) as response:
            history = json.loads(response.read()).get(prompt_id)
        if history and history.get("status", {}).get("completed") is not None:
            return history
        time.sleep(0.2)
    raise AssertionError(f"ComfyUI did not finish {prompt_id} within {timeout}s")


def _cached_nodes(history: dict) -> list[str]:
    return [node for kind, data in history["status"]["messages"] if kind == "execution_cached"
            for node in data["nodes"]]


def _image(url: str, entry: dict) -> Image.Image:
    query = urllib.parse.urlencode({key: entry.get(key, "") for key in ("filename", "subfolder", "type")})
    with urllib.request.urlopen(f"{url}/view?{query}", timeout=30) as response:
        image = Image.open(BytesIO(response.read()))
        image.load()
    return image


def _empty_caches(url: str) -> None:
    """ComfyUI applies /free's flags after its next job: ask, then run a trivial job."""
    _post(url, "/free", {"free_memory": True, "unload_models": True})
    _run(url, {"1": {"class_type": "EmptyImage", "inputs": {"width": 8, "height": 8, "batch_size": 1,
                                                            "color": int(time.time()) % 0xFFFFFF}},
               "2": {"class_type": "PreviewImage", "inputs": {"images": ["1", 0]}}})


def test_pose_pngs_load_back_into_comfyui_and_a1111_readers(comfyui_packs_server, tmp_path):
    from animenb.phases.character_sheet import character_sheet

    url = comfyui_packs_server.url
    with ComfyUIBackend(url, checkpoint=CHECKPOINT) as engine:
        result = character_sheet("a girl with red hair, smiling", seed=21, steps=2, width=64, height=64,
                                 backend=engine, output_dir=tmp_path, display=None)
    poses = [tmp_path / path for path in result.manifest["outputs"]["poses"]]
    # Pose 1 is text-to-image; pose 2 follows pose 1 through IP-Adapter (an uploaded reference). Both follow
    # their uploaded OpenPose skeleton through the ControlNet, and the graph still reproduces the image.
    for path in poses[:2]:
        with Image.open(path) as im:
            graph = json.loads(im.text["prompt"])
            assert "ControlNetApplyAdvanced" in {node["class_type"] for node in graph.values()}
            pixels = im.convert("RGB").tobytes()
            info = ParserManager().parse(im)
        (sampler,) = info.samplers
        assert sampler.name == "DPM++ 2M" and sampler.parameters["scheduler"] == "Uniform"
        assert int(sampler.parameters["seed"]) == 21 and sampler.model.name == CHECKPOINT.removesuffix(".safetensors")
        assert info.prompts[0].value == graph[next(k for k, n in graph.items()
                                                   if n["class_type"] == "CLIPTextEncode")]["inputs"]["text"]
        output = next(k for k, n in graph.items() if n["class_type"] == "PreviewImage")

        _empty_caches(url)
        history = _run(url, graph)
        assert history["status"]["status_str"] == "success", history["status"]
        assert _cached_nodes(history) == []  # really recomputed, not served from ComfyUI's cache
        (entry,) = history["outputs"][output]["images"]
        assert _image(url, entry).convert("RGB").tobytes() == pixels
    with Image.open(poses[1]) as im:
        assert "IPAdapterAdvanced" in {node["class_type"] for node in json.loads(im.text["prompt"]).values()}
    # The sheet is composed by animenb, not made by one ComfyUI graph: no `prompt` chunk claims it was.
    with Image.open(tmp_path / "sheet.png") as im:
        assert "prompt" not in im.text and "Steps: 2" in im.text["parameters"]
