"""What a caller, a reader of a public job or the server log may see: no tokens in log lines, no server paths in
public errors and notebooks, per-job file containment, private store files, nosniff, anonymous cancel tokens,
WebSocket close reasons that fit a frame."""
from __future__ import annotations

import json
import logging
import os
import stat
from pathlib import Path

import pytest
import pytest_asyncio
from tornado.httpclient import HTTPClientError, HTTPRequest
from tornado.websocket import websocket_connect

from animenb.server.redaction import redact
from animenb.server.websocket import MAX_CLOSE_REASON_BYTES, close_reason
from serverkit import call, submit, wait_done, wait_running, ws_messages

pytestmark = [pytest.mark.timeout(180)]
aio = pytest.mark.asyncio(loop_scope="module")
API = "/api/anime"


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def srv(tmp_path_factory, start_live_server):
    async with start_live_server(tmp_path_factory.mktemp("exposure")) as server:
        server.tok = {"admin": server.service.tokens.create("admin1", "admin")[1],
                      "alice": server.service.tokens.create("alice", "user")[1]}
        server.ws = f"ws://127.0.0.1:{server.port}"
        yield server


@pytest.mark.parametrize("text", [
    "GET /ws/job/abc?token=anb_x_SECRET&after=3 (127.0.0.1)",
    "GET /api/anime/generation/abc?cancel_token=SECRET 403",
    "Authorization: Bearer SECRET",
    "saw anb_0123_SECRET in a message",
])
def test_redact_removes_every_secret_shape(text):
    assert "SECRET" not in redact(text) and "<redacted>" in redact(text)


def test_redact_leaves_placeholders_and_the_sentence_around_a_secret():
    message = "This endpoint needs `Authorization: Bearer <token>`."
    assert redact(message) == message
    assert redact("sent `Authorization: Bearer SECRET`.") == "sent `Authorization: Bearer <redacted>`."


@aio
async def test_tokens_never_reach_the_log(srv, caplog):
    secret = srv.tok["alice"]
    job = await submit(srv, prompt="test:echo log")
    caplog.set_level(logging.DEBUG)
    # A refused handshake (foreign Origin) logs its URL; so do a bad token and an unknown route.
    with pytest.raises(HTTPClientError):
        await websocket_connect(HTTPRequest(f"{srv.ws}/ws/job/{job['job_id']}?token={secret}",
                                            headers={"Origin": "http://evil.example"}))
    await ws_messages(f"{srv.ws}/ws/job/{job['job_id']}?token={secret}x")
    await call(srv, "GET", f"/nope?token={secret}")
    await call(srv, "GET", f"{API}/admin/stats", headers={"Authorization": f"Bearer {secret}x"})
    await call(srv, "DELETE", f"{API}/generation/{job['job_id']}?cancel_token=SECRETCANCEL")
    logged = "\n".join(r.getMessage() for r in caplog.records)
    assert "/ws/job/" in logged and "<redacted>" in logged  # the lines are there, without their secrets
    assert secret not in logged and secret[:20] not in logged and "SECRETCANCEL" not in logged


@aio
async def test_public_failed_job_shows_no_server_paths(srv):
    job = await submit(srv, prompt="test:fill 0")  # raises ENOSPC naming <outputs>/<id>/big.bin
    record = await wait_done(srv, job["job_id"])
    assert record.status.value == "failed"
    code, status, _ = await call(srv, "GET", f"{API}/generation/{job['job_id']}/status")
    message = status["error"]["message"]
    assert f"outputs/{job['job_id']}/big.bin" in message, message
    code, notebook, _ = await call(srv, "GET", f"{API}/outputs/{job['job_id']}/notebook.ipynb")
    text = notebook if isinstance(notebook, bytes) else json.dumps(notebook).encode()
    for root in (srv.service.outputs_dir, srv.service.home, srv.service.outputs_dir.parent):
        assert str(root) not in message
        assert str(root).encode() not in text, root
    assert b"outputs/" + job["job_id"].encode() in text  # the parameters cell says where, relatively


@aio
async def test_files_are_contained_in_their_own_job(srv):
    private = await submit(srv, srv.tok["alice"], prompt="test:echo alice's secret")
    public = await submit(srv, prompt="test:echo public")
    for job in (private, public):
        assert (await wait_done(srv, job["job_id"])).status.value == "succeeded"
    outputs = srv.service.outputs_dir
    (outputs / public["job_id"] / "stolen.json").symlink_to(outputs / private["job_id"] / "params.json")
    (outputs / public["job_id"] / "jobdir").symlink_to(outputs / private["job_id"], target_is_directory=True)
    for rel in ("stolen.json", "jobdir/params.json"):
        for prefix in ("outputs", "thumbnails"):
            code, body, _ = await call(srv, "GET", f"{API}/{prefix}/{public['job_id']}/{rel}")
            assert code == 404 and b"secret" not in json.dumps(body).encode(), (prefix, rel, body)
    code, _, _ = await call(srv, "GET", f"{API}/outputs/{private['job_id']}/params.json", token=srv.tok["alice"])
    assert code == 200


@aio
async def test_store_files_are_private(srv):
    home = srv.service.home
    assert stat.S_IMODE(home.stat().st_mode) == 0o700
    files = [p for p in home.iterdir() if p.name.startswith("jobs.sqlite")]
    assert {p.name for p in files} >= {"jobs.sqlite", "jobs.sqlite-wal"}
    for path in files:
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path


def test_an_existing_store_is_tightened(tmp_path):
    from animenb.store.sqlite_database import SqliteDatabase

    path = tmp_path / "home" / "jobs.sqlite"
    path.parent.mkdir()
    path.touch(mode=0o644)
    os.chmod(path, 0o644)
    SqliteDatabase(path).close()
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    fresh = tmp_path / "new" / "db" / "jobs.sqlite"
    SqliteDatabase(fresh).close()
    assert stat.S_IMODE(fresh.stat().st_mode) == 0o600 and stat.S_IMODE(fresh.parent.stat().st_mode) == 0o700


@aio
async def test_every_response_says_nosniff(srv):
    job = await submit(srv, prompt="test:echo sniff")
    await wait_done(srv, job["job_id"])
    paths = [f"{API}/health", f"{API}/jobs", f"{API}/nope", f"{API}/jobs?limit=x", "/", "/gallery",
             f"{API}/outputs/{job['job_id']}/params.json", f"{API}/outputs/{job['job_id']}/nothing.png",
             f"{API}/generation/{job['job_id']}/status", f"/ws/job/{job['job_id']}"]
    for path in paths:
        code, _, headers = await call(srv, "GET", path)
        assert headers.get("X-Content-Type-Options") == "nosniff", (path, code)
    code, _, headers = await call(srv, "POST", f"{API}/generate", raw=b"{")
    assert code == 400 and headers["X-Content-Type-Options"] == "nosniff"


@aio
async def test_anonymous_cancel_needs_the_cancel_token(srv):
    blocker = await submit(srv, prompt="test:sleep 0.05", steps=150)
    await wait_running(srv, blocker["job_id"])
    queued = await submit(srv, prompt="test:echo cancel me")
    assert len(queued["cancel_token"]) >= 32 and queued["cancel_token"] != blocker["cancel_token"]
    url = f"{API}/generation/{queued['job_id']}"
    for token, headers in ((None, {}), (srv.tok["alice"], {}), (None, {"X-Cancel-Token": blocker["cancel_token"]}),
                           (None, {"X-Cancel-Token": "x"})):
        code, body, _ = await call(srv, "DELETE", url, token=token, headers=headers)
        assert code == 403 and body["error"]["field"] == "cancel_token", body
    assert srv.service.store.get(queued["job_id"]).status.value == "queued"
    code, body, _ = await call(srv, "DELETE", url, headers={"X-Cancel-Token": queued["cancel_token"]})
    assert code == 200 and body["status"] == "cancelled"
    code, body, _ = await call(srv, "DELETE", f"{API}/generation/{blocker['job_id']}?cancel_token="
                                              f"{blocker['cancel_token']}")
    assert code == 200 and (await wait_done(srv, blocker["job_id"])).status.value == "cancelled"
    owned = await submit(srv, srv.tok["alice"], prompt="test:echo mine")
    assert "cancel_token" not in owned  # a token's jobs: its owner or an admin, as before
    stored = srv.service.store.get(queued["job_id"])
    assert queued["cancel_token"] not in json.dumps(stored.extra)  # only its hash is kept
    await wait_done(srv, owned["job_id"])


def test_close_reasons_fit_a_close_frame():
    for reason in ("short", "x" * 500, "é" * 100, "Job not found: " + "😀" * 60):
        cut = close_reason(reason)
        assert len(cut.encode()) <= MAX_CLOSE_REASON_BYTES and reason.startswith(cut.rstrip("."))
    assert close_reason("short") == "short"


@aio
async def test_websocket_routes_match_job_ids_only(srv, caplog):
    caplog.set_level(logging.ERROR)
    for path in (f"/ws/job/{'a' * 200}", f"/ws/job/{'é' * 60}", "/ws/job/x/y"):
        with pytest.raises(HTTPClientError) as info:
            await websocket_connect(f"{srv.ws}{path}")
        assert info.value.code == 404
    messages, code, reason = await ws_messages(f"{srv.ws}/ws/job/{'0' * 32}")
    assert code == 4404 and reason == f"Job not found: {'0' * 32}"
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


@aio
async def test_health_shows_no_kernel_pids_and_admin_stats_does(srv):
    _, health, _ = await call(srv, "GET", f"{API}/health")
    assert all("pid" not in k and "kernel_pid" not in k for k in health["components"]["kernels"]["devices"])
    code, stats, _ = await call(srv, "GET", f"{API}/admin/stats", token=srv.tok["admin"])
    assert code == 200 and all(k.get("pid") for k in stats["kernels"]["devices"])


@aio
@pytest.mark.parametrize("host, allowed", [
    ("127.0.0.1:{port}", True), ("localhost:{port}", True), ("[::1]:{port}", True),
    ("evil.example", False), ("evil.example:{port}", False), ("10.0.0.5:{port}", False),
])
async def test_only_hosts_the_server_answers_to_pass_dns_rebinding(srv, host, allowed):
    host = host.format(port=srv.port)
    headers = {"Host": host, "Origin": f"http://{host}"}  # a rebinding page: Origin and Host agree
    code, body, _ = await call(srv, "GET", f"{API}/jobs", headers=headers)
    assert (code == 200) if allowed else (code == 421 and body["error"]["code"] == "host_not_allowed")
    code, body, _ = await call(srv, "POST", f"{API}/generate", {"prompt": ""}, headers=headers)
    assert (code == 422) if allowed else (code == 421)


@aio
async def test_a_job_manifest_shows_no_server_paths(srv):
    job = await submit(srv, prompt="a fox", phase=1)
    assert (await wait_done(srv, job["job_id"], timeout=300)).status.value == "succeeded"
    code, manifest, _ = await call(srv, "GET", f"{API}/outputs/{job['job_id']}/manifest.json")
    assert code == 200
    text = manifest.decode() if isinstance(manifest, bytes) else json.dumps(manifest)
    for server_path in (srv.service.home, srv.service.outputs_dir, Path(__file__).resolve().parents[1]):
        assert str(server_path) not in text  # e.g. the model profile's file
