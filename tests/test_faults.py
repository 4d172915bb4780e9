"""Faults that must never stop the queue, injected into a real server (real kernels, SQLite, processes).

- A cancel at any moment of a job, the first import of a package included, leaves the warm kernel
  known-good or replaced: the next job on it succeeds every time.
- Another process holding the database's write lock across a job's end: reads answer, writes answer 503,
  /health says why; the job's end is recorded once the lock goes, and the queue moves on.
- A claim the store refuses (the database locked as the kernel comes up): the dispatcher's crash is logged,
  /health says it is failing, and it restarts until the claim lands.
- The home disk full (a tiny tmpfs; skipped only where mounting is refused): 507, nothing written.
- A kernel killed at any stage of a job, or the whole server SIGKILLed at random moments and restarted:
  every job ends in one terminal state that matches its files, nothing stays running, the queue moves.
- One caller's flood delays another caller's job by one turn; 20 first requests for one thumbnail.
"""
from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import random
import signal
import subprocess
import threading
import time
from pathlib import Path

import nbformat
import psutil
import pytest
from nbformat.v4 import new_code_cell, new_notebook

from faultkit import (API, DatabaseLocker, database_locked_by_another_process, free_port, http, kill_group,
                      start_server, wait_terminal)
from serverkit import call, submit, wait_done, wait_for, wait_running

pytestmark = [pytest.mark.timeout(900)]

# A package whose first import takes ~1.2 s and, interrupted in the middle, leaves `<name>.sub` in
# sys.modules but not bound on a re-imported `<name>`: what an interrupted `import diffusers` did to
# `diffusers.utils.logging`.
PACKAGE_INIT = """\
import time
from .sub import VALUE
time.sleep(0.6)
from .late import LATE
"""
PACKAGE_SUB = "import time\ntime.sleep(0.6)\nVALUE = 1\n"
PACKAGE_LATE = "LATE = 2\n"

# The job: import the package named by its prompt ("import <name>"), use it, run a short step loop, write
# its one output. Any moment of a cancel lands in the import, the step loop or the output write.
IMPORT_JOB = [
    'prompt = "import pkg"\nseed = 0\nsteps = 2\nwidth = 64\nheight = 64\noutput_dir = ""\nmodels = ""',
    """\
import importlib, time
from pathlib import Path
from animenb.progress import ProgressReporter
package = importlib.import_module(prompt.split()[1])
assert package.sub.VALUE == 1 and package.late.LATE == 2, 'the package is half-imported'""",
    """\
reporter = ProgressReporter("TEST", total_steps=10, display="kernel")
reporter.start_stage("denoise")
for _ in range(10):
    time.sleep(0.1)
    reporter.on_step()""",
    """\
from animenb.manifest import file_entry, write_manifest
out = Path(output_dir)
out.mkdir(parents=True, exist_ok=True)
(out / "done.txt").write_text(prompt)
write_manifest(out, {"phase": {"id": 1, "name": "TEST"}, "parameters": {"prompt": prompt}, "seed": seed,
                     "outputs": {"text": "done.txt"}, "files": [file_entry(out, out / "done.txt", "text")]})""",
]


def _write_import_job(path: Path) -> Path:
    nb = new_notebook(metadata={"kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"},
                                "language_info": {"name": "python"}})
    for i, source in enumerate(IMPORT_JOB):
        nb.cells.append(new_code_cell(source, metadata={"tags": ["parameters"]} if i == 0 else {}))
        nb.cells[-1]["id"] = f"cell-{i}"
    nbformat.write(nb, path)
    return path


def _write_package(root: Path, name: str) -> None:
    package = root / name
    package.mkdir(parents=True)
    (package / "__init__.py").write_text(PACKAGE_INIT)
    (package / "sub.py").write_text(PACKAGE_SUB)
    (package / "late.py").write_text(PACKAGE_LATE)


@pytest.fixture
def import_server(tmp_path, start_live_server):
    """A server whose jobs run IMPORT_JOB, with `tmp_path/packages` importable in its kernel."""
    notebook = _write_import_job(tmp_path / "import_job.ipynb")
    packages = tmp_path / "packages"
    packages.mkdir()
    env = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join(filter(None, [str(packages), os.environ.get("PYTHONPATH")]))}
    return packages, start_live_server(tmp_path, models="tiny", quality=False, notebook_for=lambda job: notebook,
                                       kernel_env=env)


async def _cancel(srv, accepted: dict):
    code, body, _ = await call(srv, "DELETE", f"/api/anime/generation/{accepted['job_id']}"
                                              f"?cancel_token={accepted['cancel_token']}")
    assert code in (200, 409), body  # 409: it had already finished


# 20 moments from 0 to 3 s after the job starts: the import (~1.2 s), the step loop (~1 s), the output write.
CANCEL_MOMENTS = [round(0.15 * i, 2) for i in range(20)]


async def test_a_cancel_at_any_moment_leaves_the_kernel_good_or_replaced(import_server):
    packages, server = import_server
    async with server as srv:
        kernel = srv.service.runner.slots[0].kernel
        for i, moment in enumerate(CANCEL_MOMENTS):
            name = f"pkg{i}"  # a package this kernel has never imported: the cancel can land in its first import
            _write_package(packages, name)
            job = await submit(srv, prompt=f"import {name}")
            await wait_running(srv, job["job_id"])
            await asyncio.sleep(moment)
            await _cancel(srv, job)
            assert (await wait_done(srv, job["job_id"])).status.value in ("cancelled", "succeeded")
            after = await submit(srv, prompt=f"import {name}")
            done = await wait_done(srv, after["job_id"])
            assert done.status.value == "succeeded", (moment, done.error)
        assert kernel.replaced >= 1  # some cancels landed in an import: those kernels were replaced

        # While queued: the job never reaches the kernel, which stays as it was.
        _write_package(packages, "queued")
        blocker = await submit(srv, prompt="import queued")
        queued = await submit(srv, prompt="import queued")
        await _cancel(srv, queued)
        assert (await wait_done(srv, queued["job_id"])).status.value == "cancelled"
        assert (await wait_done(srv, blocker["job_id"])).status.value == "succeeded"


async def test_a_cancel_in_the_step_loop_keeps_the_warm_kernel(import_server):
    packages, server = import_server
    _write_package(packages, "warm")
    async with server as srv:
        kernel = srv.service.runner.slots[0].kernel
        first = await submit(srv, prompt="import warm")
        assert (await wait_done(srv, first["job_id"])).status.value == "succeeded"
        starts = kernel.starts
        job = await submit(srv, prompt="import warm")
        while not (srv.service.runner.live_progress(job["job_id"]) or {}).get("step"):
            await asyncio.sleep(0.02)  # in the step loop: the package is imported already
        await _cancel(srv, job)
        assert (await wait_done(srv, job["job_id"])).status.value == "cancelled"
        after = await submit(srv, prompt="import warm")
        assert (await wait_done(srv, after["job_id"])).status.value == "succeeded"
        assert kernel.starts == starts and kernel.replaced == 0


# -- the store: a database locked by another process, a full disk ---------------------------------------
async def _health(srv) -> dict:
    code, body, _ = await call(srv, "GET", "/api/anime/health")
    assert code == 200
    return body


async def test_a_database_locked_across_a_job_end_delays_its_record_and_never_stops_the_queue(tmp_path,
                                                                                         start_live_server):
    async with start_live_server(tmp_path, models="tiny", quality=False) as srv:
        job = await submit(srv, prompt="test:progress 0.2", steps=5)
        await wait_running(srv, job["job_id"])
        with database_locked_by_another_process(srv.service.store.db.path):
            # The job ends while the lock is held: its end waits, reported by /health, which answers.
            while (health := await _health(srv))["components"]["store"]["unrecorded_ends"] != 1:
                await asyncio.sleep(0.05)
            assert health["status"] == "degraded" and "store" in health["degraded_components"]
            assert "locked" in health["components"]["store"]["reason"]
            assert (tmp_path / "outputs" / job["job_id"] / "manifest.json").is_file()
            code, body, _ = await call(srv, "GET", f"/api/anime/generation/{job['job_id']}/status")
            assert code == 200 and body["status"] == "running"  # reads answer
            code, body, headers = await call(srv, "POST", "/api/anime/generate", {"prompt": "test:progress"})
            assert code == 503 and body["error"]["code"] == "store_unavailable" and int(headers["Retry-After"]) > 0
            assert srv.service.store.count() == 1  # nothing half-written
        assert (await wait_done(srv, job["job_id"])).status.value == "succeeded"
        after = await submit(srv, prompt="test:progress", steps=2)
        assert (await wait_done(srv, after["job_id"])).status.value == "succeeded"
        health = await _health(srv)
        assert health["status"] == "healthy" and health["components"]["store"]["unrecorded_ends"] == 0


async def test_requests_that_cannot_write_hold_up_no_other_request(tmp_path, start_live_server):
    async with start_live_server(tmp_path, models="tiny", quality=False) as srv:
        answered: list[tuple[str, int]] = []

        async def request(name: str, method: str, path: str, body=None) -> None:
            code, _, _ = await call(srv, method, path, body)
            answered.append((name, code))

        with database_locked_by_another_process(srv.service.store.db.path):
            submits = [asyncio.create_task(request("submit", "POST", "/api/anime/generate", {"prompt": "test:progress"}))
                       for _ in range(8)]
            await asyncio.sleep(0.05)  # the submits are in: each waits for the database
            await request("health", "GET", "/api/anime/health")
            await asyncio.gather(*submits)
        assert [code for name, code in answered if name == "submit"] == [503] * 8
        # /health, asked after them, answers while they wait: the waits are off the event loop.
        assert ("health", 200) in answered[:-1], answered
        assert srv.service.store.count() == 0


# Parent jobs (kind -> how to start one, how many children it runs, how it ends): an orchestration whose gate
# fails its one attempt, and a sweep of two cells.
PARENTS = {
    "orchestration": ("/api/anime/orchestrate", "admin", {"prompt": "anime girl with blue hair", "seed": 7, "steps": 2,
                                                          "width": 64, "height": 64, "threshold": 1.01,
                                                          "max_retries": 0}, 1, ("failed", "QualityGateFailed")),
    "sweep": ("/api/anime/sweeps", "user", {"parameters": {"prompt": "test:progress 0.05", "width": 64, "height": 64,
                                                           "steps": 2}, "axes": {"seed": "1-2"}},
              2, ("succeeded", None)),
}


async def _start_parent(srv, kind: str) -> str:
    path, role, body, _, _ = PARENTS[kind]
    _, token = srv.service.tokens.create(f"{kind}-caller", role)
    code, data, _ = await call(srv, "POST", path, body, token=token)
    assert code == 202, data
    return data["job_id"]


def _assert_ended_as_planned(job, kind: str) -> None:
    status, error = PARENTS[kind][4]
    assert job.status.value == status and (job.error.type if job.error else None) == error, job


@pytest.mark.parametrize("kind", PARENTS)
async def test_a_database_locked_as_a_parent_submits_its_children_delays_them_and_fails_nothing(
        tmp_path, start_live_server, caplog, kind):
    from animenb.runner.events import JobStartedEvent

    async with start_live_server(tmp_path, models="tiny") as srv:
        locker = DatabaseLocker(srv.service.store.db.path)

        def lock_as_the_parent_starts(event) -> None:  # its first child is submitted right after this event
            if isinstance(event, JobStartedEvent) and event.device in ("orchestrator", "sweep"):
                locker.lock()

        sub = srv.service.bus.subscribe(None, lock_as_the_parent_starts)
        try:
            parent_id = await _start_parent(srv, kind)
            await wait_for(lambda: sum("submitting a child" in r.getMessage() for r in caplog.records) >= 2, 60,
                           what="the child's submit retried")
            # The parent waits, running and childless, while requests are answered.
            health = await _health(srv)
            assert health["status"] == "degraded" and "store" in health["degraded_components"]
            assert srv.service.store.get(parent_id).status.value == "running" and srv.service.store.count() == 1
        finally:
            srv.service.bus.unsubscribe(sub)
            locker.close()
        _assert_ended_as_planned(await wait_done(srv, parent_id, timeout=300), kind)
        assert srv.service.store.count() == 1 + PARENTS[kind][3]


@pytest.mark.parametrize("kind", PARENTS)
async def test_a_database_locked_as_a_parent_ends_delays_its_end_until_the_lock_goes(tmp_path, start_live_server,
                                                                                     kind):
    from animenb.runner.events import JobFinishedEvent

    async with start_live_server(tmp_path, models="tiny") as srv:
        locker = DatabaseLocker(srv.service.store.db.path)
        children_ended = []

        def lock_after_the_last_child(event) -> None:  # its end is stored: the parent ends next
            if isinstance(event, JobFinishedEvent) and srv.service.store.get(event.job_id).parent_id:
                children_ended.append(event.job_id)
                if len(children_ended) == PARENTS[kind][3]:
                    locker.lock()

        sub = srv.service.bus.subscribe(None, lock_after_the_last_child)
        try:
            parent_id = await _start_parent(srv, kind)

            async def end_refused():  # its end is pending, and the store has refused it once
                health = await _health(srv)
                pending = health["components"]["store"]["unrecorded_ends"] == 1
                return pending and health["status"] == "degraded" and health

            health = await wait_for(end_refused, 300, interval=0.05, what="the parent's end refused by the store")
            assert "locked" in health["components"]["store"]["reason"]
            assert srv.service.store.get(parent_id).status.value == "running"
        finally:
            srv.service.bus.unsubscribe(sub)
            locker.close()
        _assert_ended_as_planned(await wait_done(srv, parent_id), kind)
        health = await _health(srv)
        assert health["status"] == "healthy" and health["components"]["store"]["unrecorded_ends"] == 0


@contextlib.contextmanager
def tiny_tmpfs(path: Path, size: str = "4m"):
    path.mkdir(parents=True)
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
                             capture_output=True, text=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.strip() or mounted.returncode}")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


def _fill(folder: Path) -> Path:
    """Write zeros into `folder` until its disk is full; the file to delete to free it."""
    filler = folder / "filler"
    with open(filler, "wb", buffering=0) as f:  # unbuffered: closing it has nothing left to write
        try:
            while True:
                f.write(b"\0" * 65536)
        except OSError as exc:
            assert exc.errno == errno.ENOSPC
    return filler


async def test_a_full_home_disk_answers_507_and_writes_nothing(tmp_path, start_live_server):
    with tiny_tmpfs(tmp_path / "home") as home:
        async with start_live_server(tmp_path, models="tiny", quality=False) as srv:
            assert Path(srv.service.store.db.path).parent == home
            filler = _fill(home)
            code, body, _ = await call(srv, "POST", "/api/anime/generate", {"prompt": "test:progress"})
            assert code == 507 and body["error"]["code"] == "insufficient_storage"
            assert srv.service.store.count() == 0 and not any((tmp_path / "outputs").iterdir())
            health = await _health(srv)
            assert health["status"] == "degraded" and "full" in health["components"]["store"]["reason"]
            filler.unlink()
            job = await submit(srv, prompt="test:progress", steps=2)
            assert (await wait_done(srv, job["job_id"])).status.value == "succeeded"


# -- the dispatcher supervised ------------------------------------------------------------------------
# A sitecustomize that holds each kernel's start until the test opens the gate.
KERNEL_GATE = """\
import os, time
from pathlib import Path
gate = Path(os.environ["ANIMENB_TEST_KERNEL_GATE"])
(gate / "waiting").touch()
while not (gate / "open").exists():
    time.sleep(0.02)
"""


async def test_a_claim_the_store_refuses_is_logged_reported_and_retried_until_it_lands(tmp_path, start_live_server,
                                                                                      caplog):
    gate = tmp_path / "gate"
    gate.mkdir()
    (gate / "sitecustomize.py").write_text(KERNEL_GATE)
    env = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "ANIMENB_TEST_KERNEL_GATE": str(gate),
           "PYTHONPATH": os.pathsep.join(filter(None, [str(gate), os.environ.get("PYTHONPATH")]))}
    async with start_live_server(tmp_path, models="tiny", quality=False, kernel_env=env,
                                 wait_for_kernels=False) as srv:
        job = await submit(srv, prompt="test:progress", steps=2)  # queued: no kernel is ready yet
        while not (gate / "waiting").exists():
            await asyncio.sleep(0.05)
        with database_locked_by_another_process(srv.service.store.db.path):
            (gate / "open").touch()  # the kernel comes up: the dispatcher claims the job, and the store refuses
            deadline = time.monotonic() + 60
            while not (health := await _health(srv))["components"]["dispatcher"]["failing"]:
                assert time.monotonic() < deadline, health
                await asyncio.sleep(0.05)
            assert health["status"] == "degraded" and "dispatcher" in health["degraded_components"]
            assert "locked" in health["components"]["dispatcher"]["last_error"]
            assert srv.service.store.get(job["job_id"]).status.value == "queued"
        assert any(r.levelname == "WARNING" and r.getMessage().startswith("dispatcher:") for r in caplog.records)
        assert (await wait_done(srv, job["job_id"])).status.value == "succeeded"
        health = await _health(srv)
        assert health["status"] == "healthy" and not health["components"]["dispatcher"]["failing"]
        assert health["components"]["dispatcher"]["restarts"] >= 1


# -- fair turns ---------------------------------------------------------------------------------------
async def test_one_callers_many_jobs_delay_anothers_next_job_by_one_turn(tmp_path, start_live_server):
    async with start_live_server(tmp_path, models="tiny", quality=False) as srv:
        _, token = srv.service.tokens.create("alice", "user")
        first = await submit(srv, prompt="test:progress 0.2", steps=10)
        await wait_running(srv, first["job_id"])
        flood = [await submit(srv, prompt="test:progress 0.01", steps=1) for _ in range(5)]
        alices = await submit(srv, token=token, prompt="test:progress 0.01", steps=1)
        jobs = [await wait_done(srv, j["job_id"]) for j in (first, *flood, alices)]
        assert all(j.status.value == "succeeded" for j in jobs)
        by_start = sorted(jobs, key=lambda j: j.started_at)
        assert by_start[1].id == alices["job_id"]  # next after the job running when it came, not after the flood


# -- thumbnails ------------------------------------------------------------------------------------------
async def test_twenty_first_requests_for_one_video_thumbnail_all_get_it(tmp_path, start_live_server):
    from PIL import Image

    from animenb import media
    from animenb.store import JobStatus

    async with start_live_server(tmp_path, models="tiny", quality=False) as srv:
        store = srv.service.store
        job = store.create(phase=2, parameters={"prompt": "a loop"})
        store.transition(job.id, JobStatus.RUNNING)
        store.transition(job.id, JobStatus.SUCCEEDED)
        frames = [Image.new("RGB", (320, 240), (i * 20, 80, 160)) for i in range(12)]
        media.save_mp4(frames, tmp_path / "outputs" / job.id / "loop.mp4", 8)
        answers = await asyncio.gather(*(call(srv, "GET", f"/api/anime/thumbnails/{job.id}/loop.mp4")
                                         for _ in range(20)))
        assert [code for code, _, _ in answers] == [200] * 20
        assert len({body for _, body, _ in answers}) == 1
        folder = srv.service.thumbnails_dir / job.id
        assert [p.name for p in folder.iterdir()] == ["loop.mp4.png"]  # no temporary file left behind


# -- restart policy ----------------------------------------------------------------------------------------
async def test_a_job_left_running_with_complete_outputs_succeeds_at_the_next_start(tmp_path, start_live_server):
    from animenb.manifest import file_entry, write_manifest
    from animenb.store import JobStatus, SqliteJobStore

    store = SqliteJobStore(tmp_path / "home" / "jobs.sqlite")
    jobs = {}
    for name in ("complete", "partial", "untouched"):
        jobs[name] = store.create(phase=1, parameters={"prompt": "test:progress", "steps": 2}).id
        store.transition(jobs[name], JobStatus.RUNNING)
    for name in ("complete", "partial"):
        out = tmp_path / "outputs" / jobs[name]
        out.mkdir(parents=True)
        (out / "image.png").write_bytes(b"png")
    out = tmp_path / "outputs" / jobs["complete"]
    write_manifest(out, {"phase": {"id": 1, "name": "TEST"}, "parameters": {}, "seed": 0, "outputs": {},
                         "files": [file_entry(out, out / "image.png", "image")]})
    store.close()

    async with start_live_server(tmp_path, models="tiny", quality=False) as srv:
        complete = srv.service.store.get(jobs["complete"])
        assert complete.status is JobStatus.SUCCEEDED and "image.png" in complete.outputs.files
        assert srv.service.store.get(jobs["partial"]).status is JobStatus.LOST  # nothing vouches for its files
        assert (await wait_done(srv, jobs["untouched"])).status is JobStatus.SUCCEEDED  # re-run


# -- a kernel killed at any stage of a job -------------------------------------------------------------------
def _complete(out: Path) -> bool:
    from animenb.manifest import read_manifest

    try:
        files = read_manifest(out).get("files") or []
    except (OSError, ValueError):
        return False
    return bool(files) and all((out / f["path"]).is_file() for f in files)


KILL_MOMENTS = [0.0, 0.05, 0.2, 0.4, 0.7, 1.0]  # its reset, its first cells, its step loop, its output write


async def test_a_kernel_killed_at_any_stage_fails_only_its_job(tmp_path, start_live_server):
    async with start_live_server(tmp_path, models="tiny", quality=False) as srv:
        kernel = srv.service.runner.slots[0].kernel
        for moment in KILL_MOMENTS:
            job = await submit(srv, prompt="test:progress 0.08", steps=8)
            await wait_running(srv, job["job_id"])
            await asyncio.sleep(moment)
            kernel.kill()
            done = await wait_done(srv, job["job_id"])
            # One terminal state that matches its files: succeeded only with all of them, else KernelDied.
            if done.status.value == "succeeded":
                assert _complete(tmp_path / "outputs" / job["job_id"]), moment
            else:
                assert done.status.value == "failed" and done.error.type == "KernelDied", (moment, done)
            # A kill that landed after the job hit the idle kernel: the next job gets a fresh one all the same.
            after = await wait_done(srv, (await submit(srv, prompt="test:progress", steps=2))["job_id"])
            assert after.status.value == "succeeded", (moment, after)


def test_a_kernel_killed_just_before_a_job_starts_is_replaced_for_that_job(tmp_path):
    """`kill()` returns once the process is gone, so a job starting right after it (a kill aimed at the job
    before, landing on the idle kernel) gets a fresh kernel instead of dying with the old one."""
    from animenb.runner.executors import run_on_kernel
    from animenb.runner.kernels import WarmKernel

    notebook = tmp_path / "job.ipynb"
    nbformat.write(new_notebook(cells=[new_code_cell("import json\nvalue = json.dumps(1)")],
                                metadata={"kernelspec": {"name": "python3", "display_name": "Python 3",
                                                         "language": "python"}}), notebook)
    kernel = WarmKernel("cpu")
    kernel.start()
    try:
        for attempt in range(3):
            killed = kernel.pid()
            kernel.kill()
            run_on_kernel(kernel, str(notebook), tmp_path / f"out-{attempt}.ipynb", {}, warm=True,
                          on_progress=lambda payload: None, cancel_event=threading.Event(), execution_timeout=60,
                          extra_cells=(), label="test kernel")
            assert kernel.pid() != killed and not psutil.pid_exists(killed)
            kernel.reset_after_job()
    finally:
        kernel.shutdown()


# -- the server SIGKILLed at random moments -----------------------------------------------------------------
def test_a_server_killed_at_random_moments_leaves_every_job_in_one_state_that_matches_its_files(tmp_path):
    rng = random.Random(22)
    port = free_port()
    proc = start_server(tmp_path, port)
    ids = []
    try:
        for _ in range(3):
            for _ in range(4):
                code, data = http(port, "POST", f"{API}/generate", {"prompt": "anime 0.03", "width": 64, "height": 64,
                                                                    "steps": 6, "seed": len(ids)})
                assert code == 202, data
                ids.append(data["job_id"])
            time.sleep(rng.uniform(0.3, 2.0))
            kill_group(proc)
            proc = start_server(tmp_path, port)
        jobs = wait_terminal(port, ids, timeout=300)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(30)
    for job in jobs:
        complete = _complete(tmp_path / "outputs" / job["job_id"])
        if job["status"] == "succeeded":
            assert complete, job
        else:
            assert job["status"] == "lost" and not complete, job  # nothing is lost whose outputs are complete


async def test_a_server_starting_on_a_locked_database_waits_for_it(tmp_path, start_live_server):
    from animenb.store import JobStatus, SqliteJobStore

    store = SqliteJobStore(tmp_path / "home" / "jobs.sqlite")
    left = store.create(phase=1, parameters={"prompt": "test:progress", "steps": 2}).id
    store.transition(left, JobStatus.RUNNING)
    store.close()
    # The lock goes after 2 s: the store's migrator and the restart policy wait for it; the start does not crash.
    with database_locked_by_another_process(tmp_path / "home" / "jobs.sqlite", seconds=2):
        async with start_live_server(tmp_path, models="tiny", quality=False) as srv:
            assert (await wait_done(srv, left)).status is JobStatus.SUCCEEDED  # re-queued, then run
