"""Job store: states, guarded transitions, pagination, restart recovery, migrations (real SQLite)."""
import sqlite3
import threading

import pytest

from animenb.store import InvalidTransitionError, JobError, JobNotFoundError, JobOutputs, JobStatus, SqliteJobStore
from animenb.store.jobs_sqlite import CLAIM_NEXT_QUERY
from animenb.store.migrations import Migrator


@pytest.fixture
def store(tmp_path):
    s = SqliteJobStore(tmp_path / "jobs.db")
    yield s
    s.close()


def test_wal_and_schema(store):
    assert store.db.journal_mode == "wal"
    assert store.schema_version == Migrator(store.db).latest >= 2
    with store.db.transaction() as cur:
        assert cur.execute("PRAGMA busy_timeout").fetchone()[0] == 5000


def test_create_is_durable_across_connections(tmp_path):
    s = SqliteJobStore(tmp_path / "jobs.db")
    job = s.create(phase=1, parameters={"prompt": "a"}, owner="alice", visibility="private")
    other = SqliteJobStore(tmp_path / "jobs.db")  # a second connection sees the committed row
    got = other.get(job.id)
    assert (got.status, got.parameters, got.owner, got.visibility, got.status_sequence) == (
        JobStatus.QUEUED, {"prompt": "a"}, "alice", "private", 1)
    s.close()
    other.close()


def test_only_harmless_writes_skip_the_fsync(tmp_path):
    """Acceptance and terminal states commit with synchronous=FULL; progress and queued -> running with
    NORMAL (still crash-safe in WAL mode), and the connection is back at FULL after each of them."""
    s = SqliteJobStore(tmp_path / "jobs.db")
    seen = []
    s.db._conn.set_trace_callback(lambda sql: seen.append(sql.strip()) if "synchronous" in sql else None)
    job = s.create(phase=1, parameters={"prompt": "a"})
    assert seen == []
    s.claim_next("w1")
    s.update_progress(job.id, {"percent": 50.0})
    assert seen == ["PRAGMA synchronous = NORMAL", "PRAGMA synchronous = FULL"] * 2
    seen.clear()
    s.transition(job.id, JobStatus.SUCCEEDED)
    assert seen == []
    with s.db.read() as cur:
        assert cur.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL
    s.close()
    other = SqliteJobStore(tmp_path / "jobs.db")
    assert other.get(job.id).status is JobStatus.SUCCEEDED
    other.close()


def test_reads_take_no_write_lock(tmp_path):
    s = SqliteJobStore(tmp_path / "jobs.db")
    writer = sqlite3.connect(tmp_path / "jobs.db", isolation_level=None, timeout=0.1)
    with s.db.read() as cur:
        cur.execute("SELECT COUNT(*) FROM jobs").fetchone()
        writer.execute("BEGIN IMMEDIATE")  # would time out ("database is locked") under BEGIN IMMEDIATE
        writer.execute("ROLLBACK")
    writer.close()
    s.close()


def test_claim_next_is_fifo_and_atomic(store):
    ids = [store.create(phase=1, parameters={"i": i}).id for i in range(5)]
    claimed, lock = [], threading.Lock()

    def claim():
        while (job := store.claim_next("w")) is not None:
            with lock:
                claimed.append(job.id)

    threads = [threading.Thread(target=claim) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(claimed) == sorted(ids) and len(set(claimed)) == 5
    job = store.get(ids[0])
    assert job.status is JobStatus.RUNNING and job.attempts == 1 and job.started_at and job.status_sequence == 2


def test_terminal_states_are_final(store):
    job = store.create(phase=1, parameters={})
    store.claim_next("w")
    done = store.transition(job.id, JobStatus.SUCCEEDED, outputs=JobOutputs(files=["a.png"]))
    assert done.finished_at and done.status_sequence == 3 and done.outputs == JobOutputs(files=["a.png"])
    for status in JobStatus:
        with pytest.raises(InvalidTransitionError):
            store.transition(job.id, status)
    assert store.get(job.id).status is JobStatus.SUCCEEDED


def test_expected_guard_and_error_fields(store):
    job = store.create(phase=2, parameters={})
    with pytest.raises(InvalidTransitionError):
        store.transition(job.id, JobStatus.CANCELLED, expected=[JobStatus.RUNNING])
    cancelled = store.transition(job.id, JobStatus.CANCELLED, error=JobError("Cancelled", "by request"))
    assert cancelled.error.as_dict() == {"type": "Cancelled", "message": "by request"}
    with pytest.raises(JobNotFoundError):
        store.get("nope")


def test_claim_by_transition_records_the_worker(store):
    """The runner's priority claim (orchestration children) goes through transition(), not claim_next()."""
    job = store.create(phase=1, parameters={})
    claimed = store.transition(job.id, JobStatus.RUNNING, expected=[JobStatus.QUEUED], worker="host:1/cuda:0")
    assert claimed.status is JobStatus.RUNNING and claimed.attempts == 1 and claimed.worker == "host:1/cuda:0"


def test_progress_only_while_running(store):
    job = store.create(phase=1, parameters={})
    assert not store.update_progress(job.id, {"percent": 5})
    store.claim_next("w")
    assert store.update_progress(job.id, {"percent": 50.0, "eta_seconds": 1.5})
    assert store.get(job.id).progress == {"percent": 50.0, "eta_seconds": 1.5}


def test_list_newest_first_with_cursor_and_filter(store):
    ids = [store.create(phase=1, parameters={"i": i}).id for i in range(7)]
    store.claim_next("w")  # ids[0] running
    page, cursor = store.list(limit=3)
    assert [j.id for j in page] == ids[:-4:-1] and cursor
    page2, cursor2 = store.list(limit=3, cursor=cursor)
    page3, cursor3 = store.list(limit=3, cursor=cursor2)
    assert [j.id for j in page + page2 + page3] == ids[::-1] and cursor3 is None
    assert [j.id for j in store.list(status="running")[0]] == [ids[0]]
    assert store.count(status=["queued"]) == 6 and store.counts_by_status()["running"] == 1
    with pytest.raises(ValueError):
        store.list(cursor="abc")


def test_queue_position(store):
    a, b, c = (store.create(phase=1, parameters={}) for _ in range(3))
    assert [store.queue_position(j.id) for j in (a, b, c)] == [1, 2, 3]
    store.claim_next("w")
    assert [store.queue_position(j.id) for j in (a, b, c)] == [None, 1, 2]


def test_recover_requeues_once_then_lost(store):
    clean = store.create(phase=1, parameters={})
    wrote = store.create(phase=1, parameters={})
    queued = store.create(phase=1, parameters={})
    store.claim_next("dead")
    store.claim_next("dead")
    changed = store.recover(lambda job: job.id == wrote.id)
    assert {j.id: j.status for j in changed} == {clean.id: JobStatus.QUEUED, wrote.id: JobStatus.LOST}
    assert store.get(wrote.id).error.type == "Lost"
    assert store.get(queued.id).status is JobStatus.QUEUED
    assert store.get(clean.id).requeues == 1
    # the re-queued job keeps its place ahead of later jobs, and a second crash makes it lost
    assert store.claim_next("dead").id == clean.id
    changed = store.recover(lambda job: False)
    assert [(j.id, j.status) for j in changed] == [(clean.id, JobStatus.LOST)]
    assert all(j.status is not JobStatus.SUCCEEDED for j in store.list()[0])


def test_claim_query_uses_index(store):
    with store.db.transaction() as cur:
        plan = " ".join(str(tuple(r)) for r in cur.execute("EXPLAIN QUERY PLAN " + CLAIM_NEXT_QUERY))
    assert "jobs_status_seq" in plan


def test_migration_backup_and_rollback(tmp_path):
    from animenb.store.migrations import Migration, MigrationError, discover
    from animenb.store.sqlite_database import SqliteDatabase

    path = tmp_path / "jobs.db"
    SqliteJobStore(path).close()
    db = SqliteDatabase(path)

    def broken(cur):
        cur.execute("ALTER TABLE jobs ADD COLUMN note TEXT")
        raise RuntimeError("boom")

    latest = Migrator(db).latest
    with pytest.raises(MigrationError):
        Migrator(db, discover() + [Migration(latest, latest + 1, broken)]).run()
    assert (tmp_path / f"jobs.db.v{latest}.bak").exists()
    cols = [r[1] for r in sqlite3.connect(path).execute("PRAGMA table_info(jobs)")]
    assert "note" not in cols and Migrator(db).version() == latest
