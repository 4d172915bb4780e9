"""Transport to a ComfyUI server: its HTTP endpoints (urllib) and its /ws event stream.

No generation logic lives here (graphs: `comfyui_graphs`; jobs, progress, cancel: `comfyui`).
HTTP calls run in the caller's thread. The WebSocket is read by a Tornado client on a private
event loop in a daemon thread (the caller may be a Jupyter kernel whose thread already runs a
loop), and its messages reach the caller through a queue: dicts for JSON messages, bytes for
binary frames (previews), and a `Closed` sentinel when the socket goes away. Every call has a
timeout; a refused connection or closed socket becomes `BackendError("ComfyUI at URL is
unreachable: ...")` at once.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import io
import json
import queue
import threading
import urllib.error
import urllib.parse
import urllib.request
import uuid
from typing import Any

from PIL import Image

from .base import BackendError

DEFAULT_URL = "http://127.0.0.1:8188"
# Binary WS frames: 4-byte big-endian event type, then (for previews) a 4-byte format and the image.
_PREVIEW_IMAGE = 1
_PREVIEW_FORMATS = {1: "image/jpeg", 2: "image/png"}


class Closed:
    """Queue sentinel: the WebSocket closed (server gone or restarted)."""

    def __init__(self, reason: str):
        self.reason = reason


class EventSocket:
    """ComfyUI's /ws for one client id, read by Tornado on a private event loop thread."""

    def __init__(self, ws_url: str):
        self.ws_url = ws_url
        self.messages: queue.Queue = queue.Queue()
        self.closed = False
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="animenb-comfyui-ws", daemon=True)
        self._thread.start()
        self._conn: Any = None  # tornado's WebSocketClientConnection, once connected

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
            websocket_connect(self.ws_url, connect_timeout=timeout, max_message_size=256 * 1024 * 1024), timeout
        )
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
        self.messages.put(Closed(reason))

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


def unreachable(url: str, exc: BaseException | str) -> BackendError:
    reason = exc if isinstance(exc, str) else getattr(exc, "reason", None) or exc
    return BackendError(f"ComfyUI at {url} is unreachable: {reason}")


def http(
    url: str, method: str, path: str, *, data: bytes | None = None, content_type: str | None = None, timeout: float
) -> tuple[int, bytes]:
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
        raise unreachable(url, exc) from None


def get_json(url: str, path: str, timeout: float) -> Any:
    status, body = http(url, "GET", path, timeout=timeout)
    if status != 200:
        raise BackendError(f"ComfyUI at {url} answered {status} to GET {path}: {body[:300]!r}")
    return json.loads(body)


def comfyui_health(url: str | None, timeout: float = 2.0) -> dict:
    """`components.comfyui` for the server's /health: status, queue sizes, version and devices."""
    health: dict[str, Any] = {
        "status": "not configured",
        "url": url or None,
        "queue_running": None,
        "queue_pending": None,
        "version": None,
        "devices": [],
    }
    if not url:
        return health
    url = url.rstrip("/")
    try:
        stats = get_json(url, "/system_stats", timeout)
        queue_state = get_json(url, "/queue", timeout)
    except (BackendError, ValueError) as exc:
        return {**health, "status": "unreachable", "error": str(exc)}
    return {
        **health,
        "status": "healthy",
        "queue_running": len(queue_state.get("queue_running", [])),
        "queue_pending": len(queue_state.get("queue_pending", [])),
        "version": stats.get("system", {}).get("comfyui_version"),
        "devices": devices(stats),
    }


def devices(stats: dict) -> list[dict]:
    return [
        {key: device.get(key) for key in ("name", "type", "vram_total", "vram_free")}
        for device in stats.get("devices", [])
    ]


def preview_data_url(frame: bytes) -> str | None:
    """A binary WS frame carrying a sampler preview -> `data:image/...;base64,...` (else None)."""
    if len(frame) < 8 or int.from_bytes(frame[:4], "big") != _PREVIEW_IMAGE:
        return None
    mime = _PREVIEW_FORMATS.get(int.from_bytes(frame[4:8], "big"))
    if mime is None:
        return None
    return f"data:{mime};base64,{base64.b64encode(frame[8:]).decode()}"


def drain(events: queue.Queue) -> None:
    """Drop queued messages (broadcasts, an earlier job's leftovers); a close sentinel is kept."""
    closed = None
    while True:
        try:
            message = events.get_nowait()
        except queue.Empty:
            break
        if isinstance(message, Closed):
            closed = message
    if closed is not None:
        events.put(closed)


class ComfyUIClient:
    """One ComfyUI server's HTTP API and this client's event stream (`/ws?clientId=`)."""

    def __init__(self, url: str = DEFAULT_URL, http_timeout: float = 30.0):
        if not isinstance(url, str) or not url.startswith(("http://", "https://")):
            raise ValueError(f"`url` must be an http(s) URL, got {url!r}.")
        self.url = url.rstrip("/")
        self.http_timeout = float(http_timeout)
        self.client_id = uuid.uuid4().hex
        self._socket: EventSocket | None = None

    def request(self, method: str, path: str, body: dict | None = None) -> tuple[int, bytes]:
        data = json.dumps(body).encode() if body is not None else None
        return http(
            self.url,
            method,
            path,
            data=data,
            content_type="application/json" if data else None,
            timeout=self.http_timeout,
        )

    def get_json(self, path: str) -> Any:
        return get_json(self.url, path, self.http_timeout)

    def events(self) -> queue.Queue:
        """This client's message queue; (re)connects the WebSocket when it is closed."""
        if self._socket is None or self._socket.closed:
            if self._socket is not None:
                self._socket.close()
            ws_url = self.url.replace("http", "ws", 1) + "/ws?clientId=" + self.client_id
            socket = EventSocket(ws_url)
            try:
                socket.connect(self.http_timeout)
            except Exception as exc:  # noqa: BLE001 - refused, reset, timed out, bad handshake
                raise unreachable(self.url, f"{type(exc).__name__}: {exc}") from None
            self._socket = socket
        return self._socket.messages

    def submit(self, nodes: dict, prompt_id: str, extra_pnginfo: dict | None = None) -> tuple[int, Any]:
        """`POST /prompt` for this client; (status, answer). `extra_pnginfo` (e.g. a `workflow`)
        is written by ComfyUI into the PNGs it saves."""
        body: dict = {"prompt": nodes, "client_id": self.client_id, "prompt_id": prompt_id}
        if extra_pnginfo:
            body["extra_data"] = {"extra_pnginfo": extra_pnginfo}
        status, answer = self.request("POST", "/prompt", body)
        try:
            return status, json.loads(answer)
        except ValueError:
            return status, answer

    def interrupt(self, prompt_id: str | None = None) -> None:
        """Stop the running job (`prompt_id` only if it is the one running) and drop it from the queue."""
        self.request("POST", "/interrupt", {"prompt_id": prompt_id} if prompt_id else {})
        if prompt_id:
            self.request("POST", "/queue", {"delete": [prompt_id]})

    def queue_has(self, prompt_id: str) -> bool:
        try:
            state = self.get_json("/queue")
        except BackendError:
            return False
        return any(item[1] == prompt_id for key in ("queue_running", "queue_pending") for item in state.get(key, []))

    def history(self, prompt_id: str) -> dict | None:
        return self.get_json(f"/history/{prompt_id}").get(prompt_id)

    def view(self, entry: dict) -> Image.Image:
        """An output image named by a /history entry, with its PNG text chunks in `.info`."""
        query = urllib.parse.urlencode(
            {
                "filename": entry["filename"],
                "subfolder": entry.get("subfolder", ""),
                "type": entry.get("type", "output"),
            }
        )
        status, body = http(self.url, "GET", f"/view?{query}", timeout=self.http_timeout)
        if status != 200:
            raise BackendError(f"ComfyUI at {self.url} answered {status} to /view for {entry['filename']}.")
        image = Image.open(io.BytesIO(body))
        image.load()
        return image

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
            parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="{field}"\r\n\r\n{value}\r\n'.encode())
        parts.append(
            f'--{boundary}\r\nContent-Disposition: form-data; name="image"; filename="{name}"\r\n'
            f"Content-Type: image/png\r\n\r\n".encode()
            + png
            + b"\r\n"
        )
        parts.append(f"--{boundary}--\r\n".encode())
        status, body = http(
            self.url,
            "POST",
            "/upload/image",
            data=b"".join(parts),
            content_type=f"multipart/form-data; boundary={boundary}",
            timeout=self.http_timeout,
        )
        if status != 200:
            raise BackendError(f"ComfyUI at {self.url} refused the image upload ({status}): {body[:300]!r}")
        answer = json.loads(body)
        return f"{answer['subfolder']}/{answer['name']}" if answer.get("subfolder") else answer["name"]

    def close(self) -> None:
        if self._socket is not None:
            self._socket.close()
            self._socket = None
