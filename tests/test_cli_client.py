"""`animenb jobs` and `animenb watch` against a real server, as subprocesses (they run their own loops).

The test notebooks (tests/notebooks/, prompts "test:<name>") make jobs that succeed, fail
or run long enough to cancel; watch must exit 0 / 1 / 1, with its bar on stderr.
"""
from __future__ import annotations

import asyncio
import json
import os
import sys

import pytest
import pytest_asyncio
from serverkit import wait_for, wait_status

pytestmark = [pytest.mark.asyncio(loop_scope="module"), pytest.mark.timeout(300)]


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def srv(tmp_path_factory, start_live_server):
    async with start_live_server(tmp_path_factory.mktemp("cli"), models="tiny") as server:
        yield server


async def cli(*argv, timeout=120):
    """(exit status, stdout, stderr) of `python -m animenb.cli ARGV`."""
    env = {**os.environ, "COLUMNS": "100", "ANIMENB_TOKEN": ""}
    proc = await asyncio.create_subprocess_exec(sys.executable, "-m", "animenb.cli", *argv, env=env,
                                                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(), timeout)
    return proc.returncode, out.decode(), err.decode()


CANCEL_TOKENS: dict[str, str] = {}  # job id -> the cancel_token its 202 returned (anonymous jobs)


async def submit(srv, **body):
    body = {"width": 64, "height": 64, "steps": 2, **body}
    code, data, _ = await srv.request("POST", "/api/anime/generate", body)
    assert code == 202, data
    CANCEL_TOKENS[data["job_id"]] = data["cancel_token"]
    return data["job_id"]


async def test_watch_succeeded_job_exits_0_with_a_bar(srv):
    job_id = await submit(srv, prompt="test:progress 0.05", steps=20)
    code, out, err = await cli("watch", job_id, "--url", srv.base)
    assert code == 0, err
    assert f"job {job_id} succeeded" in out
    assert f"{srv.base}/api/anime/outputs/{job_id}/image.png" in out
    assert f"notebook: {srv.base}/api/anime/outputs/{job_id}/notebook.ipynb" in out
    assert "100%" in err and "step 20/20" in err  # the tqdm bar (stderr)

    # a finished job: state, then "finished" at once, with how long the job ran (as its status says)
    code, out, err = await cli("watch", job_id, "--url", srv.base, "--no-progress")
    assert code == 0 and out.startswith(f"job {job_id} succeeded in ") and err == ""
    _, status, _ = await srv.request("GET", f"/api/anime/generation/{job_id}/status")
    assert f" in {status['progress']['elapsed_seconds']:.1f} s" in out.splitlines()[0]


async def test_watch_failed_and_cancelled_exit_1(srv):
    failed = await submit(srv, prompt="test:error")
    code, out, err = await cli("watch", failed, "--url", srv.base, "--no-progress")
    assert code == 1 and f"job {failed} failed" in out
    assert "ValueError: bad things in cell 2" in err

    long = await submit(srv, prompt="test:sleep 0.1", steps=150)
    watcher = asyncio.create_task(cli("watch", long, "--url", srv.base))
    await wait_status(srv, long, {"running"}, timeout=60)
    # the watcher is connected, then the job takes two more steps: the bar has moved
    await wait_for(lambda: srv.service.bus.subscriber_count(long) >= 1, 60, what="the watcher connected")
    step = srv.service.store.get(long).progress.get("step", 0)
    await wait_for(lambda: srv.service.store.get(long).progress.get("step", 0) >= step + 2, 60, what="two steps")
    code, body, _ = await srv.request("DELETE", f"/api/anime/generation/{long}?cancel_token={CANCEL_TOKENS[long]}")
    assert code == 200 and body["status"] == "cancelled"
    code, out, err = await watcher
    assert code == 1 and f"job {long} cancelled" in out
    assert "step " in err  # the bar moved before the cancel


async def test_jobs_table_json_and_filters(srv):
    job_id = await submit(srv, prompt="test:echo a prompt\twith\ttabs and a long tail " + "x" * 80, seed=3)
    await wait_status(srv, job_id, {"succeeded"}, timeout=60)
    code, out, err = await cli("jobs", "--url", srv.base)
    assert code == 0, err
    lines = out.splitlines()
    assert lines[0].split()[:5] == ["JOB", "ID", "STATUS", "PHASE", "PROGRESS"]
    row = next(line for line in lines if line.startswith(job_id))
    assert "succeeded" in row and "CHARACTER_SHEET" in row and "100%" in row
    assert "a prompt with tabs" in row and row.endswith("…") and "\t" not in row

    code, out, _ = await cli("jobs", "--url", srv.base, "--json", "--limit", "2")
    body = json.loads(out)
    assert code == 0 and len(body["jobs"]) <= 2 and body["jobs"][0]["job_id"] == job_id

    code, out, _ = await cli("jobs", "--url", srv.base, "--status", "running")
    assert code == 0 and out.strip() == "no jobs with status running"


BAD = [
    (["watch", "nothex", "--url", "URL"], "`JOB_ID` must be 32 hex digits"),
    (["watch", "0" * 32, "--url", "URL"], f"Job not found: {'0' * 32}"),
    (["jobs", "--status", "done", "--url", "URL"], "`--status` must be among"),
    (["jobs", "--limit", "0", "--url", "URL"], "`--limit` must be in [1, 200]"),
    (["jobs", "--url", "ftp://x"], "`--url` must be an http(s) URL"),
    (["jobs", "--url", "http://127.0.0.1:9"], "cannot reach the animenb server at http://127.0.0.1:9"),
    (["watch", "0" * 32, "--url", "http://127.0.0.1:9"], "cannot reach the animenb server"),
]


@pytest.mark.parametrize("argv, message", BAD, ids=[" ".join(a[:2]) for a, _ in BAD])
async def test_errors_are_one_line_exit_2(srv, argv, message):
    code, out, err = await cli(*[srv.base if a == "URL" else a for a in argv])
    assert code == 2 and out == ""
    assert len(err.strip().splitlines()) == 1 and message in err and "Traceback" not in err


async def test_help_explains_options():
    for command, words in (("jobs", ["--status", "--limit", "--json", "--url", "--token"]),
                           ("watch", ["JOB_ID", "--no-progress", "--url", "--token", "exit"])):
        code, out, _ = await cli(command, "--help")
        assert code == 0 and all(w in out for w in words), out
