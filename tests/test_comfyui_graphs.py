"""ComfyUI graphs and message handling, without a server (fast; the live tests are in test_comfyui_backend)."""
from __future__ import annotations

import base64
import queue

import pytest
from PIL import Image

from animenb.backends import comfyui_graphs as graphs
from animenb.backends.base import SCHEDULERS, BackendError, ImageRequest, ImageToVideoRequest, VideoRequest
from animenb.backends.comfyui import ComfyUIBackend, _validation_message, comfyui_health
from animenb.backends.comfyui_client import Closed, preview_data_url


def _links(graph: graphs.Graph) -> list[tuple[str, str]]:
    """(from node class, to node class) for every link in the graph."""
    out = []
    for node in graph.nodes.values():
        for value in node["inputs"].values():
            if isinstance(value, list):
                out.append((graph.nodes[value[0]]["class_type"], node["class_type"]))
    return out


def test_every_scheduler_maps_to_a_ksampler_pair():
    assert set(graphs.SAMPLERS) == set(SCHEDULERS)
    assert graphs.SAMPLERS["dpmpp_2m_karras"] == ("dpmpp_2m", "karras")


def test_text_to_image_graph_is_the_builtin_chain():
    request = ImageRequest("a cat", negative_prompt="dog", width=64, height=96, steps=15, seed=9,
                           guidance_scale=6.5, scheduler="euler_a")
    graph = graphs.text_to_image(request, checkpoint="sd15.safetensors")
    classes = sorted(node["class_type"] for node in graph.nodes.values())
    assert classes == sorted(["CheckpointLoaderSimple", "CLIPTextEncode", "CLIPTextEncode", "EmptyLatentImage",
                              "KSampler", "VAEDecode", "PreviewImage"])
    sampler = graph.nodes[graph.sampler]
    assert sampler["class_type"] == "KSampler"
    assert sampler["inputs"] | {"model": None, "positive": None, "negative": None, "latent_image": None} == {
        "model": None, "positive": None, "negative": None, "latent_image": None, "seed": 9, "steps": 15,
        "cfg": 6.5, "sampler_name": "euler_ancestral", "scheduler": "normal", "denoise": 1.0}
    assert graph.nodes[graph.output]["class_type"] == "PreviewImage"
    texts = [graph.nodes[sampler["inputs"][k][0]]["inputs"]["text"] for k in ("positive", "negative")]
    assert texts == ["a cat", "dog"]
    assert ("VAEDecode", "PreviewImage") in _links(graph)


def test_ip_adapter_and_animatediff_wrap_the_sampler_model():
    request = VideoRequest("a loop", width=64, height=64, frames=16)
    ip = {"image_name": "ref.png", "ipadapter_model": "ip.safetensors", "clip_vision_model": "vit.safetensors"}
    graph = graphs.text_to_video(request, checkpoint="sd15.safetensors", motion_model="mm_sd15_v2.ckpt",
                                 ip_adapter=ip)
    links = _links(graph)
    assert ("CheckpointLoaderSimple", "IPAdapterAdvanced") in links
    assert ("IPAdapterAdvanced", "ADE_UseEvolvedSampling") in links
    assert ("ADE_UseEvolvedSampling", "KSampler") in links
    latent = next(n for n in graph.nodes.values() if n["class_type"] == "EmptyLatentImage")
    assert latent["inputs"]["batch_size"] == 16


def test_svd_graph_uses_builtin_nodes():
    request = ImageToVideoRequest(Image.new("RGB", (64, 64)), width=64, height=64, frames=8, fps=7,
                                  min_guidance_scale=1.0, max_guidance_scale=2.5)
    graph = graphs.image_to_video(request, checkpoint="svd.safetensors", image_name="in.png")
    classes = {node["class_type"] for node in graph.nodes.values()}
    assert set(graphs.SVD_NODES) <= classes
    assert graph.nodes[graph.sampler]["inputs"]["cfg"] == 2.5
    conditioning = next(n for n in graph.nodes.values() if n["class_type"] == "SVD_img2vid_Conditioning")
    assert conditioning["inputs"]["video_frames"] == 8


def _backend_with(messages) -> tuple[ComfyUIBackend, queue.Queue]:
    events = queue.Queue()
    for message in messages:
        events.put(message)
    return ComfyUIBackend("http://127.0.0.1:9", timeout=5), events


def test_progress_of_the_sampler_becomes_on_step_calls():
    png = b"\x00\x00\x00\x01\x00\x00\x00\x02" + b"PNGDATA"
    backend, events = _backend_with([
        {"type": "status", "data": {"status": {}}},
        {"type": "progress", "data": {"value": 1, "max": 9, "node": "99", "prompt_id": "p"}},  # another node
        {"type": "progress", "data": {"value": 1, "max": 3, "node": "5", "prompt_id": "other"}},  # another job
        {"type": "progress", "data": {"value": 1, "max": 3, "node": "5", "prompt_id": "p"}},
        png,
        {"type": "progress", "data": {"value": 3, "max": 3, "node": "5", "prompt_id": "p"}},  # skipped one
        {"type": "executing", "data": {"node": None, "prompt_id": "other"}},
        {"type": "executing", "data": {"node": None, "prompt_id": "p"}},
    ])
    calls = []
    backend._follow(events, "p", "5", lambda **kw: calls.append(kw))
    assert len(calls) == 3
    assert calls[1]["preview"] == "data:image/png;base64," + base64.b64encode(b"PNGDATA").decode()


@pytest.mark.parametrize("message, match", [
    ({"type": "execution_error", "data": {"prompt_id": "p", "node_id": "1", "node_type": "CheckpointLoaderSimple",
                                          "exception_type": "RuntimeError", "exception_message": "bad header\n"}},
     r"node 1 \(CheckpointLoaderSimple\): RuntimeError: bad header$"),
    ({"type": "execution_interrupted", "data": {"prompt_id": "p", "node_id": "5"}}, "interrupted"),
    (Closed("connection reset"), r"ComfyUI at http://127.0.0.1:9 is unreachable: .*connection reset"),
])
def test_failures_become_backend_errors(message, match):
    backend, events = _backend_with([message])
    with pytest.raises(BackendError, match=match):
        backend._follow(events, "p", "5", None)


def test_validation_answer_is_one_readable_line():
    answer = {"error": {"type": "prompt_outputs_failed_validation", "message": "Prompt outputs failed validation",
                        "details": ""},
              "node_errors": {"1": {"errors": [{"message": "Value not in list",
                                                "details": "ckpt_name: 'x.safetensors' not in []"}],
                                    "class_type": "CheckpointLoaderSimple"}}}
    text = _validation_message(answer, {})
    assert text.startswith("ComfyUI refused the graph: Prompt outputs failed validation")
    assert "node 1 (CheckpointLoaderSimple): Value not in list: ckpt_name: 'x.safetensors' not in []" in text


def test_previews_and_bad_urls():
    assert preview_data_url(b"\x00\x00\x00\x02abcd") is None
    assert preview_data_url(b"\x00\x00\x00\x01\x00\x00\x00\x01jpg").startswith("data:image/jpeg;base64,")
    with pytest.raises(ValueError, match="`url`"):
        ComfyUIBackend("127.0.0.1:8188")


def test_unreachable_server_is_reported_quickly():
    import time

    started = time.monotonic()
    backend = ComfyUIBackend("http://127.0.0.1:9", http_timeout=2)
    with pytest.raises(BackendError, match="ComfyUI at http://127.0.0.1:9 is unreachable"):
        backend.text_to_image(ImageRequest("x", width=64, height=64, steps=1))
    info = backend.describe()
    backend.close()
    assert info["comfyui_version"] is None and "unreachable" in info["error"]
    assert comfyui_health("http://127.0.0.1:9")["status"] == "unreachable"
    assert time.monotonic() - started < 5


def test_loras_chain_then_clip_skip_then_prompts():
    request = ImageRequest("a cat, EasyNegative", negative_prompt="EasyNegative, embedding:bad", seed=1, width=64,
                           height=64, loras=[{"name": "a", "weight": 0.5}], clip_skip=2)
    graph = graphs.text_to_image(request, checkpoint="sd15.safetensors",
                                 loras=[("a.safetensors", 0.5), ("b.safetensors", 1.0)], clip_skip=2,
                                 embeddings=["EasyNegative", "bad"])
    links = _links(graph)
    assert ("CheckpointLoaderSimple", "LoraLoader") in links and ("LoraLoader", "LoraLoader") in links
    assert ("LoraLoader", "CLIPSetLastLayer") in links and ("CLIPSetLastLayer", "CLIPTextEncode") in links
    assert ("LoraLoader", "KSampler") in links and ("CheckpointLoaderSimple", "KSampler") not in links
    last_layer = next(n for n in graph.nodes.values() if n["class_type"] == "CLIPSetLastLayer")
    assert last_layer["inputs"]["stop_at_clip_layer"] == -2
    texts = [n["inputs"]["text"] for n in graph.nodes.values() if n["class_type"] == "CLIPTextEncode"]
    assert texts == ["a cat, embedding:EasyNegative", "embedding:EasyNegative, embedding:bad"]


def test_a1111_sampler_names_map_to_ksampler_pairs():
    assert graphs.SAMPLERS["DPM++ 2M Karras"] == graphs.SAMPLERS["dpmpp_2m_karras"] == ("dpmpp_2m", "karras")
    assert graphs.SAMPLERS["Euler a"] == ("euler_ancestral", "normal")
    assert graphs.SAMPLERS["DPM++ SDE Karras"] == ("dpmpp_sde", "karras")
    assert graphs.SAMPLERS["UniPC"] == ("uni_pc", "normal") and graphs.SAMPLERS["LCM"] == ("lcm", "normal")
