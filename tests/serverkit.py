"""The test-server helpers: start a real server in this process (`live_server`, the `start_live_server` fixture),
wait for a condition with a deadline (`wait_for`, never a fixed sleep), send requests (`call`), submit jobs and
follow them (`submit`, `wait_running`, `wait_done`, `wait_status`, `ws_messages`), and pick a free port for a
server in another process (`free_port`)."""
from __future__ import annotations

import asyncio
import contextlib
import inspect
import json
import socket
import time
from pathlib import Path
from typing import Any, Awaitable, Callable

from tornado.httpclient import AsyncHTTPClient, HTTPRequest
from tornado.testing import bind_unused_port
from tornado.websocket import websocket_connect

TEST_NOTEBOOKS = Path(__file__).parent / "notebooks"
ACTIVE = ("queued", "running")


def free_port() -> int:
    """A loopback port free right now, for a server started in another process."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


async def wait_for(predicate: Callable[[], Any | Awaitable[Any]], timeout: float = 120, *, interval: float = 0.02,
                   what: str = "condition") -> Any:
    """The first truthy value of `predicate()` (a function or a coroutine function), polled every `interval`
    seconds; AssertionError naming `what` once `timeout` seconds have passed."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if inspect.isawaitable(value):
            value = await value
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"{what} not met within {timeout} s")
        await asyncio.sleep(interval)


# -- a server in this process ---------------------------------------------------------------------------------
def notebook_for_tests(job):
    """Prompts "test:<name>" run tests/notebooks/<name>.ipynb; anything else the real phase notebook."""
    from animenb import config
    from animenb.phases.catalog import get_phase

    prompt = job.parameters.get("prompt", "")
    if prompt.startswith("test:"):
        return TEST_NOTEBOOKS / f"{prompt[5:].split()[0]}.ipynb"
    return config.notebooks_dir() / get_phase(job.phase).notebook


class LiveServer:
    """A started server: its `service` (store, runner, bus), `port`, `base` URL and an HTTP `client`."""

    def __init__(self, service, server, port: int):
        self.service, self.server, self.port = service, server, port
        self.base = f"http://127.0.0.1:{port}"
        self.client = AsyncHTTPClient()

    async def request(self, method: str, path: str, body=None, raw: bytes | None = None):
        """(status, parsed JSON or bytes, headers), without a token; never raises for HTTP errors."""
        return await call(self, method, path, body, raw=raw)


@contextlib.asynccontextmanager
async def live_server(tmp_path: Path, **config):
    """`async with live_server(tmp_path, **ServerConfig fields) as srv:` a started server on a free loopback
    port, its kernels warm (unless `wait_for_kernels=False`), with tests/notebooks for "test:<name>" prompts."""
    from animenb.server.app import AnimeService, ServerConfig, make_app
    from animenb.server.limits import make_http_server

    wait_for_kernels = config.pop("wait_for_kernels", True)
    config.setdefault("kernel_env", {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"})  # 2-core CI: no oversubscription
    cfg = ServerConfig(home=tmp_path / "home", outputs=tmp_path / "outputs",
                       notebook_for=config.pop("notebook_for", notebook_for_tests), **config)
    service = AnimeService(cfg)
    app = make_app(service)
    sock, port = bind_unused_port()  # bound here, so no other process can take the port before the server
    server = make_http_server(app, service.config.http_limits)
    server.add_sockets([sock])
    await service.start()
    if wait_for_kernels:
        await service.runner.wait_ready(120)
    try:
        yield LiveServer(service, server, port)
    finally:
        server.stop()
        await service.stop()


# -- requests and jobs ----------------------------------------------------------------------------------------
async def call(srv, method: str, path: str, body=None, *, raw: bytes | None = None, token: str | None = None,
               headers: dict | None = None):
    """(status, parsed JSON or bytes, headers); never raises for HTTP errors."""
    data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
    if method in ("POST", "PUT") and data is None:
        data = b""
    hdrs = {"Content-Type": "application/json"} if data is not None else {}
    if token:
        hdrs["Authorization"] = f"Bearer {token}"
    hdrs.update(headers or {})
    resp = await srv.client.fetch(srv.base + path, method=method, body=data, raise_error=False, headers=hdrs,
                                  request_timeout=60, allow_nonstandard_methods=True)
    ctype = resp.headers.get("Content-Type", "")
    payload = json.loads(resp.body) if ctype.startswith("application/json") and resp.body else resp.body
    return resp.code, payload, resp.headers


async def submit(srv, token: str | None = None, **body):
    body.setdefault("width", 64)
    body.setdefault("height", 64)
    body.setdefault("steps", 2)
    code, data, _ = await call(srv, "POST", "/api/anime/generate", body, token=token)
    assert code == 202, data
    return data


async def wait_running(srv, job_id: str, timeout: float = 60) -> None:
    await wait_for(lambda: srv.service.store.get(job_id).status.value == "running", timeout,
                   what=f"job {job_id} running")


async def wait_done(srv, job_id: str, timeout: float = 120):
    """The job's record once it is terminal (read from the store)."""
    return await wait_for(lambda: (job := srv.service.store.get(job_id)).terminal and job, timeout,
                          interval=0.03, what=f"job {job_id} finished")


async def wait_status(srv, job_id: str, wanted: set[str] | None = None, timeout: float = 180,
                      token: str | None = None) -> dict:
    """The job's /status body once its status is in `wanted` (default: any terminal status)."""
    async def reached():
        _, data, _ = await call(srv, "GET", f"/api/anime/generation/{job_id}/status", token=token)
        done = data["status"] in wanted if wanted is not None else data["status"] not in ACTIVE
        return data if done else None

    return await wait_for(reached, timeout, interval=0.05, what=f"job {job_id} {sorted(wanted or ['finished'])}")


async def ws_messages(url: str, *, headers: dict | None = None, timeout: float = 60):
    """(messages, close_code, close_reason) of a job WebSocket until the server closes it."""
    conn = await websocket_connect(HTTPRequest(url, headers=headers or {}))
    messages = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        msg = await asyncio.wait_for(conn.read_message(), timeout=deadline - time.monotonic())
        if msg is None:
            return messages, conn.close_code, conn.close_reason
        messages.append(json.loads(msg))
    raise AssertionError("websocket did not close")
