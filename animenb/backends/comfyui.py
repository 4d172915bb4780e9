"""animenb's generation primitives on a running ComfyUI server.

One job is one graph (see `comfyui_graphs`) posted to `POST /prompt` with the client's id and a
`prompt_id` chosen here, then followed on the client's event stream (`comfyui_client`):

    progress {value, max, node, prompt_id}   -> on_step() for the sampler node
    execution_error {...}                     -> BackendError with ComfyUI's message
    execution_interrupted                     -> the job was stopped
    executing {node: null, prompt_id}         -> done: read /history/{id}, fetch images via /view

The public methods are synchronous (phase functions are, and they run in a Jupyter kernel);
`on_step` always runs in the caller's thread. Images come back with ComfyUI's `prompt` chunk
(the API graph) in `.info`, which `animenb.media.save_png` keeps, so an animenb PNG made here
loads back into ComfyUI.

Cancel: when `on_step` raises (or the kernel is interrupted), the job is interrupted
with `POST /interrupt {prompt_id}` (or removed from the queue) and the exception re-raised.
"""

from __future__ import annotations

import json
import logging
import queue
import threading
import time
import uuid
from typing import Any

from PIL import Image

from . import comfyui_graphs as graphs
from .base import (
    MOTION_LORA_UNSUPPORTED,
    Backend,
    BackendError,
    ImageRequest,
    ImageToVideoRequest,
    StepCallback,
    VideoRequest,
)
from .comfyui_client import (
    DEFAULT_URL,
    Closed,
    ComfyUIClient,
    comfyui_health,
    devices,
    drain,
    preview_data_url,
    unreachable,
)

logger = logging.getLogger(__name__)

__all__ = ["ComfyUIBackend", "comfyui_health", "DEFAULT_URL"]


class ComfyUIBackend(Backend):
    """animenb's generation primitives on a ComfyUI server.

    `checkpoint` (an SD 1.5-class file in ComfyUI's models/checkpoints) defaults to the first
    one ComfyUI lists; `svd_checkpoint` to the first listed name containing "svd";
    `motion_model`, `ipadapter_model` and `clip_vision_model` likewise to the first file each
    community loader lists; `controlnet_model` (pose control) to the first ControlNetLoader lists whose
    name contains "openpose", else its first. `timeout` bounds one whole job; `http_timeout` one request.
    """

    name = "comfyui"

    def __init__(
        self,
        url: str = DEFAULT_URL,
        checkpoint: str | None = None,
        timeout: float = 1800.0,
        *,
        svd_checkpoint: str | None = None,
        motion_model: str | None = None,
        ipadapter_model: str | None = None,
        clip_vision_model: str | None = None,
        controlnet_model: str | None = None,
        http_timeout: float = 30.0,
        **_ignored,
    ):
        self.client = ComfyUIClient(url, http_timeout)  # checks `url`
        if not timeout or timeout <= 0:
            raise ValueError(f"`timeout` must be > 0 seconds, got {timeout!r}.")
        if _ignored:
            logger.debug("ComfyUIBackend ignores options %s", sorted(_ignored))
        self.url = self.client.url
        self.checkpoint = checkpoint
        self.svd_checkpoint = svd_checkpoint
        self.motion_model = motion_model
        self.ipadapter_model = ipadapter_model
        self.clip_vision_model = clip_vision_model
        self.controlnet_model = controlnet_model
        self.timeout = float(timeout)
        self.http_timeout = float(http_timeout)
        self._object_info: dict | None = None
        self._embedding_names: list[str] | None = None
        self.last_models: dict = {}
        self._system_stats: dict | None = None
        self._lock = threading.Lock()  # one job at a time per backend

    # ---- the three primitives -------------------------------------------------------------

    def text_to_image(self, request: ImageRequest, on_step: StepCallback | None = None) -> Image.Image:
        if not isinstance(request, ImageRequest):
            raise ValueError(f"`request` must be an ImageRequest, got {type(request).__name__}.")
        ip_adapter = None
        if request.ip_adapter_image is not None:
            ip_adapter = self._ip_adapter_inputs(request.ip_adapter_image)
        controlnet = self._controlnet_inputs(request.control_image) if request.controlled else None
        graph = graphs.text_to_image(
            request,
            checkpoint=self._checkpoint(request.checkpoint),
            ip_adapter=ip_adapter,
            controlnet=controlnet,
            **self._model_inputs(request),
        )
        return self.run_graph(graph, on_step)[0]

    def text_to_video(self, request: VideoRequest, on_step: StepCallback | None = None) -> list[Image.Image]:
        if not isinstance(request, VideoRequest):
            raise ValueError(f"`request` must be a VideoRequest, got {type(request).__name__}.")
        if request.motion_lora is not None:
            raise ValueError(MOTION_LORA_UNSUPPORTED)
        self._require(graphs.ANIMATEDIFF_PACK)
        motion_model = self.motion_model or self._first_choice(
            "ADE_LoadAnimateDiffModel", "model_name", "motion model (models/animatediff_models)"
        )
        ip_adapter = None
        if request.ip_adapter_image is not None:
            ip_adapter = self._ip_adapter_inputs(request.ip_adapter_image)
        graph = graphs.text_to_video(
            request,
            checkpoint=self._checkpoint(request.checkpoint),
            motion_model=motion_model,
            ip_adapter=ip_adapter,
            **self._model_inputs(request),
        )
        return self._frames(self.run_graph(graph, on_step), request.frames)

    def image_to_video(self, request: ImageToVideoRequest, on_step: StepCallback | None = None) -> list[Image.Image]:
        if not isinstance(request, ImageToVideoRequest):
            raise ValueError(f"`request` must be an ImageToVideoRequest, got {type(request).__name__}.")
        missing = [node for node in graphs.SVD_NODES if node not in self.object_info()]
        if missing:
            raise BackendError(
                f"ComfyUI at {self.url} lacks the built-in SVD nodes {', '.join(missing)}; update ComfyUI."
            )
        checkpoint = self.svd_checkpoint or self._svd_checkpoint()
        image_name = self.upload_image(request.image)
        graph = graphs.image_to_video(request, checkpoint=checkpoint, image_name=image_name)
        return self._frames(self.run_graph(graph, on_step), request.frames)

    def describe(self) -> dict:
        info: dict[str, Any] = {
            "backend": "comfyui",
            "url": self.url,
            "checkpoint": self.checkpoint,
            "svd_checkpoint": self.svd_checkpoint,
            "controlnet_model": self.controlnet_model,
            "comfyui_version": None,
            "devices": [],
        }
        try:
            if self._system_stats is None:
                self._system_stats = self.client.get_json("/system_stats")
            if info["checkpoint"] is None:
                info["checkpoint"] = self._checkpoint()
        except BackendError as exc:
            info["error"] = str(exc)
        if self._system_stats is not None:
            info["comfyui_version"] = self._system_stats.get("system", {}).get("comfyui_version")
            info["devices"] = devices(self._system_stats)
        return info

    def close(self) -> None:
        self.client.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        self.close()

    # ---- server state ---------------------------------------------------------------------

    def object_info(self, refresh: bool = False) -> dict:
        """ComfyUI's node catalogue (`GET /object_info`), fetched once and cached."""
        if self._object_info is None or refresh:
            self._object_info = self.client.get_json("/object_info")
        return self._object_info

    def health(self) -> dict:
        return comfyui_health(self.url, timeout=min(self.http_timeout, 5.0))

    def interrupt(self, prompt_id: str | None = None) -> None:
        """Stop the running job (`prompt_id` only if it is the one running) and drop it from the queue."""
        self.client.interrupt(prompt_id)

    def upload_image(self, image: Image.Image) -> str:
        """Upload `image` to ComfyUI's input folder; returns the name a LoadImage node takes."""
        return self.client.upload_image(image)

    # ---- running one graph ----------------------------------------------------------------

    def run_graph(self, graph: graphs.Graph, on_step: StepCallback | None = None) -> list[Image.Image]:
        """Queue `graph`, relay its sampler's progress to `on_step`, return the output node's images.

        Each image carries the graph as ComfyUI's `prompt` text (in `.info`): ComfyUI writes it into
        the PNGs it saves, and it is set here too for a server started with `--disable-metadata`.
        """
        with self._lock:
            prompt_id = uuid.uuid4().hex
            events = self.client.events()
            drain(events)  # broadcasts and leftovers of earlier jobs; a close sentinel is kept
            self._submit(graph.nodes, prompt_id)
            try:
                self._follow(events, prompt_id, graph.sampler, on_step)
            except BackendError:
                raise
            except BaseException:
                # on_step raised (cancel) or the kernel was interrupted: stop ComfyUI too.
                self._cancel(events, prompt_id)
                raise
            images = self._fetch_outputs(prompt_id, graph.output)
        prompt = json.dumps(graph.nodes)
        for image in images:
            image.info.setdefault("prompt", prompt)
        return images

    def _submit(self, nodes: dict, prompt_id: str) -> None:
        status, answer = self.client.submit(nodes, prompt_id)
        if status == 200:
            return
        if not isinstance(answer, dict):
            raise BackendError(f"ComfyUI at {self.url} refused the graph ({status}): {answer[:300]!r}")
        raise BackendError(_validation_message(answer, nodes))

    def _follow(self, events: queue.Queue, prompt_id: str, sampler: str, on_step: StepCallback | None) -> None:
        deadline = time.monotonic() + self.timeout
        last_value = 0
        preview = None
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                self._cancel(events, prompt_id)
                raise BackendError(
                    f"ComfyUI job {prompt_id} did not finish within {self.timeout:.0f}s "
                    f"at {self.url}; it was interrupted."
                )
            try:
                message = events.get(timeout=min(remaining, 1.0))
            except queue.Empty:
                continue
            if isinstance(message, Closed):
                raise unreachable(self.url, f"the WebSocket closed during job {prompt_id} ({message.reason})")
            if isinstance(message, bytes):
                preview = preview_data_url(message) or preview
                continue
            kind, data = message.get("type"), message.get("data") or {}
            if data.get("prompt_id") not in (None, prompt_id):
                continue
            if kind == "progress" and data.get("node") == sampler:
                value = int(data.get("value", 0))
                if value < last_value:  # a second sampling pass restarts the count
                    last_value = 0
                for _ in range(value - last_value):
                    if on_step is not None and preview is not None:
                        on_step(preview=preview)
                    elif on_step is not None:
                        on_step()
                    preview = None
                last_value = value
            elif kind == "executing" and data.get("node") is None and data.get("prompt_id") == prompt_id:
                return
            elif kind == "execution_error" and data.get("prompt_id") == prompt_id:
                raise BackendError(
                    f"ComfyUI failed in node {data.get('node_id')} ({data.get('node_type')}): "
                    f"{data.get('exception_type', 'error')}: {str(data.get('exception_message', '')).strip()}"
                )
            elif kind == "execution_interrupted" and data.get("prompt_id") == prompt_id:
                raise BackendError(
                    f"ComfyUI job {prompt_id} was interrupted at {self.url} "
                    f"(node {data.get('node_id')}), not by this backend."
                )

    def _cancel(self, events: queue.Queue, prompt_id: str, wait: float = 10.0) -> None:
        """Interrupt `prompt_id` and wait (at most `wait` s) until ComfyUI has let go of it."""
        try:
            self.interrupt(prompt_id)
        except BackendError as exc:
            logger.warning("could not interrupt ComfyUI job %s: %s", prompt_id, exc)
            return
        deadline = time.monotonic() + wait
        while (remaining := deadline - time.monotonic()) > 0:
            try:
                message = events.get(timeout=remaining)
            except queue.Empty:
                break
            if isinstance(message, Closed):
                return
            if isinstance(message, bytes):
                continue
            kind, data = message.get("type"), message.get("data") or {}
            # `executing {node: null}` follows execution_interrupted once ComfyUI has dropped the job.
            if kind == "executing" and data.get("node") is None and data.get("prompt_id") == prompt_id:
                return
            if kind == "status" and not self.client.queue_has(prompt_id):
                return  # it was still pending and has been deleted

    def _fetch_outputs(self, prompt_id: str, output_node: str) -> list[Image.Image]:
        history = self.client.history(prompt_id)
        if not history:
            raise BackendError(f"ComfyUI at {self.url} has no history for finished job {prompt_id}.")
        images = history.get("outputs", {}).get(output_node, {}).get("images", [])
        if not images:
            raise BackendError(f"ComfyUI job {prompt_id} produced no images at node {output_node}.")
        return [self.client.view(entry) for entry in images]

    # ---- model and node-pack resolution ------------------------------------------------

    def _choices(self, node: str, field: str) -> list[str]:
        spec = self.object_info().get(node, {}).get("input", {}).get("required", {}).get(field)
        if not spec:
            return []
        options = spec[0]
        if isinstance(options, str) and len(spec) > 1:  # the V3 schema: ("COMBO", {"options": [...]})
            options = spec[1].get("options", [])
        return list(options) if isinstance(options, list) else []

    def _first_choice(self, node: str, field: str, what: str) -> str:
        choices = self._choices(node, field)
        if not choices:
            raise BackendError(
                f"ComfyUI at {self.url} lists no {what} for {node}.{field}; add one "
                "(or pass it to ComfyUIBackend) and retry."
            )
        return choices[0]

    def _checkpoint(self, requested: str | None = None) -> str:
        """The request's checkpoint, else the backend's, else the first ComfyUI lists; a name ComfyUI
        does not list is refused with the list."""
        if requested is not None:
            return self._listed("CheckpointLoaderSimple", "ckpt_name", requested, "checkpoint")
        if self.checkpoint is None:
            self.checkpoint = self._first_choice(
                "CheckpointLoaderSimple", "ckpt_name", "checkpoint (models/checkpoints)"
            )
        else:
            self.checkpoint = self._listed("CheckpointLoaderSimple", "ckpt_name", self.checkpoint, "checkpoint")
        return self.checkpoint

    def _listed(self, node: str, field: str, name: str, what: str) -> str:
        """ComfyUI's own spelling of `name` (with or without its file suffix) among `node.field`'s choices."""
        choices = self._choices(node, field)
        if name not in choices:  # the list may predate a file added since: look once more
            choices = self._choices_fresh(node, field)
        for choice in choices:
            if name == choice or name == choice.rsplit(".", 1)[0]:
                return choice
        raise ValueError(
            f"ComfyUI at {self.url} has no {what} named {name!r}; it lists: {', '.join(choices) or 'none'}."
        )

    def _choices_fresh(self, node: str, field: str) -> list[str]:
        self.object_info(refresh=True)
        return self._choices(node, field)

    def _model_inputs(self, request) -> dict:
        """LoRAs (as ComfyUI names them), clip skip and the embeddings ComfyUI has, for the graph; what was
        used is kept in `self.last_models` for PNG info."""
        loras = [(self._listed("LoraLoader", "lora_name", name, "LoRA"), weight) for name, weight in request.loras]
        text = f"{request.prompt}\n{request.negative_prompt}"
        named = [
            e for e in self._embeddings() if f"embedding:{e}" in text or graphs.with_embedding_syntax(text, [e]) != text
        ]
        self.last_models = {
            "loras": [{"name": n, "weight": w, "hash": _local_hash("loras", n)} for n, w in request.loras],
            "embeddings": [{"name": e, "hash": _local_hash("embeddings", e)} for e in named],
            "clip_skip": request.clip_skip,
            "checkpoint": request.checkpoint,
        }
        return {"loras": loras, "clip_skip": request.clip_skip, "embeddings": named}

    def _embeddings(self) -> list[str]:
        """The embeddings ComfyUI has (`GET /embeddings`), fetched once."""
        if self._embedding_names is None:
            self._embedding_names = list(self.client.get_json("/embeddings") or [])
        return self._embedding_names

    def _svd_checkpoint(self) -> str:
        choices = [name for name in self._choices("ImageOnlyCheckpointLoader", "ckpt_name") if "svd" in name.lower()]
        if not choices:
            raise BackendError(
                f"ComfyUI at {self.url} has no SVD checkpoint: put one whose name contains 'svd' "
                "in models/checkpoints, or pass `svd_checkpoint=`."
            )
        self.svd_checkpoint = choices[0]
        return self.svd_checkpoint

    def _require(self, pack: graphs.NodePack) -> None:
        missing = pack.missing(self.object_info())
        if missing:  # the cache may predate a restart with the pack installed: look again once
            missing = pack.missing(self.object_info(refresh=True))
        if missing:
            raise BackendError(
                f"{pack.feature} on ComfyUI needs the {pack.name} node pack: "
                f"ComfyUI at {self.url} lacks the nodes {', '.join(missing)}. Install the pack "
                "into ComfyUI's custom_nodes and restart it, or use backend='diffusers'."
            )

    def _ip_adapter_inputs(self, image: Image.Image) -> dict:
        self._require(graphs.IPADAPTER_PACK)
        ipadapter_model = self.ipadapter_model or self._first_choice(
            "IPAdapterModelLoader", "ipadapter_file", "IP-Adapter model (models/ipadapter)"
        )
        clip_vision_model = self.clip_vision_model or self._first_choice(
            "CLIPVisionLoader", "clip_name", "CLIP vision model (models/clip_vision)"
        )
        return {
            "image_name": self.upload_image(image),
            "ipadapter_model": ipadapter_model,
            "clip_vision_model": clip_vision_model,
        }

    def _controlnet_inputs(self, image: Image.Image) -> dict:
        missing = [node for node in graphs.CONTROLNET_NODES if node not in self.object_info()]
        if missing:
            raise BackendError(
                f"ComfyUI at {self.url} lacks the built-in ControlNet nodes {', '.join(missing)}; update ComfyUI."
            )
        if self.controlnet_model is None:
            choices = self._choices("ControlNetLoader", "control_net_name")
            if not choices:
                raise BackendError(
                    f"ComfyUI at {self.url} lists no ControlNet (models/controlnet) for pose control: "
                    "add an OpenPose ControlNet (e.g. control_v11p_sd15_openpose), pass "
                    "`controlnet_model=`, or set pose_strength=0."
                )
            self.controlnet_model = next((name for name in choices if "openpose" in name.lower()), choices[0])
        return {"image_name": self.upload_image(image), "controlnet_model": self.controlnet_model}

    def _frames(self, images: list[Image.Image], expected: int) -> list[Image.Image]:
        if len(images) != expected:
            raise BackendError(f"ComfyUI returned {len(images)} frames, expected {expected}.")
        return images


def _local_hash(kind: str, name: str) -> str:
    """A1111's short hash of the same file in animenb's folder (ComfyUI's API serves no hashes), else "unknown"."""
    from ..model_files import find, short_hash

    try:
        return short_hash(find(kind, name))
    except ValueError:
        return "unknown"


def _validation_message(answer: dict, nodes: dict) -> str:
    """ComfyUI's 400 answer to /prompt (`error` + per-node `node_errors`) as one line."""
    error = answer.get("error") or {}
    parts = [f"ComfyUI refused the graph: {error.get('message', 'invalid prompt')}"]
    if error.get("details"):
        parts.append(str(error["details"]))
    for node_id, node_error in (answer.get("node_errors") or {}).items():
        class_type = node_error.get("class_type") or nodes.get(node_id, {}).get("class_type")
        for item in node_error.get("errors", []):
            parts.append(f"node {node_id} ({class_type}): {item.get('message')}: {item.get('details')}")
    return "; ".join(parts)
