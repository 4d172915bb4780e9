"""Bad input and failure modes: a table of bad requests, code-shaped prompts, backpressure, OOM, ComfyUI down,
full disk, path escapes."""
from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import uuid

import pytest
import pytest_asyncio

from serverkit import call, submit, wait_done, wait_running

pytestmark = [pytest.mark.asyncio(loop_scope="module"), pytest.mark.timeout(180)]
API = "/api/anime"


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def srv(tmp_path_factory, start_live_server):
    async with start_live_server(tmp_path_factory.mktemp("bad_requests")) as server:
        server.tok = {"admin": server.service.tokens.create("admin1", "admin")[1],
                      "user": server.service.tokens.create("user1", "user")[1]}
        yield server


def store_snapshot(srv) -> list:
    with srv.service.store.db.transaction() as cur:
        return [tuple(r) for r in cur.execute("SELECT * FROM jobs ORDER BY seq")]


# -- bad requests: (method, path, raw body, headers, status, code, field) ----------------------------------------
J = {"Content-Type": "application/json"}
GEN = f"{API}/generate"
BAD = [
    ("POST", GEN, b"not json", J, 400, "invalid_json", None),
    ("POST", GEN, b"[1, 2]", J, 400, "invalid_json", None),
    ("POST", GEN, b"", J, 400, "invalid_json", None),
    ("POST", GEN, b"null", J, 400, "invalid_json", None),
    ("POST", GEN, b'"prompt"', J, 400, "invalid_json", None),
    ("POST", GEN, b'{"prompt": "a"', J, 400, "invalid_json", None),
    ("POST", GEN, b"\xff\xfe{}", J, 400, "invalid_json", None),
    ("POST", GEN, b"[" * 60000, J, 400, "invalid_json", None),
    ("POST", GEN, b'{"prompt": "a", "prompt": "b"}', J, 400, "invalid_json", None),
    ("POST", GEN, b'{"prompt": "' + b"x" * 70000 + b'"}', J, 413, "body_too_large", None),
    ("POST", GEN, b'{"prompt": "a"}', {"Content-Type": "text/plain"}, 415, "unsupported_media_type", "Content-Type"),
    ("POST", GEN, b"prompt=a", {"Content-Type": "application/x-www-form-urlencoded"}, 415, "unsupported_media_type",
     "Content-Type"),
    ("POST", GEN, b'{"width": 64}', J, 422, "missing_field", "prompt"),
    ("POST", GEN, b'{"prompt": ""}', J, 422, "invalid_value", "prompt"),
    ("POST", GEN, b'{"prompt": "   "}', J, 422, "invalid_value", "prompt"),
    ("POST", GEN, b'{"prompt": 5}', J, 422, "invalid_value", "prompt"),
    ("POST", GEN, b'{"prompt": ["a"]}', J, 422, "invalid_value", "prompt"),
    ("POST", GEN, b'{"prompt": "' + b"y" * 2001 + b'"}', J, 422, "invalid_value", "prompt"),
    ("POST", GEN, b'{"prompt": "a\\u0000b"}', J, 422, "invalid_value", "prompt"),
    ("POST", GEN, b'{"prompt": "a\\ud800"}', J, 422, "invalid_value", "prompt"),
    ("POST", GEN, b'{"prompt": "a", "negative_prompt": 1}', J, 422, "invalid_value", "negative_prompt"),
    ("POST", GEN, b'{"prompt": "a", "width": 65}', J, 422, "invalid_value", "width"),
    ("POST", GEN, b'{"prompt": "a", "width": 56}', J, 422, "invalid_value", "width"),
    ("POST", GEN, b'{"prompt": "a", "width": "64"}', J, 422, "invalid_value", "width"),
    ("POST", GEN, b'{"prompt": "a", "width": 64.5}', J, 422, "invalid_value", "width"),
    ("POST", GEN, b'{"prompt": "a", "width": 1e400}', J, 422, "invalid_value", "width"),
    ("POST", GEN, b'{"prompt": "a", "height": 4096}', J, 422, "invalid_value", "height"),
    ("POST", GEN, b'{"prompt": "a", "height": -512}', J, 422, "invalid_value", "height"),
    ("POST", GEN, b'{"prompt": "a", "steps": 0}', J, 422, "invalid_value", "steps"),
    ("POST", GEN, b'{"prompt": "a", "steps": 151}', J, 422, "invalid_value", "steps"),
    ("POST", GEN, b'{"prompt": "a", "steps": true}', J, 422, "invalid_value", "steps"),
    ("POST", GEN, b'{"prompt": "a", "seed": "1"}', J, 422, "invalid_value", "seed"),
    ("POST", GEN, b'{"prompt": "a", "steps": null}', J, 422, "invalid_value", "steps"),
    ("POST", GEN, b'{"prompt": null}', J, 422, "invalid_value", "prompt"),
    ("POST", GEN, b'{"prompt": null, "phase": 3, "seconds": 2}', J, 422, "invalid_value", "prompt"),
    ("POST", GEN, b'{"prompt": "a", "phase": 2, "frames": 7}', J, 422, "invalid_value", "frames"),
    ("POST", GEN, b'{"prompt": "a", "phase": 2, "frames": 61}', J, 422, "invalid_value", "frames"),
    ("POST", GEN, b'{"prompt": "a", "phase": 3, "seconds": 0.5}', J, 422, "invalid_value", "seconds"),
    ("POST", GEN, b'{"prompt": "a", "phase": 3, "seconds": 0}', J, 422, "invalid_value", "seconds"),
    ("POST", GEN, b'{"prompt": "a", "phase": 3, "seconds": 1, "fps": 1}', J, 422, "invalid_value", "seconds"),
    ("POST", GEN, b'{"prompt": "", "phase": 3}', J, 422, "invalid_value", "prompt"),
    ("POST", GEN, b'{"prompt": "a", "width": 2056}', J, 422, "invalid_value", "width"),
    ("POST", GEN, b'{"prompt": "a"}', {}, 415, "unsupported_media_type", "Content-Type"),
    ("POST", GEN, b'{"prompt": "a"}', {**J, "Origin": "http://evil.example"}, 403, "cross_origin", "Origin"),
    ("DELETE", f"{API}/generation/{'0' * 32}", None, {"Origin": "null"}, 403, "cross_origin", "Origin"),
    ("POST", GEN, b'{"prompt": "a", "seed": -2}', J, 422, "invalid_value", "seed"),
    ("POST", GEN, b'{"prompt": "a", "seed": 9223372036854775808}', J, 422, "invalid_value", "seed"),
    ("POST", GEN, b'{"prompt": "a", "seed": 1.5}', J, 422, "invalid_value", "seed"),
    ("POST", GEN, b'{"prompt": "a", "phase": 4}', J, 422, "invalid_value", "phase"),
    ("POST", GEN, b'{"prompt": "a", "phase": 0}', J, 422, "invalid_value", "phase"),
    ("POST", GEN, b'{"prompt": "a", "phase": "FOURTH"}', J, 422, "invalid_value", "phase"),
    ("POST", GEN, b'{"prompt": "a", "phase": [1]}', J, 422, "invalid_value", "phase"),
    ("POST", GEN, b'{"prompt": "a", "evil": 1}', J, 422, "unknown_field", "evil"),
    ("POST", GEN, b'{"prompt": "a", "__class__": 1}', J, 422, "unknown_field", "__class__"),
    ("POST", GEN, b'{"prompt": "a", "output_dir": "/etc"}', J, 422, "unknown_field", "output_dir"),
    ("POST", GEN, b'{"prompt": "a", "frames": 16}', J, 422, "unknown_field", "frames"),
    ("POST", GEN, b'{"prompt": "a", "phase": 2, "reference_image": "../../etc/passwd"}', J, 422, "invalid_value",
     "reference_image"),
    ("POST", GEN, b'{"prompt": "a", "phase": 3, "image": "/etc/passwd"}', J, 422, "invalid_value", "image"),
    ("POST", GEN, b'{"prompt": "a", "scheduler": "magic"}', J, 422, "invalid_value", "scheduler"),
    ("POST", GEN, b'{"prompt": "a", "guidance_scale": NaN}', J, 422, "invalid_value", "guidance_scale"),
    ("POST", GEN, b'{"prompt": "a", "guidance_scale": 31}', J, 422, "invalid_value", "guidance_scale"),
    ("POST", GEN, b'{"prompt": "a", "visibility": "everyone"}', J, 422, "invalid_value", "visibility"),
    ("POST", GEN, b'{"prompt": "a", "visibility": "private"}', J, 401, "auth_required", "visibility"),
    ("GET", f"{API}/jobs?limit=abc", None, {}, 422, "invalid_value", "limit"),
    ("GET", f"{API}/jobs?limit=100000", None, {}, 422, "invalid_value", "limit"),
    ("GET", f"{API}/jobs?cursor=1;DROP", None, {}, 422, "invalid_value", "cursor"),
    ("GET", f"{API}/jobs?status=done", None, {}, 422, "invalid_value", "status"),
    ("GET", f"{API}/jobs?cursor=99999999999999999999999", None, {}, 422, "invalid_value", "cursor"),
    ("GET", f"{API}/jobs?cursor=9223372036854775808", None, {}, 422, "invalid_value", "cursor"),
    ("GET", f"{API}/jobs?cursor=%C2%B2", None, {}, 422, "invalid_value", "cursor"),
    ("GET", f"{API}/jobs?cursor=%EF%BC%91", None, {}, 422, "invalid_value", "cursor"),
    ("GET", f"{API}/jobs?cursor=-1", None, {}, 422, "invalid_value", "cursor"),
    ("GET", f"{API}/gallery?phase=", None, {}, 422, "invalid_value", "phase"),
    ("GET", f"{API}/gallery?phase=9", None, {}, 422, "invalid_value", "phase"),
    ("GET", f"{API}/gallery?cursor=%C2%B2", None, {}, 422, "invalid_value", "cursor"),
    ("GET", f"/ws/job/{'a' * 200}", None, {}, 404, "not_found", None),
    ("GET", f"{API}/ws/job/{'0' * 31}g", None, {}, 404, "not_found", None),
    ("GET", f"{API}/generation/{'0' * 32}/status", None, {}, 404, "job_not_found", "job_id"),
    ("GET", f"{API}/generation/not-a-job/status", None, {}, 404, "not_found", None),
    ("DELETE", f"{API}/generation/{'0' * 32}", None, {}, 404, "job_not_found", "job_id"),
    ("PUT", GEN, b"{}", J, 405, "method_not_allowed", None),
    ("GET", f"{API}/admin/stats", None, {"Authorization": "Bearer x"}, 401, "invalid_token", "Authorization"),
    ("POST", f"{API}/admin/gc", b"{}", J, 401, "auth_required", "Authorization"),
    ("GET", f"{API}/nope", None, {}, 404, "not_found", None),
]


@pytest.mark.parametrize("method,path,raw,headers,status,code,field", BAD,
                         ids=[f"{i:02d}-{b[5]}-{b[6]}" for i, b in enumerate(BAD)])
async def test_bad_requests_get_4xx_json_and_change_nothing(srv, method, path, raw, headers, status, code, field):
    assert len(BAD) >= 30
    before = store_snapshot(srv)
    resp = await srv.client.fetch(srv.base + path, method=method, body=raw, headers=headers, raise_error=False,
                                  allow_nonstandard_methods=True)
    assert resp.headers["Content-Type"].startswith("application/json"), resp.body[:200]
    body = json.loads(resp.body)
    assert (resp.code, body["error"]["code"], body["error"]["field"]) == (status, code, field), body
    assert set(body) == {"error"} and set(body["error"]) == {"code", "message", "field"}
    assert "Traceback" not in resp.body.decode() and body["error"]["message"]
    assert store_snapshot(srv) == before
    code_, health, _ = await call(srv, "GET", f"{API}/health")
    assert code_ == 200 and health["status"] == "healthy"


async def test_bad_gc_requests(srv):
    admin = srv.tok["admin"]
    for body, field in (({}, "older_than"), ({"older_than": "soon"}, "older_than"), ({"older_than": [7]}, "older_than"),
                        ({"older_than": "7d", "dry_run": "yes"}, "dry_run"), ({"older_than": "7d", "x": 1}, "x"),
                        ({"older_than": float("nan")}, "older_than"), ({"older_than": float("inf")}, "older_than"),
                        ({"older_than": -1}, "older_than"), ({"older_than": 10**400}, "older_than"),
                        ({"older_than": "9" * 400 + "d"}, "older_than")):
        code, got, _ = await call(srv, "POST", f"{API}/admin/gc", body, token=admin)
        assert code == 422 and got["error"]["field"] == field, (body, got)
    for raw in (b'{"older_than": NaN}', b'{"older_than": -Infinity}', b'{"older_than": 1e400}'):
        code, got, _ = await call(srv, "POST", f"{API}/admin/gc", raw=raw, token=admin)
        assert code == 422 and got["error"]["field"] == "older_than", (raw, got)


# -- code-shaped prompts reach the notebook verbatim and run as nothing ----------------------------------------------
NASTY = [
    'a"; import os; os.system("touch {marker}"); "',
    '"""\nopen("{marker}", "w").write("x")\n"""',
    "\\\"; __import__('os').system('touch {marker}') #",
    "x\\\\\" + open('{marker}','w').write('x') + \"",
    "line1\nline2\r\n\ttab \\n not-a-newline \\u0041 \u00e9\u4e2d\U0001f600",
    "'''; exec(\"open('{marker}','w')\"); '''",
    "{{}} {{0}} %s %(x)s $HOME `id` $(touch {marker})",
]


async def test_code_shaped_prompts_are_data(srv, tmp_path):
    marker = tmp_path / f"pwned-{uuid.uuid4().hex}"
    for template in NASTY:
        prompt = "test:echo " + template.format(marker=marker)
        job = await submit(srv, prompt=prompt)
        record = await wait_done(srv, job["job_id"])
        assert record.status.value == "succeeded", record.error
        echoed = json.loads((srv.service.outputs_dir / job["job_id"] / "params.json").read_text())
        assert echoed["prompt"] == prompt
        assert not marker.exists()


# -- durability: the 202 comes after the commit ---------------------------------------------------------------------
async def test_accepted_job_is_committed_before_202(srv):
    from animenb.store import SqliteJobStore

    job = await submit(srv, prompt="test:echo durable")
    other = SqliteJobStore(srv.service.store.db.path)  # a second connection: only committed rows are visible
    try:
        assert other.get(job["job_id"]).parameters["prompt"] == "test:echo durable"
        with other.db.transaction() as cur:
            assert cur.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    finally:
        other.close()
    await wait_done(srv, job["job_id"])


# -- backpressure -----------------------------------------------------------------------------------------------
async def test_bounded_queue_answers_429_with_retry_after(srv):
    cfg = srv.service.config
    saved = cfg.max_queue, cfg.max_queued_per_user
    blocker = await submit(srv, prompt="test:sleep 0.05", steps=150)
    await wait_running(srv, blocker["job_id"])
    queued = []
    try:
        cfg.max_queue, cfg.max_queued_per_user = 3, 2
        queued.append((await submit(srv, srv.tok["user"], prompt="test:echo q1"))["job_id"])
        queued.append((await submit(srv, srv.tok["user"], prompt="test:echo q2"))["job_id"])
        code, body, headers = await call(srv, "POST", GEN, {"prompt": "test:echo q3"}, token=srv.tok["user"])
        assert code == 429 and body["error"]["code"] == "too_many_queued" and int(headers["Retry-After"]) >= 1
        queued.append((await submit(srv, prompt="test:echo anon"))["job_id"])  # another owner still has room
        before = srv.service.store.count()
        for token in (None, srv.tok["admin"]):  # the whole queue is full: admins wait too
            code, body, headers = await call(srv, "POST", GEN, {"prompt": "test:echo q4"}, token=token)
            assert code == 429 and body["error"]["code"] == "queue_full", body
            assert 1 <= int(headers["Retry-After"]) <= 600
        assert srv.service.store.count() == before
    finally:
        cfg.max_queue, cfg.max_queued_per_user = saved
        for job_id in queued + [blocker["job_id"]]:
            await call(srv, "DELETE", f"{API}/generation/{job_id}", token=srv.tok["admin"])
    assert all(srv.service.store.get(j).terminal for j in queued)


# -- out of GPU memory ---------------------------------------------------------------------------------------------
async def test_out_of_memory_fails_the_job_and_frees_the_cache(srv):
    job = await submit(srv, prompt="test:oom")
    record = await wait_done(srv, job["job_id"], timeout=150)
    assert record.status.value == "failed" and record.error.type == "OutOfMemoryError"
    assert "out of GPU memory" in record.error.message and "model cache was freed" in record.error.message
    after = await submit(srv, prompt="test:cacheinfo")  # same warm kernel: the cache is empty now
    record = await wait_done(srv, after["job_id"])
    assert record.status.value == "succeeded", record.error
    assert json.loads((srv.service.outputs_dir / after["job_id"] / "cache.json").read_text()) == []


# -- outputs: no path escapes, private outputs hidden -------------------------------------------------------------
async def test_no_path_escapes_from_outputs(srv):
    job = await submit(srv, prompt="test:echo files")
    await wait_done(srv, job["job_id"])
    job_id = job["job_id"]
    job_dir = srv.service.outputs_dir / job_id
    (job_dir / "link.json").symlink_to("/etc/passwd")
    (job_dir / "dirlink").symlink_to(srv.service.home, target_is_directory=True)
    assert (await call(srv, "GET", f"{API}/outputs/{job_id}/params.json"))[0] == 200
    attempts = [
        f"{job_id}/../../home/jobs.sqlite", f"{job_id}/%2e%2e/%2e%2e/home/jobs.sqlite", f"{job_id}/..%2f..%2fhome",
        f"{job_id}/%2e%2e%2f%2e%2e%2fhome%2fjobs.sqlite", f"{job_id}/.%2e/.%2e/home/jobs.sqlite",
        f"{job_id}/..\\..\\home\\jobs.sqlite", f"{job_id}/link.json", f"{job_id}/dirlink/jobs.sqlite",
        f"{job_id}//etc/passwd", f"{job_id}/%00", f"{job_id}/.hidden", f"{job_id}/", f"{job_id}",
        f"{'0' * 32}/manifest.json", "../home/jobs.sqlite", "%2e%2e/home/jobs.sqlite", "/etc/passwd",
        f"{job_id.upper()}/params.json", f"{job_id}/params.json%00.png",
    ]
    for rel in attempts:
        for prefix in (f"{API}/outputs/", f"{API}/thumbnails/"):
            code, body, _ = await call(srv, "GET", prefix + rel)
            assert code in (400, 403, 404) and isinstance(body, dict) and "error" in body, (prefix + rel, code, body)
            assert b"root:" not in json.dumps(body).encode()


# -- ComfyUI down, full disk: a second server -------------------------------------------------------------------------
def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def small_filesystem(path, size="1m"):
    """A tmpfs of `size` at `path` (needs root); yields False where mounting is not allowed."""
    path.mkdir(parents=True, exist_ok=True)
    if os.geteuid() != 0:
        yield False
        return
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], capture_output=True)
    if done.returncode != 0:
        yield False
        return
    try:
        yield True
    finally:
        subprocess.run(["umount", "-l", str(path)], capture_output=True)


async def test_comfyui_down_and_full_disk(tmp_path, start_live_server):
    with small_filesystem(tmp_path / "outputs", "2m") as mounted:
        async with start_live_server(tmp_path, comfyui_url=f"http://127.0.0.1:{_closed_port()}") as srv:
            code, health, _ = await call(srv, "GET", f"{API}/health")
            assert code == 200 and health["status"] == "degraded" and "comfyui" in health["degraded_components"]
            assert health["components"]["comfyui"]["status"] == "unreachable"
            ok = await submit(srv, prompt="test:echo still usable")  # the diffusers backend still works
            assert (await wait_done(srv, ok["job_id"])).status.value == "succeeded"
            # a full disk: the real thing on a 2 MiB tmpfs, else ENOSPC raised by the notebook past 1 MiB
            fill = await submit(srv, prompt="test:fill" if mounted else "test:fill 1048576")
            record = await wait_done(srv, fill["job_id"])
            assert record.status.value == "failed" and "No space left on device" in record.error.message, record.error
            assert record.error.type in ("OSError", "OSError28") or "OSError" in record.error.message
            (srv.service.outputs_dir / fill["job_id"] / "big.bin").unlink(missing_ok=True)
            after = await submit(srv, prompt="test:echo space again")  # space freed: the next job runs
            assert (await wait_done(srv, after["job_id"])).status.value == "succeeded"
            code, health, _ = await call(srv, "GET", f"{API}/health")
            assert code == 200
