"""Shared fixtures for the job-service tests: a real server on a free loopback port."""
from __future__ import annotations

import contextlib
import json
from pathlib import Path

import pytest
from tornado.httpclient import AsyncHTTPClient, HTTPClientError
from tornado.testing import bind_unused_port

TEST_NOTEBOOKS = Path(__file__).parent / "notebooks"


def notebook_for_tests(job):
    """Prompts "test:<name>" run tests/notebooks/<name>.ipynb; anything else the real phase notebook."""
    from animenb.phases.catalog import get_phase
    from animenb import config

    prompt = job.parameters.get("prompt", "")
    if prompt.startswith("test:"):
        return TEST_NOTEBOOKS / f"{prompt[5:].split()[0]}.ipynb"
    return config.notebooks_dir() / get_phase(job.phase).notebook


class LiveServer:
    def __init__(self, service, server, port):
        self.service, self.server, self.port = service, server, port
        self.base = f"http://127.0.0.1:{port}"
        self.client = AsyncHTTPClient()

    async def request(self, method: str, path: str, body=None, raw: bytes | None = None):
        """(status, parsed JSON or bytes, headers); never raises for HTTP errors."""
        data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
        if method in ("POST", "PUT") and data is None:
            data = b""
        try:
            resp = await self.client.fetch(self.base + path, method=method, body=data, raise_error=False,
                                           headers={"Content-Type": "application/json"}, request_timeout=60,
                                           allow_nonstandard_methods=True)
        except HTTPClientError as exc:  # pragma: no cover
            resp = exc.response
        ctype = resp.headers.get("Content-Type", "")
        payload = json.loads(resp.body) if ctype.startswith("application/json") and resp.body else resp.body
        return resp.code, payload, resp.headers


@contextlib.asynccontextmanager
async def live_server(tmp_path: Path, **config):
    from animenb.server.app import AnimeService, ServerConfig, make_app
    from animenb.server.limits import make_http_server

    config.setdefault("kernel_env", {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"})  # 2-core CI: no oversubscription
    cfg = ServerConfig(home=tmp_path / "home", outputs=tmp_path / "outputs",
                       notebook_for=config.pop("notebook_for", notebook_for_tests), **config)
    service = AnimeService(cfg)
    app = make_app(service)
    sock, port = bind_unused_port()
    server = make_http_server(app, service.config.http_limits)
    server.add_sockets([sock])
    await service.start()
    await service.runner.wait_ready(120)
    try:
        yield LiveServer(service, server, port)
    finally:
        server.stop()
        await service.stop()


@pytest.fixture(scope="session")
def start_live_server():
    """`async with start_live_server(tmp_path, **ServerConfig fields) as srv:` a started server."""
    return live_server
