"""ComfyUIBackend against a real ComfyUI 0.3.75 (installed at test time, see tests/comfyui/)."""
from __future__ import annotations

import asyncio
import importlib.util
import json
import threading
import time
import urllib.request

import pytest
from PIL import Image

from animenb.backends import get_backend
from animenb.backends.base import BackendError, ImageRequest, ImageToVideoRequest, VideoRequest
from animenb.backends.comfyui import ComfyUIBackend, comfyui_health

try:
    from comfyui.fixtures import (CHECKPOINT, CONTROLNET, comfyui_factory, comfyui_install,  # noqa: F401
                                  comfyui_packs_server, comfyui_server)
except ImportError:  # run from another rootdir
    from tests.comfyui.fixtures import (CHECKPOINT, CONTROLNET, comfyui_factory, comfyui_install,  # noqa: F401
                                        comfyui_packs_server, comfyui_server)

pytestmark = [pytest.mark.comfyui, pytest.mark.timeout(900)]

TINY = dict(width=64, height=64, steps=3)


class Cancel(Exception):
    pass


@pytest.fixture
def backend(comfyui_server):
    with ComfyUIBackend(comfyui_server.url, timeout=300) as engine:
        yield engine


def _queue(url: str) -> dict:
    with urllib.request.urlopen(url + "/queue", timeout=5) as response:
        return json.loads(response.read())


def test_text_to_image_relays_each_step(backend):
    steps = []
    image = backend.text_to_image(ImageRequest("a red fox", seed=1, **TINY), on_step=lambda **kw: steps.append(kw))
    assert isinstance(image, Image.Image) and image.size == (64, 64) and image.mode == "RGB"
    assert len(steps) == TINY["steps"]
    # The same graph again is served from ComfyUI's cache: no steps, same pixels.
    again = backend.text_to_image(ImageRequest("a red fox", seed=1, **TINY))
    assert again.tobytes() == image.tobytes()
    other = backend.text_to_image(ImageRequest("a red fox", seed=2, **TINY))
    assert other.tobytes() != image.tobytes()


def test_registry_and_describe(comfyui_server):
    engine = get_backend("comfyui", url=comfyui_server.url)
    try:
        info = engine.describe()
    finally:
        engine.close()
    assert info["backend"] == "comfyui" and info["url"] == comfyui_server.url
    assert info["checkpoint"] == CHECKPOINT
    assert info["comfyui_version"] == "0.3.75"
    assert info["devices"] and info["devices"][0]["type"] == "cpu"


def test_health_live_dead_and_unconfigured(comfyui_server):
    live = comfyui_health(comfyui_server.url)
    assert live["status"] == "healthy" and live["version"] == "0.3.75"
    assert live["queue_running"] == 0 and live["queue_pending"] == 0
    assert live["devices"][0]["name"] == "cpu"
    started = time.monotonic()
    dead = comfyui_health("http://127.0.0.1:9", timeout=2)
    assert dead["status"] == "unreachable" and "unreachable" in dead["error"]
    assert time.monotonic() - started < 3
    assert comfyui_health(None)["status"] == "not configured"
    assert comfyui_health("")["status"] == "not configured"


def test_cancel_interrupts_quickly_and_next_job_works(backend, comfyui_server):
    seen = []
    raised_at = []

    def on_step(**_):
        seen.append(time.monotonic())
        if len(seen) == 2:
            raised_at.append(time.monotonic())
            raise Cancel("user pressed stop")

    long = ImageRequest("a long job", width=128, height=128, steps=150, seed=3)
    with pytest.raises(Cancel):
        backend.text_to_image(long, on_step=on_step)
    assert time.monotonic() - raised_at[0] < 8  # interrupt posted, ComfyUI let go of the job
    assert len(seen) == 2
    state = _queue(comfyui_server.url)
    assert state["queue_running"] == [] and state["queue_pending"] == []
    steps = []
    image = backend.text_to_image(ImageRequest("after the cancel", seed=4, **TINY), on_step=lambda **kw: steps.append(1))
    assert image.size == (64, 64) and len(steps) == TINY["steps"]


def test_missing_node_packs_are_named_not_bypassed(backend, comfyui_server):
    with pytest.raises(BackendError) as video:
        backend.text_to_video(VideoRequest("a loop", frames=4, **TINY))
    message = str(video.value)
    assert "AnimateDiff-Evolved" in message and "ADE_UseEvolvedSampling" in message
    assert "ADE_LoadAnimateDiffModel" in message

    reference = Image.new("RGB", (64, 64), "red")
    with pytest.raises(BackendError) as ip:
        backend.text_to_image(ImageRequest("a pose", ip_adapter_image=reference, **TINY))
    message = str(ip.value)
    assert "ComfyUI_IPAdapter_plus" in message and "IPAdapterAdvanced" in message
    assert "IPAdapterModelLoader" in message
    assert _queue(comfyui_server.url)["queue_pending"] == []  # nothing was queued instead


def test_svd_without_a_model_fails_clearly(backend):
    request = ImageToVideoRequest(Image.new("RGB", (64, 64), "blue"), frames=4, **TINY)
    with pytest.raises(BackendError, match="no SVD checkpoint"):
        backend.image_to_video(request)
    named = ComfyUIBackend(backend.url, svd_checkpoint="svd_xt.safetensors")
    try:
        with pytest.raises(BackendError) as refused:
            named.image_to_video(request)
    finally:
        named.close()
    assert "ImageOnlyCheckpointLoader" in str(refused.value) and "svd_xt.safetensors" in str(refused.value)


def test_ip_adapter_through_the_node_pack(comfyui_packs_server):
    steps = []
    with ComfyUIBackend(comfyui_packs_server.url, checkpoint=CHECKPOINT) as engine:
        reference = Image.new("RGB", (64, 64), "green")
        image = engine.text_to_image(ImageRequest("a pose", ip_adapter_image=reference, seed=5, **TINY),
                                     on_step=lambda **kw: steps.append(1))
    assert image.size == (64, 64) and len(steps) == TINY["steps"]


def test_execution_error_carries_comfyui_message(comfyui_packs_server):
    with ComfyUIBackend(comfyui_packs_server.url, checkpoint="zz-animenb-broken.safetensors") as engine:
        with pytest.raises(BackendError) as failed:
            engine.text_to_image(ImageRequest("broken", **TINY))
    message = str(failed.value)
    assert "CheckpointLoaderSimple" in message and "ComfyUI failed in node" in message


@pytest.mark.skipif(importlib.util.find_spec("animenb.phases.character_sheet") is None,
                    reason="animenb.phases.character_sheet is not written yet")
def test_character_sheet_through_comfyui(comfyui_packs_server, tmp_path):
    from animenb.phases.character_sheet import character_sheet

    events = []
    with ComfyUIBackend(comfyui_packs_server.url, checkpoint=CHECKPOINT) as engine:
        result = character_sheet("a girl with red hair", seed=7, steps=2, width=64, height=64, backend=engine,
                                 output_dir=tmp_path, on_progress=events.append, display=None)
    assert (tmp_path / "sheet.png").exists()
    pngs = [path.name for path in (tmp_path / "poses").glob("*.png")]
    skeletons = [name for name in pngs if name.endswith(".openpose.png")]  # each pose's skeleton beside it
    assert len(pngs) == 16 and len(skeletons) == 8 and (tmp_path / "skeletons.png").exists()
    assert result.manifest["backend"]["controlnet_model"] == CONTROLNET
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    assert json.dumps(manifest).count("comfyui") >= 1
    steps = [event.step for event in events if event.step]
    assert steps == sorted(steps) and max(steps) == 16
    assert len(result.images) == 8 if hasattr(result, "images") else True


def test_server_killed_mid_job_fails_promptly(comfyui_factory):
    server = comfyui_factory()
    killed_at = []

    def on_step(**_):
        if not killed_at:
            server.kill()
            killed_at.append(time.monotonic())

    with ComfyUIBackend(server.url, timeout=300) as engine:
        with pytest.raises(BackendError, match="is unreachable") as gone:
            engine.text_to_image(ImageRequest("doomed", width=128, height=128, steps=150), on_step=on_step)
        assert time.monotonic() - killed_at[0] < 10
        assert server.url in str(gone.value)
        started = time.monotonic()
        with pytest.raises(BackendError, match="is unreachable"):
            engine.text_to_image(ImageRequest("after death", **TINY))
        assert time.monotonic() - started < 5
    assert comfyui_health(server.url)["status"] == "unreachable"


def test_concurrent_callers_take_turns(backend):
    results = {}

    def run(seed):
        results[seed] = backend.text_to_image(ImageRequest("turns", seed=seed, **TINY))

    threads = [threading.Thread(target=run, args=(seed,)) for seed in (11, 12)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert sorted(results) == [11, 12] and results[11].tobytes() != results[12].tobytes()


async def test_server_job_on_the_comfyui_backend(comfyui_packs_server, tmp_path, start_live_server):
    """A /generate job with `backend: comfyui` runs the phase notebook against the real ComfyUI."""
    async with start_live_server(tmp_path, comfyui_url=comfyui_packs_server.url) as srv:
        code, health, _ = await srv.request("GET", "/api/anime/health")
        assert health["components"]["comfyui"]["status"] == "healthy"
        code, body, _ = await srv.request("POST", "/api/anime/generate", {
            "prompt": "a girl with red hair", "backend": "comfyui", "steps": 2, "width": 64, "height": 64})
        assert code == 202, body
        for _ in range(600):
            code, status, _ = await srv.request("GET", f"/api/anime/generation/{body['job_id']}/status")
            if status["status"] not in ("queued", "running"):
                break
            await asyncio.sleep(0.2)
        assert status["status"] == "succeeded", status["error"]
        code, manifest, _ = await srv.request("GET", f"/api/anime/outputs/{body['job_id']}/manifest.json")
        assert manifest["backend"]["backend"] == "comfyui" and len(manifest["outputs"]["poses"]) == 8


async def test_server_refuses_comfyui_jobs_without_a_comfyui_server(tmp_path, start_live_server):
    async with start_live_server(tmp_path) as srv:
        code, body, _ = await srv.request("POST", "/api/anime/generate", {"prompt": "x", "backend": "comfyui"})
        assert code == 422 and body["error"]["code"] == "comfyui_not_configured"
        assert body["error"]["field"] == "backend"
