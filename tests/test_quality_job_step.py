"""`score_job`: the quality gate as the job runner's last cell (animenb.quality.job_step)."""
from __future__ import annotations

import json

from animenb.manifest import read_manifest, update_manifest
from animenb.quality import QUALITY_NAME, make_demo_run
from animenb.quality.job_step import score_job


def test_score_job_records_the_decision(tmp_path):
    run = make_demo_run(tmp_path / "run", phase=2, size=64)
    entry = score_job(run, threshold=0.5)
    assert entry["threshold"] == 0.5 and isinstance(entry["score"], float)
    assert entry["passed"] is (entry["score"] >= 0.5 and not entry["failures"])
    assert read_manifest(run)["quality"] == entry
    assert json.loads((run / QUALITY_NAME).read_text())["score"] == entry["score"]
    assert QUALITY_NAME in [f["path"] for f in read_manifest(run)["files"]]


def test_a_scoring_failure_is_recorded_not_raised(tmp_path):
    run = make_demo_run(tmp_path / "run", phase=2, size=64)
    update_manifest(run, outputs={})  # nothing left to score
    entry = score_job(run, phase=2, threshold=0.8)
    assert entry["score"] is None and entry["passed"] is False and entry["threshold"] == 0.8
    assert entry["error"]["type"] == "ValueError" and "outputs.frames" in entry["error"]["message"]
    assert read_manifest(run)["quality"] == entry
    assert not (run / QUALITY_NAME).exists()
