"""Drive a running ComfyUI server over its HTTP + WebSocket API.

One job is one graph (see `comfyui_graphs`) posted to `POST /prompt` with this backend's
`client_id` and a `prompt_id` chosen here, then followed on `/ws?clientId=`:

    progress {value, max, node, prompt_id}   -> on_step() for the sampler node
    execution_error {...}                     -> BackendError with ComfyUI's message
    execution_interrupted                     -> the job was stopped
    executing {node: null, prompt_id}         -> done: read /history/{id}, fetch images via /view

The public methods are synchronous (phase functions are, and they run in a Jupyter
kernel whose thread may already run an event loop): the WebSocket is read by a Tornado
client on a private event loop in a daemon thread, and its messages reach the caller's
thread through a queue, so `on_step` always runs in the caller's thread. HTTP calls use
urllib from the caller's thread. Every wait has a timeout; a closed socket or refused
connection becomes `BackendError("ComfyUI at URL is unreachable: ...")` at once.

Cancel: when `on_step` raises (or the kernel is interrupted), the job is interrupted
with `POST /interrupt {prompt_id}` (or removed from the queue) and the exception re-raised.
"""
from __future__ import annotations

import asyncio
import base64
import hashlib
import io
import json
import logging
import queue
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from typing import Any

from PIL import Image

from . import comfyui_graphs as graphs
from .base import (Backend, BackendError, ImageRequest, ImageToVideoRequest, StepCallback,
                   VideoRequest)

logger = logging.getLogger(__name__)

DEFAULT_URL = "http://127.0.0.1:8188"
# Binary WS frames: 4-byte big-endian event type, then (for previews) a 4-byte format and the image.
_PREVIEW_IMAGE = 1
_PREVIEW_FORMATS = {1: "image/jpeg", 2: "image/png"}


class _Closed:
    """Queue sentinel: the WebSocket closed (server gone or restarted)."""

    def __init__(self, reason: str):
        self.reason = reason


class _EventSocket:
    """ComfyUI's /ws for one client id, read by Tornado on a private event loop thread."""

    def __init__(self, ws_url: str):
        self.ws_url = ws_url
        self.messages: queue.Queue = queue.Queue()
        self.closed = False
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="animenb-comfyui-ws", daemon=True)
        self._thread.start()
        self._conn = None

    def connect(self, timeout: float) -> None:
        future = asyncio.run_coroutine_threadsafe(self._connect(timeout), self._loop)
        try:
            future.result(timeout + 1.0)
        except BaseException:
            future.cancel()
            self.close()
            raise

    async def _connect(self, timeout: float) -> None:
        from tornado.websocket import websocket_connect

        self._conn = await asyncio.wait_for(
            websocket_connect(self.ws_url, connect_timeout=timeout, max_message_size=256 * 1024 * 1024),
            timeout)
        self._loop.create_task(self._read())

    async def _read(self) -> None:
        conn = self._conn
        try:
            while True:
                message = await conn.read_message()
                if message is None:
                    reason = conn.close_reason or f"WebSocket closed (code {conn.close_code})"
                    break
                if isinstance(message, bytes):
                    self.messages.put(message)
                else:
                    self.messages.put(json.loads(message))
        except Exception as exc:  # noqa: BLE001 - any read failure means the stream is gone
            reason = f"{type(exc).__name__}: {exc}"
        self.closed = True
        self.messages.put(_Closed(reason))

    def close(self) -> None:
        self.closed = True
        if self._loop.is_closed():
            return

        def shutdown():
            if self._conn is not None:
                self._conn.close()
            self._loop.stop()

        self._loop.call_soon_threadsafe(shutdown)
        self._thread.join(timeout=2.0)
        if not self._thread.is_alive():
            self._loop.close()


def _unreachable(url: str, exc: BaseException | str) -> BackendError:
    reason = exc if isinstance(exc, str) else getattr(exc, "reason", None) or exc
    return BackendError(f"ComfyUI at {url} is unreachable: {reason}")


def _http(url: str, method: str, path: str, *, data: bytes | None = None, content_type: str | None = None,
          timeout: float) -> tuple[int, bytes]:
    """One HTTP request; (status, body) for any HTTP answer, BackendError when nothing answers."""
    request = urllib.request.Request(url + path, data=data, method=method)
    if content_type:
        request.add_header("Content-Type", content_type)
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()
    except (urllib.error.URLError, OSError) as exc:
        raise _unreachable(url, exc) from None


def _get_json(url: str, path: str, timeout: float) -> Any:
    status, body = _http(url, "GET", path, timeout=timeout)
    if status != 200:
        raise BackendError(f"ComfyUI at {url} answered {status} to GET {path}: {body[:300]!r}")
    return json.loads(body)


def comfyui_health(url: str | None, timeout: float = 2.0) -> dict:
    """`components.comfyui` for the server's /health: status, queue sizes, version and devices."""
    health = {"status": "not configured", "url": url or None, "queue_running": None, "queue_pending": None,
              "version": None, "devices": []}
    if not url:
        return health
    url = url.rstrip("/")
    try:
        stats = _get_json(url, "/system_stats", timeout)
        queue_state = _get_json(url, "/queue", timeout)
    except (BackendError, ValueError) as exc:
        return {**health, "status": "unreachable", "error": str(exc)}
    return {**health, "status": "healthy",
            "queue_running": len(queue_state.get("queue_running", [])),
            "queue_pending": len(queue_state.get("queue_pending", [])),
            "version": stats.get("system", {}).get("comfyui_version"),
            "devices": _devices(stats)}


def _devices(stats: dict) -> list[dict]:
    return [{key: device.get(key) for key in ("name", "type", "vram_total", "vram_free")}
            for device in stats.get("devices", [])]


class ComfyUIBackend(Backend):
    """animenb's generation primitives on a ComfyUI server.

    `checkpoint` (an SD 1.5-class file in ComfyUI's models/checkpoints) defaults to the first
    one ComfyUI lists; `svd_checkpoint` to the first listed name containing "svd";
    `motion_model`, `ipadapter_model` and `clip_vision_model` likewise to the first file each
    community loader lists. `timeout` bounds one whole job; `http_timeout` one request.
    """

    name = "comfyui"

    def __init__(self, url: str = DEFAULT_URL, checkpoint: str | None = None, timeout: float = 1800.0, *,
                 svd_checkpoint: str | None = None, motion_model: str | None = None,
                 ipadapter_model: str | None = None, clip_vision_model: str | None = None,
                 http_timeout: float = 30.0, **_ignored):
        if not isinstance(url, str) or not url.startswith(("http://", "https://")):
            raise ValueError(f"`url` must be an http(s) URL, got {url!r}.")
        if not timeout or timeout <= 0:
            raise ValueError(f"`timeout` must be > 0 seconds, got {timeout!r}.")
        if _ignored:
            logger.debug("ComfyUIBackend ignores options %s", sorted(_ignored))
        self.url = url.rstrip("/")
        self.checkpoint = checkpoint
        self.svd_checkpoint = svd_checkpoint
        self.motion_model = motion_model
        self.ipadapter_model = ipadapter_model
        self.clip_vision_model = clip_vision_model
        self.timeout = float(timeout)
        self.http_timeout = float(http_timeout)
        self.client_id = uuid.uuid4().hex
        self._socket: _EventSocket | None = None
        self._object_info: dict | None = None
        self._system_stats: dict | None = None
        self._lock = threading.Lock()  # one job at a time per backend

    # ---- the three primitives -------------------------------------------------------------

    def text_to_image(self, request: ImageRequest, on_step: StepCallback | None = None) -> Image.Image:
        if not isinstance(request, ImageRequest):
            raise ValueError(f"`request` must be an ImageRequest, got {type(request).__name__}.")
        ip_adapter = None
        if request.ip_adapter_image is not None:
            ip_adapter = self._ip_adapter_inputs(request.ip_adapter_image)
        graph = graphs.text_to_image(request, checkpoint=self._checkpoint(), ip_adapter=ip_adapter)
        return self.run_graph(graph, on_step)[0]

    def text_to_video(self, request: VideoRequest, on_step: StepCallback | None = None) -> list[Image.Image]:
        if not isinstance(request, VideoRequest):
            raise ValueError(f"`request` must be a VideoRequest, got {type(request).__name__}.")
        self._require(graphs.ANIMATEDIFF_PACK)
        motion_model = self.motion_model or self._first_choice("ADE_LoadAnimateDiffModel", "model_name",
                                                                 "motion model (models/animatediff_models)")
        ip_adapter = None
        if request.ip_adapter_image is not None:
            ip_adapter = self._ip_adapter_inputs(request.ip_adapter_image)
        graph = graphs.text_to_video(request, checkpoint=self._checkpoint(), motion_model=motion_model,
                                     ip_adapter=ip_adapter)
        return self._frames(self.run_graph(graph, on_step), request.frames)

    def image_to_video(self, request: ImageToVideoRequest,
                       on_step: StepCallback | None = None) -> list[Image.Image]:
        if not isinstance(request, ImageToVideoRequest):
            raise ValueError(f"`request` must be an ImageToVideoRequest, got {type(request).__name__}.")
        missing = [node for node in graphs.SVD_NODES if node not in self.object_info()]
        if missing:
            raise BackendError(f"ComfyUI at {self.url} lacks the built-in SVD nodes {', '.join(missing)}; "
                               "update ComfyUI.")
        checkpoint = self.svd_checkpoint or self._svd_checkpoint()
        image_name = self.upload_image(request.image)
        graph = graphs.image_to_video(request, checkpoint=checkpoint, image_name=image_name)
        return self._frames(self.run_graph(graph, on_step), request.frames)

    def describe(self) -> dict:
        info = {"backend": "comfyui", "url": self.url, "checkpoint": self.checkpoint,
                "comfyui_version": None, "devices": []}
        try:
            if self._system_stats is None:
                self._system_stats = _get_json(self.url, "/system_stats", self.http_timeout)
            if info["checkpoint"] is None:
                info["checkpoint"] = self._checkpoint()
        except BackendError as exc:
            info["error"] = str(exc)
        if self._system_stats is not None:
            info["comfyui_version"] = self._system_stats.get("system", {}).get("comfyui_version")
            info["devices"] = _devices(self._system_stats)
        return info

    def close(self) -> None:
        if self._socket is not None:
            self._socket.close()
            self._socket = None

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        self.close()

    # ---- server state ---------------------------------------------------------------------

    def object_info(self, refresh: bool = False) -> dict:
        """ComfyUI's node catalogue (`GET /object_info`), fetched once and cached."""
        if self._object_info is None or refresh:
            self._object_info = _get_json(self.url, "/object_info", self.http_timeout)
        return self._object_info

    def health(self) -> dict:
        return comfyui_health(self.url, timeout=min(self.http_timeout, 5.0))

    def interrupt(self, prompt_id: str | None = None) -> None:
        """Stop the running job (`prompt_id` only if it is the one running) and drop it from the queue."""
        body = {"prompt_id": prompt_id} if prompt_id else {}
        _http(self.url, "POST", "/interrupt", data=json.dumps(body).encode(),
              content_type="application/json", timeout=self.http_timeout)
        if prompt_id:
            _http(self.url, "POST", "/queue", data=json.dumps({"delete": [prompt_id]}).encode(),
                  content_type="application/json", timeout=self.http_timeout)

    def upload_image(self, image: Image.Image) -> str:
        """Upload `image` as PNG to ComfyUI's input folder (`POST /upload/image`); returns its name.

        The name is the content hash, so uploading the same reference twice stores it once.
        """
        buffer = io.BytesIO()
        image.convert("RGB").save(buffer, format="PNG")
        png = buffer.getvalue()
        name = f"animenb-{hashlib.sha256(png).hexdigest()[:24]}.png"
        boundary = uuid.uuid4().hex
        parts = []
        for field, value in (("type", "input"), ("overwrite", "true")):
            parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="{field}"\r\n\r\n{value}\r\n'
                         .encode())
        parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="image"; filename="{name}"\r\n'
                     f"Content-Type: image/png\r\n\r\n".encode() + png + b"\r\n")
        parts.append(f"--{boundary}--\r\n".encode())
        status, body = _http(self.url, "POST", "/upload/image", data=b"".join(parts),
                             content_type=f"multipart/form-data; boundary={boundary}", timeout=self.http_timeout)
        if status != 200:
            raise BackendError(f"ComfyUI at {self.url} refused the image upload ({status}): {body[:300]!r}")
        answer = json.loads(body)
        return f"{answer['subfolder']}/{answer['name']}" if answer.get("subfolder") else answer["name"]

    # ---- running one graph ----------------------------------------------------------------

    def run_graph(self, graph: graphs.Graph, on_step: StepCallback | None = None) -> list[Image.Image]:
        """Queue `graph`, relay its sampler's progress to `on_step`, return the output node's images."""
        with self._lock:
            prompt_id = uuid.uuid4().hex
            events = self._events()
            _drain(events)  # broadcasts and leftovers of earlier jobs; a close sentinel is kept
            self._submit(graph.nodes, prompt_id)
            try:
                self._follow(events, prompt_id, graph.sampler, on_step)
            except BackendError:
                raise
            except BaseException:
                # on_step raised (cancel) or the kernel was interrupted: stop ComfyUI too.
                self._cancel(events, prompt_id)
                raise
            return self._fetch_outputs(prompt_id, graph.output)

    def _events(self) -> queue.Queue:
        if self._socket is None or self._socket.closed:
            if self._socket is not None:
                self._socket.close()
            ws_url = self.url.replace("http", "ws", 1) + "/ws?clientId=" + self.client_id
            socket = _EventSocket(ws_url)
            try:
                socket.connect(self.http_timeout)
            except Exception as exc:  # noqa: BLE001 - refused, reset, timed out, bad handshake
                raise _unreachable(self.url, f"{type(exc).__name__}: {exc}") from None
            self._socket = socket
        return self._socket.messages

    def _submit(self, nodes: dict, prompt_id: str) -> None:
        payload = json.dumps({"prompt": nodes, "client_id": self.client_id, "prompt_id": prompt_id}).encode()
        status, body = _http(self.url, "POST", "/prompt", data=payload, content_type="application/json",
                             timeout=self.http_timeout)
        if status == 200:
            return
        try:
            answer = json.loads(body)
        except ValueError:
            raise BackendError(f"ComfyUI at {self.url} refused the graph ({status}): {body[:300]!r}") from None
        raise BackendError(_validation_message(answer, nodes))

    def _follow(self, events: queue.Queue, prompt_id: str, sampler: str, on_step: StepCallback | None) -> None:
        deadline = time.monotonic() + self.timeout
        last_value = 0
        preview = None
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                self._cancel(events, prompt_id)
                raise BackendError(f"ComfyUI job {prompt_id} did not finish within {self.timeout:.0f}s "
                                   f"at {self.url}; it was interrupted.")
            try:
                message = events.get(timeout=min(remaining, 1.0))
            except queue.Empty:
                continue
            if isinstance(message, _Closed):
                raise _unreachable(self.url, f"the WebSocket closed during job {prompt_id} ({message.reason})")
            if isinstance(message, bytes):
                preview = _preview_data_url(message) or preview
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
                    f"{data.get('exception_type', 'error')}: {str(data.get('exception_message', '')).strip()}")
            elif kind == "execution_interrupted" and data.get("prompt_id") == prompt_id:
                raise BackendError(f"ComfyUI job {prompt_id} was interrupted at {self.url} "
                                   f"(node {data.get('node_id')}), not by this backend.")

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
            if isinstance(message, _Closed):
                return
            if isinstance(message, bytes):
                continue
            kind, data = message.get("type"), message.get("data") or {}
            # `executing {node: null}` follows execution_interrupted once ComfyUI has dropped the job.
            if kind == "executing" and data.get("node") is None and data.get("prompt_id") == prompt_id:
                return
            if kind == "status" and not _queue_has(self.url, prompt_id, self.http_timeout):
                return  # it was still pending and has been deleted

    def _fetch_outputs(self, prompt_id: str, output_node: str) -> list[Image.Image]:
        history = _get_json(self.url, f"/history/{prompt_id}", self.http_timeout).get(prompt_id)
        if not history:
            raise BackendError(f"ComfyUI at {self.url} has no history for finished job {prompt_id}.")
        images = history.get("outputs", {}).get(output_node, {}).get("images", [])
        if not images:
            raise BackendError(f"ComfyUI job {prompt_id} produced no images at node {output_node}.")
        result = []
        for entry in images:
            query = urllib.parse.urlencode({"filename": entry["filename"], "subfolder": entry.get("subfolder", ""),
                                            "type": entry.get("type", "output")})
            status, body = _http(self.url, "GET", f"/view?{query}", timeout=self.http_timeout)
            if status != 200:
                raise BackendError(f"ComfyUI at {self.url} answered {status} to /view for {entry['filename']}.")
            image = Image.open(io.BytesIO(body))
            image.load()
            result.append(image)
        return result

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
            raise BackendError(f"ComfyUI at {self.url} lists no {what} for {node}.{field}; add one "
                               "(or pass it to ComfyUIBackend) and retry.")
        return choices[0]

    def _checkpoint(self) -> str:
        if self.checkpoint is None:
            self.checkpoint = self._first_choice("CheckpointLoaderSimple", "ckpt_name",
                                                 "checkpoint (models/checkpoints)")
        return self.checkpoint

    def _svd_checkpoint(self) -> str:
        choices = [name for name in self._choices("ImageOnlyCheckpointLoader", "ckpt_name") if "svd" in name.lower()]
        if not choices:
            raise BackendError(f"ComfyUI at {self.url} has no SVD checkpoint: put one whose name contains 'svd' "
                               "in models/checkpoints, or pass `svd_checkpoint=`.")
        self.svd_checkpoint = choices[0]
        return self.svd_checkpoint

    def _require(self, pack: graphs.NodePack) -> None:
        missing = pack.missing(self.object_info())
        if missing:  # the cache may predate a restart with the pack installed: look again once
            missing = pack.missing(self.object_info(refresh=True))
        if missing:
            raise BackendError(f"{pack.feature} on ComfyUI needs the {pack.name} node pack: "
                               f"ComfyUI at {self.url} lacks the nodes {', '.join(missing)}. Install the pack "
                               "into ComfyUI's custom_nodes and restart it, or use backend='diffusers'.")

    def _ip_adapter_inputs(self, image: Image.Image) -> dict:
        self._require(graphs.IPADAPTER_PACK)
        ipadapter_model = self.ipadapter_model or self._first_choice("IPAdapterModelLoader", "ipadapter_file",
                                                                     "IP-Adapter model (models/ipadapter)")
        clip_vision_model = self.clip_vision_model or self._first_choice("CLIPVisionLoader", "clip_name",
                                                                         "CLIP vision model (models/clip_vision)")
        return {"image_name": self.upload_image(image), "ipadapter_model": ipadapter_model,
                "clip_vision_model": clip_vision_model}

    def _frames(self, images: list[Image.Image], expected: int) -> list[Image.Image]:
        if len(images) != expected:
            raise BackendError(f"ComfyUI returned {len(images)} frames, expected {expected}.")
        return images


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


def _drain(events: queue.Queue) -> None:
    closed = None
    while True:
        try:
            message = events.get_nowait()
        except queue.Empty:
            break
        if isinstance(message, _Closed):
            closed = message
    if closed is not None:
        events.put(closed)


def _queue_has(url: str, prompt_id: str, timeout: float) -> bool:
    try:
        state = _get_json(url, "/queue", timeout)
    except BackendError:
        return False
    return any(item[1] == prompt_id for key in ("queue_running", "queue_pending") for item in state.get(key, []))


def _preview_data_url(frame: bytes) -> str | None:
    """A binary WS frame carrying a sampler preview -> `data:image/...;base64,...` (else None)."""
    if len(frame) < 8 or int.from_bytes(frame[:4], "big") != _PREVIEW_IMAGE:
        return None
    mime = _PREVIEW_FORMATS.get(int.from_bytes(frame[4:8], "big"))
    if mime is None:
        return None
    return f"data:{mime};base64,{base64.b64encode(frame[8:]).decode()}"
