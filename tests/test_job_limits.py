"""What one job may ask of a shared GPU: a cost cap by role (anonymous < user < admin) checked at admission, and a
job timeout after which the job fails with {"type": "Timeout"} and its kernel is interrupted as for a cancel."""
from __future__ import annotations

import pytest
import pytest_asyncio

from animenb.phases.cost import MIN_STEPS, job_cost, orchestration_cost
from animenb.profiles import parameters_dir
from animenb.server.limits import JobLimits
from serverkit import call, submit, wait_done, wait_running

API = "/api/anime"
aio = pytest.mark.asyncio(loop_scope="module")
LIMITS = JobLimits(anonymous=1.0, user=10.0, admin=100.0, timeout_seconds=3.0)


def test_cost_is_pixels_steps_images_plus_frames():
    mp = 512 * 512 / 1e6
    assert job_cost(1, {"width": 512, "height": 512, "steps": 10}, default_size=64) == pytest.approx(
        mp * (10 * 8 + 0.25 * 8))
    assert job_cost(2, {"steps": 15}, default_size=512) == pytest.approx(mp * (15 + 0.25) * (16 + 4))
    # DPM++ SDE calls the model twice per step, and is priced so
    assert job_cost(1, {"width": 512, "height": 512, "steps": 10, "scheduler": "DPM++ SDE Karras"},
                    default_size=64) == pytest.approx(mp * (2 * 10 * 8 + 0.25 * 8))
    # phase 3: SVD's frames (+ the source image), then the re-timed seconds x fps frames
    assert job_cost(3, {"steps": 15}, default_size=512) == pytest.approx(mp * (15 * 26 + 0.25 * (25 + 120)))
    assert job_cost(3, {"steps": 15, "image": "x.png"}, default_size=512) == pytest.approx(
        mp * (15 * 25 + 0.25 * (25 + 120)))
    chain = orchestration_cost({"steps": 2, "width": 64, "height": 64, "max_retries": 2}, default_size=512)
    per_try = sum(job_cost(phase, {"steps": 2, "width": 64, "height": 64, "image": "chained"}, default_size=512)
                  for phase in (1, 2, 3))
    assert chain == pytest.approx(3 * per_try)  # the same function prices each step of the chain


def test_unsized_phase_3_is_priced_at_the_profiles_svd_size():
    mp, svd = 512 * 512 / 1e6, 1024 * 576 / 1e6
    # the source image at SD's 512 px, then SVD's 25 frames and the MP4's 120 at 1024x576 (full_video.svd_size)
    assert job_cost(3, {"steps": 15}, default_size=512, svd_size=(1024, 576)) == pytest.approx(
        mp * 15 + svd * (15 * 25 + 0.25 * (25 + 120)))
    assert job_cost(3, {"steps": 15, "image": "x.png"}, default_size=512, svd_size=(1024, 576)) == pytest.approx(
        svd * (15 * 25 + 0.25 * (25 + 120)))
    # a size the request gives is what every image renders at, as before; other phases never render SVD
    sized = {"steps": 15, "width": 512, "height": 512}
    assert job_cost(3, sized, default_size=512, svd_size=(1024, 576)) == job_cost(3, sized, default_size=512)
    for phase in (1, 2):
        assert job_cost(phase, {}, default_size=512, svd_size=(1024, 576)) == job_cost(phase, {}, default_size=512)
    chain = orchestration_cost({"steps": 2}, default_size=512, svd_size=(1024, 576))
    assert chain == pytest.approx(sum(job_cost(phase, {"steps": 2, "image": "chained"}, default_size=512,
                                               svd_size=(1024, 576)) for phase in (1, 2, 3)))


def test_one_step_or_many_output_frames_cannot_hide_the_work():
    limits = JobLimits()
    # 1,800 re-timed frames of 2048 px from 2 SVD frames at 1 step: once 8.4, under the anonymous cap
    huge_video = {"image": "x.png", "steps": 1, "frames": 2, "width": 2048, "height": 2048, "seconds": 30, "fps": 60}
    assert job_cost(3, huge_video, default_size=512) > limits.max_cost("user")
    # phase 2 at 2048 px and 1 step (97 s, 4.9 GB on the kernel): counted as MIN_STEPS steps
    assert job_cost(2, {"steps": 1, "width": 2048, "height": 2048}, default_size=512) > limits.max_cost("anonymous")
    assert job_cost(2, {"steps": 1}, default_size=512) == job_cost(2, {"steps": MIN_STEPS}, default_size=512)


def test_default_caps_keep_default_jobs_and_refuse_the_abusive_one():
    limits = JobLimits()
    assert limits.max_cost("anonymous") < limits.max_cost("user") < limits.max_cost("admin")
    for phase in (1, 2, 3):  # the phases' defaults at SD 1.5's 512 px and SVD-XT's 1024x576: any caller may
        assert job_cost(phase, {}, default_size=512, svd_size=(1024, 576)) <= limits.max_cost("anonymous")
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
    # 256 px x (15 steps x 8 poses + 8 frames / 4) = 8.0; 512 px: 32.0; 1024 px x 60 steps: 504
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
        assert "seconds x fps" in limits["job_cost"]["formula"]
        assert limits["http"]["max_body_bytes"] == 64 * 1024 and limits["profile_default_size"] == 64
        assert limits["profile_svd_size"] == [64, 64]  # the tiny profile has no `sizes.svd`


@aio
async def test_the_server_prices_phase_3_at_its_profiles_svd_size(tmp_path_factory, start_live_server):
    home = tmp_path_factory.mktemp("svd_cost")
    profile = home / "wide-svd.yaml"  # the tiny profile, with an SVD size of its own
    profile.write_text((parameters_dir() / "models" / "tiny.yaml").read_text().replace(
        "name: tiny\n", "name: wide-svd\nsizes:\n  svd: [512, 256]\n"))
    async with start_live_server(home, models=str(profile), job_limits=LIMITS) as server:
        # unsized: 64 px source (0.06) + 512x256 x (15 x 25 + 0.25 x 145) = 54, past the user's 10
        token = server.service.tokens.create("user1", "user")[1]
        code, data, _ = await call(server, "POST", f"{API}/generate", {"prompt": "a fox", "phase": 3},
                                   token=token)
        assert code == 422 and data["error"]["code"] == "job_too_costly", data
        assert "(512 x 256 px x 15 steps" in data["error"]["message"]
        assert (await call(server, "GET", f"{API}/phases"))[1]["limits"]["profile_svd_size"] == [512, 256]


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
