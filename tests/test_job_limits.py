"""What one job may ask of a shared GPU: a cost cap by role (anonymous < user < admin) checked at admission, and a
job timeout after which the job fails with {"type": "Timeout"} and its kernel is interrupted as for a cancel."""
from __future__ import annotations

import pytest
import pytest_asyncio

from animenb.phases.cost import job_cost, orchestration_cost
from animenb.server.limits import JobLimits
from serverkit import call, submit, wait_done, wait_running

API = "/api/anime"
aio = pytest.mark.asyncio(loop_scope="module")
LIMITS = JobLimits(anonymous=1.0, user=10.0, admin=100.0, timeout_seconds=3.0)


def test_cost_is_pixels_steps_images():
    assert job_cost(1, {"width": 512, "height": 512, "steps": 10}, default_size=64) == 512 * 512 * 10 * 8 / 1e6
    assert job_cost(2, {"steps": 15}, default_size=512) == 512 * 512 * 15 * (16 + 4) / 1e6
    assert job_cost(3, {"steps": 15}, default_size=512) == 512 * 512 * 15 * (25 + 1) / 1e6  # + the source image
    assert job_cost(3, {"steps": 15, "image": "x.png"}, default_size=512) == 512 * 512 * 15 * 25 / 1e6
    chain = orchestration_cost({"steps": 2, "width": 64, "height": 64, "max_retries": 2}, default_size=512)
    assert chain == pytest.approx(3 * 64 * 64 * 2 * (8 + 20 + 25) / 1e6)


def test_default_caps_keep_default_jobs_and_refuse_the_abusive_one():
    limits = JobLimits()
    assert limits.max_cost("anonymous") < limits.max_cost("user") < limits.max_cost("admin")
    for phase in (1, 2, 3):  # the phases' defaults at SD 1.5's 512 px: any caller may queue them
        assert job_cost(phase, {}, default_size=512) <= limits.max_cost("anonymous")
    abusive = {"width": 2048, "height": 2048, "steps": 150, "frames": 60}  # what one caller queued 64 times
    assert job_cost(2, abusive, default_size=512) > limits.max_cost("admin")
    with pytest.raises(ValueError, match="role"):
        limits.max_cost("root")
    with pytest.raises(ValueError, match="timeout_seconds"):
        JobLimits(timeout_seconds=-1)


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def srv(tmp_path_factory, start_live_server):
    async with start_live_server(tmp_path_factory.mktemp("job_limits"), job_limits=LIMITS) as server:
        server.tok = {"user": server.service.tokens.create("user1", "user")[1],
                      "admin": server.service.tokens.create("admin1", "admin")[1]}
        yield server


@aio
@pytest.mark.timeout(180)
async def test_cost_caps_by_role(srv):
    before = srv.service.store.count()
    # 256 px x 15 steps x 8 poses = 7.9; 512 px: 31.5; 1024 px x 60 steps: 503
    for body, allowed in (({"width": 256, "height": 256, "steps": 15}, {"user", "admin"}),
                          ({"width": 512, "height": 512, "steps": 15}, {"admin"}),
                          ({"width": 1024, "height": 1024, "steps": 60}, set())):
        for role in ("anonymous", "user", "admin"):
            code, data, _ = await call(srv, "POST", f"{API}/generate", {"prompt": "test:echo cost", **body},
                                       token=srv.tok.get(role))
            if role in allowed:
                assert code == 202, (role, body, data)
                await wait_done(srv, data["job_id"])
            else:
                assert code == 422 and data["error"]["code"] == "job_too_costly", (role, body, data)
                assert f"{role} callers may queue at most" in data["error"]["message"]
    assert srv.service.store.count() == before + 3
    code, data, _ = await call(srv, "POST", f"{API}/generate", {"prompt": "test:echo", "phase": 2, "steps": 150,
                                                                "width": 2048, "height": 2048, "frames": 60},
                               token=srv.tok["admin"])
    assert code == 422 and data["error"]["code"] == "job_too_costly"


@aio
async def test_limits_are_published(srv):
    for path in ("/phases", "/health"):
        code, body, _ = await call(srv, "GET", API + path)
        assert code == 200
        limits = body["limits"]
        assert limits["job_cost"]["max_by_role"] == {"anonymous": 1.0, "user": 10.0, "admin": 100.0}
        assert "megapixel-steps" in limits["job_cost"]["unit"] and limits["job_timeout_seconds"] == 3.0
        assert limits["http"]["max_body_bytes"] == 64 * 1024 and limits["profile_default_size"] == 64


@aio
@pytest.mark.timeout(180)
async def test_a_job_past_the_timeout_fails_and_the_kernel_moves_on(srv):
    job = await submit(srv, srv.tok["admin"], prompt="test:sleep 0.1", steps=150)  # 15 s of sleeps; limit 3 s
    await wait_running(srv, job["job_id"])
    record = await wait_done(srv, job["job_id"], timeout=60)
    assert record.status.value == "failed" and record.error.type == "Timeout", record.error
    assert "3 s" in record.error.message
    code, status, _ = await call(srv, "GET", f"{API}/generation/{job['job_id']}/status", token=srv.tok["admin"])
    assert status["error"]["type"] == "Timeout"
    after = await submit(srv, prompt="test:progress", steps=2)  # the kernel takes the next job
    assert (await wait_done(srv, after["job_id"])).status.value == "succeeded"
