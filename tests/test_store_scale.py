"""The job store at scale: 200k finished jobs, and listings, counts and recovery still read only what they return.

Two checks, neither timed: every query the API lists, counts or recovers with has an index plan
(`EXPLAIN QUERY PLAN`: no full scan of `jobs`, no sort of the matches), and the SQLite VM
instructions each call runs are about the same at 200k rows as at 10k (counted with
`set_progress_handler`, which fires once per instruction).
"""
from __future__ import annotations

import sqlite3
import time

import pytest

from animenb.retention import collect_garbage
from animenb.store import JobStatus, SqliteJobStore
from animenb.store.jobs_sqlite import (CLAIM_NEXT_QUERY, FINISHED_SINCE_QUERY, GC_CANDIDATES_QUERY, NEXT_QUEUED_QUERY,
                                       QUEUE_POSITION_QUERY, RUNNING_QUERY)
from animenb.store.migrations import Migrator, discover
from history import USERS, history_records

BIG, SMALL = 200_000, 10_000
NOW = time.time()
HOUR = 3600.0

# The store calls the server makes to list (GET /jobs for each scope, /gallery, /admin/stats' window)
# and to dispatch and recover.
LISTINGS = {
    "jobs, anonymous": dict(visibility="public"),
    "jobs, anonymous ?status=succeeded": dict(visibility="public", status=["succeeded"]),
    "jobs, anonymous ?status=queued,running": dict(visibility="public", status=["queued", "running"]),
    "jobs, a user": dict(owner=USERS[1]),
    "jobs, a user ?status=failed": dict(owner=USERS[1], status=["failed"]),
    "jobs, admin ?owner=*": dict(),
    "jobs, admin ?owner=*&status=lost": dict(status=["lost"]),
    "gallery": dict(status="succeeded", visibility="public", top_level=True),
    "gallery ?phase=2": dict(status="succeeded", visibility="public", phase=2, top_level=True),
    "stats window": dict(status=[JobStatus.SUCCEEDED, JobStatus.FAILED], limit=500),
    "retry-after estimate": dict(status=JobStatus.SUCCEEDED, limit=20),
    "recovery: running": dict(status="running", limit=500),
    "recovery: active": dict(status=["queued", "running"], limit=500),
}


def fill(path, n: int) -> SqliteJobStore:
    store = SqliteJobStore(path)
    assert store.import_records(history_records(n, now=NOW - 60)) == n
    for i in range(4):  # a little live work: three queued, one running
        store.create(phase=1, parameters={"prompt": f"live {i}"}, owner=USERS[1] if i else "anonymous")
    assert store.claim_next("host:1") is not None
    return store


@pytest.fixture(scope="module")
def stores(tmp_path_factory):
    root = tmp_path_factory.mktemp("scale")
    small, big = fill(root / "small.sqlite", SMALL), fill(root / "big.sqlite", BIG)
    yield small, big
    small.close()
    big.close()


def plan(store: SqliteJobStore, sql: str, args) -> list[str]:
    with store.db.read() as cur:
        return [row[3] for row in cur.execute(f"EXPLAIN QUERY PLAN {sql}", list(args)).fetchall()]


def full_scans(sql: str, details: list[str]) -> list[str]:
    """Plan lines that read every row of `jobs` (any alias) or sort them for ORDER BY. `job_counts` is a few
    rows per status and user, so reading all of it is fine; so is `SCAN jobs` for the unfiltered newest
    page, which walks the primary key backwards and stops after LIMIT rows."""
    unfiltered = "WHERE" not in sql and "ORDER BY seq DESC LIMIT" in sql
    return [d for d in details if (d.startswith("SCAN") and not d.startswith("SCAN job_counts")
                                   and not (unfiltered and d == "SCAN jobs")) or "TEMP B-TREE FOR ORDER BY" in d]


def instructions(store: SqliteJobStore, call) -> int:
    counted = [0]

    def tick():
        counted[0] += 1
        return 0

    store.db._conn.set_progress_handler(tick, 1)
    try:
        call()
    finally:
        store.db._conn.set_progress_handler(None, 1)
    return counted[0]


def page_four_cursor(store: SqliteJobStore, query: dict) -> str | None:
    cursor = None
    for _ in range(3):
        _, cursor = store.list(**query, cursor=cursor)
    return cursor


@pytest.mark.parametrize("name", LISTINGS)
def test_listing_queries_read_an_index_range(stores, name):
    _, big = stores
    query = LISTINGS[name]
    for cursor in (None, page_four_cursor(big, query) or "1"):
        for sql, args in big.list_queries(**query, cursor=cursor):
            assert full_scans(sql, plan(big, sql, args)) == [], (name, sql, plan(big, sql, args))
    count_query = {k: v for k, v in query.items() if k != "limit"}
    sql, args = big.count_query(**count_query)
    assert not any("jobs" in d for d in plan(big, sql, args)), plan(big, sql, args)


@pytest.mark.parametrize("sql,args", [(CLAIM_NEXT_QUERY, ()), (NEXT_QUEUED_QUERY, (64,)), (RUNNING_QUERY, ()),
                                      (QUEUE_POSITION_QUERY, (10**9,)), (FINISHED_SINCE_QUERY, (NOW - HOUR,)),
                                      (GC_CANDIDATES_QUERY, (NOW - 7 * 86400, 500))])
def test_dispatch_recovery_stats_and_gc_queries_read_an_index_range(stores, sql, args):
    _, big = stores
    assert full_scans(sql, plan(big, sql, args)) == [], plan(big, sql, args)


@pytest.mark.parametrize("name", LISTINGS)
def test_a_page_costs_the_same_at_200k_jobs_as_at_10k(stores, name):
    small, big = stores
    query = LISTINGS[name]
    costs = []
    for store in (small, big):
        cursor = page_four_cursor(store, query)
        page = instructions(store, lambda: store.list(**query))
        page4 = instructions(store, lambda: store.list(**query, cursor=cursor))
        count = instructions(store, lambda: store.count(**{k: v for k, v in query.items() if k != "limit"}))
        costs.append((page, page4, count))
    for at_10k, at_200k in zip(*costs):
        assert at_200k <= 1.5 * at_10k + 200, (name, costs)


def test_health_counts_and_stats_windows_cost_the_same_at_200k_jobs(stores):
    small, big = stores
    for call in (lambda s: s.counts_by_status(), lambda s: s.finished_since(NOW - HOUR),
                 lambda s: s.recover(lambda job: False) and None):
        at_10k, at_200k = instructions(small, lambda: call(small)), instructions(big, lambda: call(big))
        assert at_200k <= 1.5 * at_10k + 200, (at_10k, at_200k)


def test_counts_are_exact(stores):
    _, big = stores
    counts = big.counts_by_status()
    assert (counts["succeeded"], counts["failed"], counts["queued"] + counts["running"]) == (
        BIG * 9 // 10, BIG // 10, 4)
    with big.db.read() as cur:
        truth = dict(cur.execute("SELECT status, COUNT(*) FROM jobs GROUP BY status").fetchall())
        assert {k: v for k, v in counts.items() if v} == truth
        assert big.count(visibility="public", status="succeeded", phase=2) == cur.execute(
            "SELECT COUNT(*) FROM jobs WHERE visibility = 'public' AND status = 'succeeded' AND phase = 2").fetchone()[0]
        assert cur.execute("SELECT COUNT(*) FROM job_counts").fetchone()[0] <= 6 * 2 * 4 * (len(USERS) + 1)


def job_counts_match_jobs(store: SqliteJobStore) -> bool:
    with store.db.read() as cur:
        kept = {tuple(r[:5]): r[5] for r in cur.execute(
            "SELECT status, visibility, phase, owner, top_level, n FROM job_counts") if r[5]}
        truth = {tuple(r[:5]): r[5] for r in cur.execute(
            "SELECT status, visibility, IFNULL(phase, -1), owner, parent_id IS NULL, COUNT(*) FROM jobs "
            "GROUP BY 1, 2, 3, 4, 5")}
    return kept == truth


def test_counts_follow_every_write(tmp_path):
    store = SqliteJobStore(tmp_path / "jobs.sqlite")
    store.import_records(history_records(50, now=NOW - 30 * 86400))
    a = store.create(phase=2, parameters={}, owner="alice", visibility="private")
    b = store.create(phase=None, parameters={}, kind="orchestration")
    store.claim_next("w")
    store.transition(a.id, JobStatus.SUCCEEDED)
    store.transition(b.id, JobStatus.CANCELLED)
    with store.db.transaction() as cur:  # a write from outside the store's methods is counted too
        cur.execute("UPDATE jobs SET visibility = 'public', owner = 'bob' WHERE id = ?", (a.id,))
    assert len(store.delete_finished(NOW - 86400, limit=20)) == 20
    assert job_counts_match_jobs(store)
    assert store.count(owner="bob", visibility="public", status="succeeded", phase=2) == 1
    assert store.count() == 32


def test_upgrading_a_database_counts_its_jobs(tmp_path):
    path = tmp_path / "jobs.sqlite"
    old = SqliteJobStore.__new__(SqliteJobStore)
    from animenb.store.sqlite_database import SqliteDatabase
    old.db = SqliteDatabase(path)
    Migrator(old.db, discover()[:2]).run()  # schema 2: no job_counts yet
    old.import_records(history_records(300, now=NOW))
    old.db.close()
    store = SqliteJobStore(path)
    assert store.schema_version == Migrator(store.db).latest >= 3
    assert (tmp_path / "jobs.sqlite.v2.bak").exists()
    assert job_counts_match_jobs(store)
    assert store.counts_by_status()["failed"] == 30
    store.close()


def test_top_level_listings_and_counts_leave_children_out(tmp_path):
    """The gallery's shape: a sweep's cells are neither listed nor counted; deleting the parent (GC) makes
    them top-level again (the foreign key sets `parent_id` NULL) and the counts follow."""
    path = tmp_path / "jobs.sqlite"
    old = SqliteJobStore.__new__(SqliteJobStore)
    from animenb.store.sqlite_database import SqliteDatabase
    old.db = SqliteDatabase(path)
    Migrator(old.db, discover()[:4]).run()  # schema 4: counts without `top_level`
    old.import_records(history_records(30, now=NOW))
    parent = old.create(phase=1, parameters={}, kind="sweep")
    cells = [old.create(phase=1, parameters={}, parent_id=parent.id) for _ in range(3)]
    old.db.close()
    store = SqliteJobStore(path)
    assert store.schema_version == Migrator(store.db).latest >= 5 and job_counts_match_jobs(store)
    gallery = dict(status="queued", visibility="public", top_level=True)
    assert [j.id for j in store.list(**gallery)[0]] == [parent.id] and store.count(**gallery) == 1
    assert store.count(status="queued") == 4
    for job in [parent, *cells]:
        store.claim_next("w")
        store.transition(job.id, JobStatus.SUCCEEDED)
    gallery["status"] = "succeeded"
    page, _ = store.list(**gallery, limit=500)
    assert parent.id in {j.id for j in page} and not {c.id for c in cells} & {j.id for j in page}
    assert store.count(**gallery) == len(page) == store.count(status="succeeded", visibility="public") - 3
    with store.db.transaction() as cur:
        cur.execute("DELETE FROM jobs WHERE id = ?", (parent.id,))
    assert job_counts_match_jobs(store)
    page, _ = store.list(**gallery, limit=500)
    assert {c.id for c in cells} <= {j.id for j in page} and store.count(**gallery) == len(page)
    store.close()


def test_gc_deletes_in_short_transactions(tmp_path):
    """Each batch is its own write transaction (other writers get the lock between them)."""
    store = SqliteJobStore(tmp_path / "jobs.sqlite")
    store.import_records(history_records(2_000, now=NOW - 30 * 86400))
    store.create(phase=1, parameters={})
    statements: list[str] = []
    store.db._conn.set_trace_callback(statements.append)
    report = collect_garbage(store, tmp_path / "outputs", older_than=7 * 86400, batch=300)
    store.db._conn.set_trace_callback(None)
    assert len(report.jobs) == 2_000
    deletes = {s for s in statements if "DELETE FROM jobs" in s}  # traced again for each trigger it fires
    assert statements.count("BEGIN IMMEDIATE") == len(deletes) == 7
    assert max(s.count("','") + 1 for s in deletes) == 300
    assert store.count() == 1 and job_counts_match_jobs(store)
    other = sqlite3.connect(tmp_path / "jobs.sqlite", timeout=0)  # nothing holds the write lock afterwards
    other.execute("BEGIN IMMEDIATE")
    other.rollback()
    other.close()
    store.close()
