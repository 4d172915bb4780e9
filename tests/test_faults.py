"""Faults that must never stop the queue, injected into a real server (real kernels, SQLite, processes).

A cancel at any moment of a job, the first import of a package included, leaves the warm kernel
known-good or replaced: the next job on it succeeds every time.
"""
from __future__ import annotations

import asyncio
import os
from pathlib import Path

import nbformat
import pytest
from nbformat.v4 import new_code_cell, new_notebook

from serverkit import call, submit, wait_done, wait_running

pytestmark = [pytest.mark.asyncio, pytest.mark.timeout(900)]

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
