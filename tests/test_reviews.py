"""Reviewers' verdicts: POST /generation/{id}/review and GET /reviews on a live server (real SQLite, Tornado)."""
from __future__ import annotations

import json

import pytest
import pytest_asyncio

from animenb.server.reviews import review_store
from animenb.store.reviews_sqlite import SqliteReviewStore
from serverkit import call, submit, wait_done

pytestmark = [pytest.mark.asyncio(loop_scope="module"), pytest.mark.timeout(180)]
API = "/api/anime"


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def srv(tmp_path_factory, start_live_server):
    async with start_live_server(tmp_path_factory.mktemp("reviews")) as server:
        tokens = server.service.tokens
        server.tok = {name: tokens.create(name, role)[1] for name, role in (("root", "admin"), ("alice", "user"))}
        yield server


async def test_a_verdict_per_reviewer_latest_wins_and_listed(srv):
    job = await submit(srv, prompt="test:echo review me")
    await wait_done(srv, job["job_id"])
    url = f"{API}/generation/{job['job_id']}/review"
    code, body, _ = await call(srv, "POST", url, {"verdict": "bad", "note": "hands"}, token=srv.tok["alice"])
    assert code == 201 and body["verdict"] == "bad" and body["reviewer"] == "alice" and body["note"] == "hands"
    code, body, _ = await call(srv, "POST", url, {"verdict": "good"}, token=srv.tok["alice"])
    assert code == 201 and body["verdict"] == "good"
    await call(srv, "POST", url, {"verdict": "bad"}, token=srv.tok["root"])
    code, body, _ = await call(srv, "GET", f"{API}/reviews?job_id={job['job_id']}", token=srv.tok["alice"])
    assert code == 200 and sorted((r["reviewer"], r["verdict"]) for r in body["reviews"]) == [("alice", "good"),
                                                                                              ("root", "bad")]
    code, body, _ = await call(srv, "GET", f"{API}/generation/{job['job_id']}/status", token=srv.tok["alice"])
    assert code == 200 and [(r["reviewer"], r["verdict"]) for r in body["reviews"]] == [("root", "bad"),
                                                                                       ("alice", "good")]
    unreviewed = await submit(srv, prompt="test:echo nobody looked")
    await wait_done(srv, unreviewed["job_id"])
    code, body, _ = await call(srv, "GET", f"{API}/generation/{unreviewed['job_id']}/status")
    assert code == 200 and body["reviews"] == []


async def test_bad_reviews_are_clear_4xx(srv):
    job = await submit(srv, prompt="test:echo bad reviews")
    await wait_done(srv, job["job_id"])
    url = f"{API}/generation/{job['job_id']}/review"
    code, body, _ = await call(srv, "POST", url, {"verdict": "good"})
    assert code == 401 and body["error"]["code"] == "auth_required"
    code, body, _ = await call(srv, "POST", url, {"verdict": "meh"}, token=srv.tok["alice"])
    assert code == 422 and body["error"]["field"] == "verdict" and "meh" in body["error"]["message"]
    code, body, _ = await call(srv, "POST", url, {"verdict": "good", "note": 5}, token=srv.tok["alice"])
    assert code == 422 and body["error"]["field"] == "note"
    code, body, _ = await call(srv, "POST", f"{API}/generation/{'0' * 32}/review", {"verdict": "good"},
                               token=srv.tok["alice"])
    assert code == 404
    assert (await call(srv, "GET", f"{API}/reviews"))[0] == 401


async def test_review_store_keeps_one_verdict_per_reviewer():
    store = SqliteReviewStore()
    store.record("j1", "ann", "good")
    store.record("j1", "ann", "bad", "blurry")
    store.record("j2", "ann", "good")
    assert [(r["job_id"], r["verdict"]) for r in store.list("j1")] == [("j1", "bad")]
    assert len(store.list()) == 2
    with pytest.raises(ValueError, match="verdict"):
        store.record("j1", "ann", "fine")


async def test_calibrate_fits_the_gates_to_verdicts_and_the_server_uses_them(srv, capsys):
    """Reviewers call scored outputs good or bad; `animenb calibrate` writes a config into the home that
    /health then names. Jobs here are scored by hand-written quality summaries in the store."""
    from animenb.cli import main
    from animenb.quality.config import CALIBRATED_NAME

    store, reviews = srv.service.store, review_store(srv.service)
    for k in range(12):
        job = await submit(srv, prompt=f"test:echo calibrate {k}")
        await wait_done(srv, job["job_id"])
        good = k % 2 == 0
        metrics = {"loop_seam": 0.9 if good else 0.2, "temporal_flicker": 0.9, "motion_smoothness": 0.9,
                   "motion_regularity": 0.9, "subject_consistency": 0.9, "cleanliness": 0.9}
        outputs = {**store.get(job["job_id"]).outputs.as_dict(),
                   "quality": {"phase": "ANIMATION_LOOP", "score": 0.9, "passed": True, "metrics": metrics}}
        with store.db.transaction() as cur:  # what the quality step writes for a scored phase job
            cur.execute("UPDATE jobs SET outputs = ? WHERE id = ?", (json.dumps(outputs), job["job_id"]))
        reviews.record(job["job_id"], "alice", "good" if good else "bad")
    home = srv.service.home
    assert main(["calibrate", "--home", str(home), "--no-suite", "--folds", "3"]) == 0
    out = capsys.readouterr().out
    assert "12 reviewed outputs" in out and "cross-validated" in out
    assert (home / CALIBRATED_NAME).is_file()
    code, body, _ = await call(srv, "GET", API + "/health")
    assert body["quality_config"].endswith(CALIBRATED_NAME)
