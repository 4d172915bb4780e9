"""Helpers for tests against a live server: requests with tokens and headers, submitting and waiting for jobs,
reading a job WebSocket to its end."""
from __future__ import annotations

import asyncio
import json
import time

from tornado.httpclient import HTTPRequest
from tornado.websocket import websocket_connect


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


async def wait_done(srv, job_id: str, timeout: float = 120):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = srv.service.store.get(job_id)
        if job.terminal:
            return job
        await asyncio.sleep(0.03)
    raise AssertionError(f"job {job_id} did not finish: {srv.service.store.get(job_id)}")


async def wait_status(srv, job_id: str, timeout: float = 180) -> dict:
    """The job's /status body once it is terminal."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        _, data, _ = await call(srv, "GET", f"/api/anime/generation/{job_id}/status")
        if data["status"] not in ("queued", "running"):
            return data
        await asyncio.sleep(0.05)
    raise AssertionError(f"job {job_id} did not finish: {data}")


async def wait_running(srv, job_id: str, timeout: float = 60):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if srv.service.store.get(job_id).status.value == "running":
            return
        await asyncio.sleep(0.02)
    raise AssertionError(f"job {job_id} did not start")


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
