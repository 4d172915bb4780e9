"""Retention (`animenb gc`): old finished jobs and their files go; queued, running and recent ones stay."""
from __future__ import annotations

import time

import pytest

from animenb.retention import collect_garbage, parse_age
from animenb.store import JobError, JobStatus, SqliteJobStore

DAY = 86400.0


@pytest.mark.parametrize("text,seconds", [("7d", 7 * DAY), ("12h", 43200), ("30m", 1800), ("45s", 45), ("2w", 14 * DAY),
                                          ("1.5d", 1.5 * DAY), (" 3d ", 3 * DAY), (60, 60.0)])
def test_parse_age(text, seconds):
    assert parse_age(text) == seconds


@pytest.mark.parametrize("text", ["7", "7y", "-1d", "d", "", "7d; rm -rf /", -5])
def test_parse_age_rejects(text):
    with pytest.raises(ValueError):
        parse_age(text)


def make_jobs(tmp_path):
    store = SqliteJobStore(tmp_path / "home" / "jobs.sqlite")
    outputs, thumbs = tmp_path / "outputs", tmp_path / "home" / "thumbnails"
    jobs = {}
    for name, status in [("old_ok", "succeeded"), ("old_failed", "failed"), ("old_cancelled", "cancelled"),
                         ("recent_ok", "succeeded"), ("old_queued", "queued"), ("old_running", "running"),
                         ("parent_running", "running"), ("child_of_running", "succeeded")]:
        job = store.create(phase=1, parameters={"prompt": name},
                           parent_id=jobs["parent_running"].id if name == "child_of_running" else None)
        if status != "queued":
            with store.db.transaction() as cur:  # claim exactly this one
                cur.execute("UPDATE jobs SET status = 'running', attempts = 1 WHERE id = ?", (job.id,))
        if status in ("succeeded", "failed", "cancelled"):
            store.transition(job.id, status, error=None if status == "succeeded" else JobError("X", "x"))
        jobs[name] = store.get(job.id)
        (outputs / job.id).mkdir(parents=True)
        (outputs / job.id / "image.png").write_bytes(b"x" * 1000)
        (thumbs / job.id).mkdir(parents=True)
        (thumbs / job.id / "image.png.png").write_bytes(b"t" * 10)
    old = time.time() - 30 * DAY
    with store.db.transaction() as cur:
        for name, job in jobs.items():
            if name != "recent_ok":
                cur.execute("UPDATE jobs SET created_at = ?, finished_at = CASE WHEN finished_at IS NULL THEN NULL "
                            "ELSE ? END WHERE id = ?", (old, old, job.id))
    return store, outputs, thumbs, jobs


def test_gc_deletes_only_old_finished_jobs(tmp_path):
    store, outputs, thumbs, jobs = make_jobs(tmp_path)
    orphan = outputs / ("e" * 32)
    orphan.mkdir()
    (orphan / "x.bin").write_bytes(b"o" * 500)
    young_orphan = outputs / ("d" * 32)
    young_orphan.mkdir()
    not_a_job = outputs / "20250101-character_sheet-abc123"
    not_a_job.mkdir()
    import os

    os.utime(orphan, (time.time() - 30 * DAY,) * 2)
    os.utime(not_a_job, (time.time() - 30 * DAY,) * 2)

    dry = collect_garbage(store, outputs, older_than=parse_age("7d"), thumbnails_dir=thumbs, dry_run=True)
    gone = {"old_ok", "old_failed", "old_cancelled"}
    assert set(dry.jobs) == {jobs[n].id for n in gone} and dry.orphans == ["e" * 32]
    assert store.count() == len(jobs) and orphan.exists()

    report = collect_garbage(store, outputs, older_than=parse_age("7d"), thumbnails_dir=thumbs)
    assert set(report.jobs) == {jobs[n].id for n in gone} and report.orphans == ["e" * 32]
    assert report.bytes_freed == 3 * 1010 + 500 and not report.errors
    for name, job in jobs.items():
        exists = (outputs / job.id).exists()
        if name in gone:
            assert not exists and not (thumbs / job.id).exists()
            with pytest.raises(KeyError):
                store.get(job.id)
        else:
            assert exists and store.get(job.id).status.value == job.status.value
    assert not orphan.exists() and young_orphan.exists() and not_a_job.exists()
    again = collect_garbage(store, outputs, older_than=parse_age("7d"), thumbnails_dir=thumbs)
    assert again.jobs == [] and again.orphans == []


def test_gc_cli(tmp_path, capsys):
    from animenb.cli import main

    store, outputs, thumbs, jobs = make_jobs(tmp_path)
    args = ["gc", "--older-than", "7d", "--home", str(tmp_path / "home"), "--outputs", str(outputs)]
    assert main(args + ["--dry-run"]) == 0
    assert "would delete 3 job(s)" in capsys.readouterr().out
    assert store.count() == len(jobs)
    assert main(args) == 0
    assert "deleted 3 job(s)" in capsys.readouterr().out
    assert store.count() == len(jobs) - 3
    assert store.get(jobs["old_running"].id).status is JobStatus.RUNNING
    assert main(["gc", "--older-than", "soon", "--home", str(tmp_path / "home")]) == 2
