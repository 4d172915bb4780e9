"""ComfyUIBackend overhead: the same tiny text-to-image through animenb vs. straight to ComfyUI.

Both paths run the same API graph (`animenb.backends.comfyui_graphs.text_to_image`) on the
same server, interleaved, with fresh seeds so ComfyUI's cache never answers: "direct" posts
it to /prompt and awaits `executing {node: null}` on its own WebSocket (persistent, read on
the main thread's event loop), then reads /history and /view; "animenb" calls
`ComfyUIBackend.text_to_image` (progress relayed, image decoded). Prints the medians and
their ratio (target <= 1.10). No assertions.

    python bench/comfyui_overhead.py [--url http://127.0.0.1:8188] [--runs 12]

Without --url it installs/starts the test ComfyUI (tests/comfyui/, cached under
${ANIMENB_HOME:-~/.cache/animenb}/comfyui) on a free port and stops it afterwards.
"""
from __future__ import annotations

import argparse
import asyncio
import io
import json
import platform
import statistics
import sys
import tempfile
import time
import urllib.parse
import uuid
from pathlib import Path

from PIL import Image
from tornado.httpclient import AsyncHTTPClient
from tornado.websocket import websocket_connect

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from animenb.backends import comfyui_graphs as graphs  # noqa: E402
from animenb.backends.base import ImageRequest  # noqa: E402
from animenb.backends.comfyui import ComfyUIBackend  # noqa: E402


class Direct:
    """A bare client: POST /prompt, wait on the WebSocket, read /history and /view."""

    def __init__(self, url: str):
        self.url = url
        self.client_id = uuid.uuid4().hex
        self.http = AsyncHTTPClient()
        self.ws = None

    async def connect(self):
        self.ws = await websocket_connect(self.url.replace("http", "ws", 1) + f"/ws?clientId={self.client_id}")

    async def submit_and_wait(self, nodes: dict, timeout: float = 120) -> str:
        """POST the prompt, then read the WebSocket until ComfyUI says it is done; its prompt id."""
        body = json.dumps({"prompt": nodes, "client_id": self.client_id}).encode()
        answer = await self.http.fetch(self.url + "/prompt", method="POST", body=body)
        prompt_id = json.loads(answer.body)["prompt_id"]
        deadline = time.monotonic() + timeout
        while True:
            message = await asyncio.wait_for(self.ws.read_message(), max(0.1, deadline - time.monotonic()))
            if message is None:
                raise RuntimeError("ComfyUI closed the WebSocket")
            if isinstance(message, bytes):
                continue
            message = json.loads(message)
            data = message.get("data") or {}
            if message["type"] == "executing" and data.get("node") is None and data.get("prompt_id") == prompt_id:
                return prompt_id
            if message["type"] == "execution_error":
                raise RuntimeError(f"ComfyUI: {data}")

    async def run(self, nodes: dict, output: str, timeout: float = 120) -> Image.Image:
        prompt_id = await self.submit_and_wait(nodes, timeout)
        history = json.loads((await self.http.fetch(f"{self.url}/history/{prompt_id}")).body)[prompt_id]
        entry = history["outputs"][output]["images"][0]
        query = urllib.parse.urlencode({k: entry[k] for k in ("filename", "subfolder", "type")})
        image = Image.open(io.BytesIO((await self.http.fetch(f"{self.url}/view?{query}")).body))
        image.load()
        return image


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", help="a running ComfyUI (default: start the test install)")
    parser.add_argument("--runs", type=int, default=12, help="measured pairs (after 2 warm-up pairs)")
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--size", type=int, default=64)
    args = parser.parse_args()

    server = None
    url = args.url
    if url is None:
        from comfyui.fixtures import ComfyUIProcess, ensure_install

        root = ensure_install()
        server = ComfyUIProcess(root=root, workdir=Path(tempfile.mkdtemp(prefix="animenb-bench-comfyui-"))).start()
        url = server.url
    loop = asyncio.new_event_loop()
    backend = ComfyUIBackend(url)
    try:
        checkpoint = backend.describe()["checkpoint"]
        direct = Direct(url)
        loop.run_until_complete(direct.connect())
        times = {"direct": [], "animenb": []}
        seed = 1000
        for index in range(args.runs + 2):
            order = ("direct", "animenb") if index % 2 == 0 else ("animenb", "direct")
            for path in order:
                seed += 1
                request = ImageRequest("bench prompt", width=args.size, height=args.size, steps=args.steps, seed=seed)
                started = time.perf_counter()
                if path == "direct":
                    graph = graphs.text_to_image(request, checkpoint=checkpoint)
                    loop.run_until_complete(direct.run(graph.nodes, graph.output))
                else:
                    backend.text_to_image(request, on_step=lambda **_: None)
                elapsed = time.perf_counter() - started
                if index >= 2:
                    times[path].append(elapsed)
        info = backend.describe()
        direct_median = statistics.median(times["direct"])
        animenb_median = statistics.median(times["animenb"])
        ratios = [a / d for a, d in zip(times["animenb"], times["direct"])]
        print(f"ComfyUI {info['comfyui_version']} at {url} on {info['devices'][0]['name'] if info['devices'] else '?'}"
              f" ({platform.processor() or platform.machine()}); {args.size}px, {args.steps} steps, "
              f"{args.runs} interleaved pairs")
        print(f"direct  /prompt + WS: median {direct_median * 1000:.1f} ms")
        print(f"animenb ComfyUIBackend: median {animenb_median * 1000:.1f} ms")
        print(f"ratio of medians: {animenb_median / direct_median:.3f} (median pairwise ratio "
              f"{statistics.median(ratios):.3f}; target <= 1.10)")
    finally:
        backend.close()
        loop.close()
        if server is not None:
            server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
