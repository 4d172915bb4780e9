"""What one client may take from the server: a body over 64 KiB is refused from its Content-Length (never read),
slow headers and slow bodies are dropped after their timeouts, job WebSockets are capped per address, and
another web site cannot queue or cancel jobs (CSRF: JSON only, foreign Origins refused)."""
from __future__ import annotations

import asyncio
import json
import socket
import time

import pytest
import pytest_asyncio
from tornado.httpclient import HTTPClientError, HTTPRequest
from tornado.websocket import websocket_connect

from animenb.server.limits import HttpLimits
from serverkit import call, submit, wait_done, wait_running

pytestmark = [pytest.mark.asyncio(loop_scope="module"), pytest.mark.timeout(180)]
API = "/api/anime"
GEN = f"{API}/generate"
LIMITS = HttpLimits(body_timeout=1.0, idle_timeout=1.0, max_websockets_per_client=3)
ALLOWED = "https://studio.example"


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def srv(tmp_path_factory, start_live_server):
    async with start_live_server(tmp_path_factory.mktemp("limits"), http_limits=LIMITS,
                                 allow_origins=(ALLOWED,)) as server:
        server.admin = server.service.tokens.create("admin1", "admin")[1]
        yield server


async def raw_exchange(port: int, head: bytes, body: bytes = b"", *, wait: float = 10.0) -> bytes:
    """Send `head` (and `body`), then read until the server closes the connection (at most `wait` s)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(head + body)
        await writer.drain()
        data = b""
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            try:
                chunk = await asyncio.wait_for(reader.read(65536), timeout=deadline - time.monotonic())
            except (asyncio.TimeoutError, ConnectionResetError):
                break
            if not chunk:
                break
            data += chunk
        return data
    finally:
        writer.close()


def post_head(port: int, length: int | None, *, content_type: str = "application/json", extra: str = "") -> bytes:
    size = f"Content-Length: {length}\r\n" if length is not None else "Transfer-Encoding: chunked\r\n"
    return (f"POST {GEN} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: {content_type}\r\n{size}{extra}"
            "\r\n").encode()


async def test_a_100_mb_body_is_refused_from_its_headers(srv):
    before = srv.service.store.count()
    # Only the headers are sent: the 413 comes back without one byte of the body.
    reply = await raw_exchange(srv.port, post_head(srv.port, 100 * 1024 * 1024))
    status, _, rest = reply.partition(b"\r\n")
    assert status.startswith(b"HTTP/1.1 413"), reply[:300]
    body = json.loads(rest.split(b"\r\n\r\n", 1)[1])
    assert body["error"]["code"] == "body_too_large"
    # The same with 1 MiB of it already sent: answered, then the connection is closed, not drained.
    reply = await raw_exchange(srv.port, post_head(srv.port, 100 * 1024 * 1024), b"x" * (1024 * 1024))
    assert reply.startswith(b"HTTP/1.1 413"), reply[:300]
    assert srv.service.store.count() == before
    code, _, _ = await call(srv, "GET", f"{API}/health")
    assert code == 200


async def test_a_chunked_body_past_the_limit_is_cut_off(srv):
    chunk = b"x" * 16384
    body = b"".join(b"%x\r\n%s\r\n" % (len(chunk), chunk) for _ in range(8)) + b"0\r\n\r\n"  # 128 KiB
    reply = await raw_exchange(srv.port, post_head(srv.port, None), body)
    assert reply.split(b"\r\n", 1)[0] in (b"HTTP/1.1 400 Bad Request", b"HTTP/1.1 413 Payload Too Large"), reply[:200]
    small = b'{"prompt": "test:echo chunked"}'
    reply = await raw_exchange(srv.port, post_head(srv.port, None, extra="Connection: close\r\n"),
                               b"%x\r\n%s\r\n0\r\n\r\n" % (len(small), small))
    assert reply.startswith(b"HTTP/1.1 202"), reply[:300]  # a small chunked body is fine
    await wait_done(srv, json.loads(reply.split(b"\r\n\r\n", 1)[1])["job_id"])


async def test_slow_connections_are_dropped_after_their_timeouts(srv):
    """20 sockets stuck in their headers and 20 in their bodies are all closed within the timeouts
    (1 s each here; waited for up to 15 s), while /health keeps answering."""
    loop = asyncio.get_running_loop()
    socks = []
    for i in range(40):
        sock = socket.create_connection(("127.0.0.1", srv.port))
        sock.setblocking(False)
        if i % 2:
            sock.sendall(b"GET /api/anime/health HTTP/1.1\r\nHost: x\r\nX-Slow: ")  # never ends its headers
        else:
            sock.sendall(post_head(srv.port, 1000) + b'{"prompt": "')  # never ends its body
        socks.append(sock)
    try:
        code, _, _ = await call(srv, "GET", f"{API}/health")
        assert code == 200
        deadline = time.monotonic() + 15
        open_socks = set(socks)
        while open_socks and time.monotonic() < deadline:
            for sock in list(open_socks):
                try:
                    data = sock.recv(4096)
                except BlockingIOError:
                    continue
                except ConnectionResetError:
                    data = b""
                if not data or data.startswith(b"HTTP/1.1 4"):
                    open_socks.discard(sock)
            await asyncio.sleep(0.1)
        assert not open_socks, f"{len(open_socks)} slow connections still open"
    finally:
        for sock in socks:
            sock.close()
    assert loop.is_running()


async def test_job_websockets_are_capped_per_address(srv):
    blocker = await submit(srv, prompt="test:sleep 0.05", steps=150)
    await wait_running(srv, blocker["job_id"])
    url = f"ws://127.0.0.1:{srv.port}/ws/job/{blocker['job_id']}"
    conns = [await websocket_connect(url) for _ in range(LIMITS.max_websockets_per_client)]
    try:
        for conn in conns:
            assert json.loads(await conn.read_message())["event"] == "state"
        with pytest.raises(HTTPClientError) as info:
            await websocket_connect(url)
        assert info.value.code == 429
        assert json.loads(info.value.response.body)["error"]["code"] == "too_many_websockets"
        conns.pop().close()
        deadline = time.monotonic() + 10
        while srv.service.websockets.open["127.0.0.1"] >= LIMITS.max_websockets_per_client:
            assert time.monotonic() < deadline, "a closed socket was not released"
            await asyncio.sleep(0.05)
        conns.append(await websocket_connect(url))  # a slot is free again
    finally:
        for conn in conns:
            conn.close()
        await call(srv, "DELETE", f"{API}/generation/{blocker['job_id']}", token=srv.admin)
    await wait_done(srv, blocker["job_id"])


# -- CSRF ------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("headers,status,code", [
    ({}, 415, "unsupported_media_type"),                                         # curl -d without -H
    ({"Content-Type": "text/plain"}, 415, "unsupported_media_type"),             # fetch no-cors from another site
    ({"Content-Type": "application/x-www-form-urlencoded"}, 415, "unsupported_media_type"),  # an HTML form
    ({"Content-Type": "multipart/form-data; boundary=x"}, 415, "unsupported_media_type"),
    ({"Content-Type": "application/json", "Origin": "http://evil.example"}, 403, "cross_origin"),
    ({"Content-Type": "application/json", "Origin": "null"}, 403, "cross_origin"),
    ({"Content-Type": "application/json", "Origin": "http://127.0.0.1"}, 403, "cross_origin"),  # another port
    ({"Content-Type": "application/json", "Origin": "https://studio.example.evil.example"}, 403, "cross_origin"),
])
async def test_cross_site_requests_are_refused(srv, headers, status, code):
    before = srv.service.store.count()
    resp = await srv.client.fetch(srv.base + GEN, method="POST", body=b'{"prompt": "test:echo csrf"}',
                                  headers=headers, raise_error=False)
    if "Content-Type" not in headers:  # tornado's client would add a form type: send none at all
        resp_raw = await raw_exchange(srv.port, f"POST {GEN} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 2\r\n"
                                                f"Connection: close\r\n\r\n".encode(), b"{}")
        assert resp_raw.startswith(f"HTTP/1.1 {status}".encode()), resp_raw[:200]
    assert resp.code == status and json.loads(resp.body)["error"]["code"] == code, resp.body
    assert srv.service.store.count() == before


async def test_own_and_allowed_origins_may_post_and_cancel(srv):
    for origin in (srv.base, ALLOWED, ALLOWED + ":443"):
        code, job, _ = await call(srv, "POST", GEN, {"prompt": "test:echo origin"}, headers={"Origin": origin})
        assert code == 202, (origin, job)
        await wait_done(srv, job["job_id"])
    job = await submit(srv, prompt="test:echo cancel")
    code, body, _ = await call(srv, "DELETE", f"{API}/generation/{job['job_id']}",
                               headers={"Origin": "http://evil.example", "X-Cancel-Token": job["cancel_token"]})
    assert code == 403 and body["error"]["code"] == "cross_origin"
    code, body, _ = await call(srv, "POST", f"{API}/admin/gc", {"older_than": "7d", "dry_run": True},
                               token=srv.admin, headers={"Origin": "http://evil.example"})
    assert code == 403
    code, _, _ = await call(srv, "GET", f"{API}/jobs", headers={"Origin": "http://evil.example"})
    assert code == 200  # reads stay open (a browser shows another site no response without CORS headers)
    await wait_done(srv, job["job_id"])
    for origin, ok in ((ALLOWED, True), ("http://evil.example", False)):
        request = HTTPRequest(f"ws://127.0.0.1:{srv.port}/ws/job/{job['job_id']}", headers={"Origin": origin})
        if ok:
            conn = await websocket_connect(request)
            assert json.loads(await conn.read_message())["event"] == "state"
            conn.close()
        else:
            with pytest.raises(HTTPClientError) as info:
                await websocket_connect(request)
            assert info.value.code == 403


async def test_another_site_cannot_queue_jobs_from_a_real_browser(srv):
    """A page on another origin tries what a hostile site would: no-cors fetches with no Content-Type (a
    Blob body) and text/plain, a form post, and a CORS fetch with JSON (which needs a preflight the server never grants).
    No job is queued. The same JSON fetch from the server's own origin is accepted."""
    from tornado.testing import bind_unused_port
    from tornado.web import Application, RequestHandler

    from test_gallery_page import CHROMIUM_ARGS, chromium_path

    executable = chromium_path()
    from playwright.async_api import async_playwright

    target = f"{srv.base}{GEN}"
    body = '{"prompt": "test:echo from another site"}'

    class Hostile(RequestHandler):
        def get(self):
            self.write(f"""<!doctype html><body>
<form id="f" method="POST" action="{target}" enctype="text/plain" target="sink">
<input name='{{"prompt": "test:echo form", "x": "' value='"}}'></form><iframe name="sink"></iframe>
<script>
window.attempts = (async () => {{
  const out = [];
  for (const init of [{{method: "POST", mode: "no-cors", body: new Blob([{body!r}])}},  // no Content-Type at all
                      {{method: "POST", mode: "no-cors", body: {body!r}}},
                      {{method: "POST", mode: "no-cors", headers: {{"Content-Type": "text/plain"}}, body: {body!r}}},
                      {{method: "POST", headers: {{"Content-Type": "application/json"}}, body: {body!r}}}]) {{
    try {{ const r = await fetch({target!r}, init); out.push(r.type + ":" + r.status); }}
    catch (e) {{ out.push("blocked"); }}
  }}
  document.getElementById("f").submit();
  return out;
}})();
</script></body>""")

    sock, port = bind_unused_port()
    from tornado.httpserver import HTTPServer

    hostile = HTTPServer(Application([(r"/", Hostile)]))
    hostile.add_sockets([sock])
    before = srv.service.store.count()
    try:
        async with async_playwright() as pw:
            browser = await pw.chromium.launch(executable_path=executable, args=CHROMIUM_ARGS, headless=True)
            try:
                page = await browser.new_page()
                await page.goto(f"http://localhost:{port}/", wait_until="load")  # another origin than 127.0.0.1
                attempts = await page.evaluate("window.attempts")
                assert attempts[:3] == ["opaque:0"] * 3 and attempts[3] == "blocked", attempts
                await page.wait_for_timeout(1000)  # the form post lands in the iframe
                assert srv.service.store.count() == before
                own = await browser.new_page()
                await own.goto(srv.base + "/", wait_until="domcontentloaded")
                status = await own.evaluate(
                    "async ([url, body]) => (await fetch(url, {method: 'POST', body,"
                    " headers: {'Content-Type': 'application/json'}})).status", [target, body])
                assert status == 202 and srv.service.store.count() == before + 1
            finally:
                await browser.close()
    finally:
        hostile.stop()


@pytest.mark.parametrize("address, key", [
    ("203.0.113.7", "203.0.113.7"),
    ("2001:db8:1:2:aaaa::1", "2001:db8:1:2::/64"),
    ("2001:db8:1:2:bbbb::9", "2001:db8:1:2::/64"),   # the same /64: the same client
    ("::ffff:203.0.113.7", "203.0.113.7"),
    ("127.0.0.2", "loopback"),
    ("::1", "loopback"),
])
async def test_a_client_is_an_ipv4_address_an_ipv6_64_or_loopback(address, key):
    from animenb.server.limits import client_key

    assert client_key(address) == key
