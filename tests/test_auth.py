"""Bearer tokens: hashed storage, the CLI, anonymous endpoints, private jobs, admin-only endpoints, WebSocket auth."""
from __future__ import annotations

import pytest
import pytest_asyncio
import tornado.web
from tornado.httpserver import HTTPServer
from tornado.testing import bind_unused_port
from tornado.httpclient import HTTPClientError

from serverkit import call, submit, wait_done, ws_messages

pytestmark = [pytest.mark.asyncio(loop_scope="module"), pytest.mark.timeout(180)]
API = "/api/anime"


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def srv(tmp_path_factory, start_live_server):
    async with start_live_server(tmp_path_factory.mktemp("auth")) as server:
        tokens = server.service.tokens
        server.tok = {name: tokens.create(name, role)[1]
                      for name, role in (("root", "admin"), ("alice", "user"), ("bob", "user"))}
        yield server


# -- anonymous access where the contract says so ------------------------------------------------------------
async def test_anonymous_endpoints_stay_open(srv):
    for path in ("/health", "/jobs", "/gallery", "/phases"):
        code, body, _ = await call(srv, "GET", API + path)
        assert code == 200, (path, body)
    job = await submit(srv, prompt="test:echo anonymous")
    assert (await call(srv, "GET", job["status_url"]))[0] == 200
    assert (await wait_done(srv, job["job_id"])).owner == "anonymous"
    code, jobs, _ = await call(srv, "GET", API + "/jobs")
    assert jobs["user"] == "anonymous" and job["job_id"] in [j["job_id"] for j in jobs["jobs"]]
    messages, close_code, _ = await ws_messages(job["ws_url"])
    assert messages[-1]["event"] == "finished" and close_code == 1000


async def test_bad_tokens_are_401_everywhere(srv):
    for headers in ({"Authorization": "Bearer anb_00000000_nope"}, {"Authorization": "Basic dXNlcjpwYXNz"},
                    {"Authorization": "Bearer "}, {"Authorization": "anb_only"}):
        for method, path in (("GET", "/health"), ("GET", "/jobs"), ("POST", "/generate")):
            code, body, hdrs = await call(srv, method, API + path, {"prompt": "a"}, headers=headers)
            assert code == 401 and body["error"]["code"] == "invalid_token", (headers, path, body)
            assert hdrs["WWW-Authenticate"].startswith("Bearer")


async def test_admin_stats_needs_an_admin(srv):
    code, body, headers = await call(srv, "GET", API + "/admin/stats")
    assert code == 401 and body["error"]["code"] == "auth_required" and "Bearer" in headers["WWW-Authenticate"]
    code, body, _ = await call(srv, "GET", API + "/admin/stats", token=srv.tok["alice"])
    assert code == 403 and body["error"]["code"] == "forbidden"
    code, body, _ = await call(srv, "GET", API + "/admin/stats", token=srv.tok["root"])
    assert code == 200 and "queue" in body
    for token, expected in ((None, 401), (srv.tok["bob"], 403)):
        code, body, _ = await call(srv, "POST", API + "/admin/gc", {"older_than": "7d"}, token=token)
        assert code == expected


# -- ownership and visibility ------------------------------------------------------------------------------
async def test_private_jobs_are_hidden_from_others(srv):
    tok = srv.tok
    mine = await submit(srv, tok["alice"], prompt="test:echo alice private")
    assert mine["status"] == "queued"
    done = await wait_done(srv, mine["job_id"])
    assert done.owner == "alice" and done.visibility == "private" and done.status.value == "succeeded"
    job_id = mine["job_id"]
    status_url, output = mine["status_url"], f"{API}/outputs/{job_id}/params.json"
    # anonymous and bob: the job does not exist for them
    for token in (None, tok["bob"]):
        for method, path in (("GET", status_url), ("GET", f"{API}/generation/{job_id}"), ("GET", output),
                             ("DELETE", f"{API}/generation/{job_id}"), ("GET", f"{API}/outputs/{job_id}/manifest.json")):
            code, body, _ = await call(srv, method, path, token=token)
            assert code == 404 and body["error"]["code"] == "job_not_found", (token, path, body)
        code, jobs, _ = await call(srv, "GET", API + "/jobs?limit=200", token=token)
        assert job_id not in [j["job_id"] for j in jobs["jobs"]]
    code, gallery, _ = await call(srv, "GET", API + "/gallery")
    assert job_id not in [i["job_id"] for i in gallery["gallery"]]
    # alice and the admin see it
    for token in (tok["alice"], tok["root"]):
        code, body, _ = await call(srv, "GET", status_url, token=token)
        assert code == 200 and body["owner"] == "alice" and body["visibility"] == "private"
        code, body, _ = await call(srv, "GET", output, token=token)
        assert code == 200 and body["prompt"] == "test:echo alice private"
    code, jobs, _ = await call(srv, "GET", API + "/jobs", token=tok["alice"])
    assert jobs["user"] == "alice" and {j["owner"] for j in jobs["jobs"]} == {"alice"} and jobs["count"] >= 1
    # WebSocket: header or ?token=; without it "not found"
    ws = f"ws://127.0.0.1:{srv.port}/ws/job/{job_id}"
    messages, close_code, reason = await ws_messages(ws)
    assert messages == [] and close_code == 4404 and reason == f"Job not found: {job_id}"
    messages, close_code, _ = await ws_messages(ws, headers={"Authorization": f"Bearer {tok['bob']}"})
    assert close_code == 4404
    for url, headers in ((f"{ws}?token={tok['alice']}", None), (ws, {"Authorization": f"Bearer {tok['root']}"})):
        messages, close_code, _ = await ws_messages(url, headers=headers)
        assert [m["event"] for m in messages] == ["state", "finished"] and close_code == 1000
    messages, close_code, _ = await ws_messages(f"{ws}?token=anb_00000000_bad")
    assert close_code == 4401
    with pytest.raises(HTTPClientError):  # tornado's check_origin: cross-origin upgrades refused
        await ws_messages(f"{ws}?token={tok['alice']}", headers={"Origin": "http://evil.example"})


async def test_cancel_rules_and_visibility_field(srv):
    tok = srv.tok
    code, body, _ = await call(srv, "POST", API + "/generate", {"prompt": "a", "visibility": "private"})
    assert code == 401 and body["error"]["field"] == "visibility"
    code, body, _ = await call(srv, "POST", API + "/generate", {"prompt": "a", "visibility": "secret"},
                               token=tok["alice"])
    assert code == 422 and body["error"]["field"] == "visibility"
    blocker = await submit(srv, tok["alice"], prompt="test:sleep 0.05", steps=100, visibility="public")
    public = await submit(srv, tok["alice"], prompt="test:echo alice public", visibility="public")
    code, body, _ = await call(srv, "GET", public["status_url"])
    assert code == 200 and body["visibility"] == "public"  # readable by anyone...
    for token in (None, tok["bob"]):  # ...but only alice or an admin may cancel it
        code, body, _ = await call(srv, "DELETE", f"{API}/generation/{public['job_id']}", token=token)
        assert code == 403 and body["error"]["code"] == "forbidden"
    code, body, _ = await call(srv, "DELETE", f"{API}/generation/{public['job_id']}", token=tok["alice"])
    assert code == 200 and body["status"] == "cancelled"
    code, body, _ = await call(srv, "DELETE", f"{API}/generation/{blocker['job_id']}", token=tok["root"])
    assert code == 200 and (await wait_done(srv, blocker["job_id"])).status.value == "cancelled"
    anon = await submit(srv, prompt="test:echo cancel token")  # anonymous jobs: whoever holds its cancel_token
    code, body, _ = await call(srv, "DELETE", f"{API}/generation/{anon['job_id']}", token=tok["bob"])
    assert code == 403 and body["error"]["field"] == "cancel_token"
    code, body, _ = await call(srv, "DELETE", f"{API}/generation/{anon['job_id']}", token=tok["bob"],
                               headers={"X-Cancel-Token": anon["cancel_token"]})
    assert code in (200, 409)


async def test_jobs_listing_scopes(srv):
    tok = srv.tok
    await wait_done(srv, (await submit(srv, tok["bob"], prompt="test:echo bob"))["job_id"])
    code, everything, _ = await call(srv, "GET", API + "/jobs?owner=*&limit=200", token=tok["root"])
    assert code == 200 and {"alice", "bob", "anonymous"} <= {j["owner"] for j in everything["jobs"]}
    code, bobs, _ = await call(srv, "GET", API + "/jobs?owner=bob", token=tok["root"])
    assert {j["owner"] for j in bobs["jobs"]} == {"bob"}
    code, body, _ = await call(srv, "GET", API + "/jobs?owner=*", token=tok["alice"])
    assert code == 403
    code, body, _ = await call(srv, "GET", API + "/jobs?owner=bob")
    assert code == 401
    code, anon, _ = await call(srv, "GET", API + "/jobs?limit=200")
    assert all(j["visibility"] == "public" for j in anon["jobs"])


async def test_revoked_token_stops_at_once(srv):
    record, token = srv.service.tokens.create("temp", "user")
    assert (await call(srv, "GET", API + "/jobs", token=token))[1]["user"] == "temp"
    srv.service.tokens.revoke(record.id)
    code, body, _ = await call(srv, "GET", API + "/jobs", token=token)
    assert code == 401 and body["error"]["code"] == "invalid_token"


# -- the helper other admin-only handlers use (e.g. POST /orchestrate) ------------------------------------------
async def test_require_role_helpers_on_another_handler(srv):
    from animenb.server.auth import AdminRequiredMixin, require_role, role_required
    from animenb.server.handlers import BaseHandler

    class MixinHandler(AdminRequiredMixin, BaseHandler):
        def post(self):
            self.write_json({"ok": True, "by": self.identity.name})

    class PrepareHandler(BaseHandler):
        def prepare(self):
            super().prepare()
            require_role(self, "user")

        def get(self):
            self.write_json({"user": self.user})

    class DecoratedHandler(BaseHandler):
        @role_required("admin")
        async def get(self):
            self.write_json({"ok": True})

    app = tornado.web.Application([("/mixin", MixinHandler), ("/prepare", PrepareHandler),
                                   ("/decorated", DecoratedHandler)], animenb=srv.service)
    sock, port = bind_unused_port()
    server = HTTPServer(app)
    server.add_sockets([sock])
    other = type("S", (), {"client": srv.client, "base": f"http://127.0.0.1:{port}"})()
    try:
        for method, path, good, weak in (("POST", "/mixin", "root", "alice"), ("GET", "/prepare", "alice", None),
                                         ("GET", "/decorated", "root", "bob")):
            assert (await call(other, method, path, {} if method == "POST" else None))[0] == 401
            if weak:
                code, body, _ = await call(other, method, path, {} if method == "POST" else None, token=srv.tok[weak])
                assert code == 403 and body["error"]["code"] == "forbidden"
            code, body, _ = await call(other, method, path, {} if method == "POST" else None, token=srv.tok[good])
            assert code == 200, body
    finally:
        server.stop()


async def test_private_outputs_cannot_be_reused_by_others(srv):
    private = await submit(srv, token=srv.tok["alice"], prompt="test:progress 0.01")
    assert (await wait_done(srv, private["job_id"])).status.value == "succeeded"
    body = {"prompt": "test:echo reuse", "phase": 2, "reference_image": f"{private['job_id']}/image.png", "steps": 2}
    for token in (None, srv.tok["bob"]):  # answered exactly like a job without outputs
        code, err, _ = await call(srv, "POST", API + "/generate", body, token=token)
        assert code == 422 and err["error"]["field"] == "reference_image", err
        assert "has no finished outputs" in err["error"]["message"]
    code, err, _ = await call(srv, "POST", API + "/generate", body, token=srv.tok["bob"])
    missing = {**body, "reference_image": "0" * 32 + "/image.png"}
    code_missing, err_missing, _ = await call(srv, "POST", API + "/generate", missing, token=srv.tok["bob"])
    assert (code, err["error"]["message"].replace(private["job_id"], "X")) == \
        (code_missing, err_missing["error"]["message"].replace("0" * 32, "X"))
    for token in (srv.tok["alice"], srv.tok["root"]):  # the owner and admins may
        code, job, _ = await call(srv, "POST", API + "/generate", body, token=token)
        assert code == 202, job
        await wait_done(srv, job["job_id"])
