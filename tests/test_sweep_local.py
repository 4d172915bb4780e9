"""`animenb sweep` here: a 2x2 grid (tiny profile, 64 px) where each cell executes the phase notebook with papermill
into its own folder, all cells and the report on one warm kernel; Ctrl-C mid-sweep keeps the finished cells."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import nbformat
import pytest
from PIL import Image

from animenb.cli import main
from animenb.sweeps.grid import GridLayout

pytestmark = pytest.mark.timeout(600)

BASE = ["-p", "prompt", "anime girl", "-p", "width", "64", "-p", "height", "64", "-p", "seed", "3", "--models", "tiny"]


def code_counts(nb) -> list[int]:
    return [c.execution_count for c in nb.cells if c.cell_type == "code" and c.execution_count]


def errors(nb) -> list[dict]:
    return [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", []) if o.output_type == "error"]


def alive(pid: int) -> bool:
    """Running (a zombie, dead but not yet reaped, is not)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


def test_a_2x2_sweep_here_executes_a_notebook_per_cell_on_one_kernel(tmp_path, capsys):
    out = tmp_path / "sweep"
    code = main(["sweep", "1", *BASE, "--axis", "steps=1-2", "--axis", "guidance_scale=5,7", "--output-dir", str(out)])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    record = json.loads((out / "sweep.json").read_text())
    assert record["status"] == "succeeded" and [c["status"] for c in record["cells"]] == ["succeeded"] * 4
    notebooks = []
    for entry in record["cells"]:
        run_dir = out / entry["run_dir"]
        nb = nbformat.read(run_dir / "notebook.ipynb", as_version=4)
        injected = next(c.source for c in nb.cells if "injected-parameters" in c.metadata.get("tags", []))
        assert f"steps = {entry['values']['steps']}" in injected and f'output_dir = "{run_dir}"' in injected
        assert "score_job(" in nb.cells[-1].source and not errors(nb)  # scored in the same kernel, as a job is
        assert json.loads((run_dir / "manifest.json").read_text())["quality"]["score"] is not None
        notebooks.append(nb)
    # One kernel ran every cell: the same process (not this one) for all, and its execution counter goes on from
    # one cell's notebook to the next (a fresh kernel would start each at 1), then into the report.
    pids = {entry["kernel_pid"] for entry in record["cells"]}
    assert len(pids) == 1 and os.getpid() not in pids and None not in pids
    counts = [code_counts(nb) for nb in notebooks]
    report = nbformat.read(out / "report.ipynb", as_version=4)
    counts.append(code_counts(report))
    assert all(counts) and all(a[-1] < b[0] for a, b in zip(counts, counts[1:])), counts
    assert not errors(report)
    assert not alive(pids.pop())  # shut down when the sweep ended
    assert Image.open(out / "grid.png").size == GridLayout(columns=2, rows=2, label_width=192 * 2 // 3).size
    assert f"report: {out / 'report.ipynb'}" in captured.out and f"grid:   {out}/grid.png" in captured.out
    # the bar over cells, with the running cell's values and its progress as the postfix
    assert "4/4" in captured.err and "steps=2 guidance_scale=7.0: " in captured.err, captured.err


def ctrl_c_enabled():
    """In the child: SIGINT as a terminal delivers it. A suite started in the background (`make test &`)
    runs with SIGINT ignored, which children inherit, and Python then never raises KeyboardInterrupt."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def test_ctrl_c_mid_sweep_keeps_the_finished_cells_and_exits_non_zero(tmp_path):
    out = tmp_path / "sweep"
    # Cell 1 (150 steps x 8 poses) runs long enough to be interrupted mid-generation.
    proc = subprocess.Popen([sys.executable, "-m", "animenb.cli", "sweep", "1", *BASE, "--axis", "steps=1,150",
                             "--axis", "guidance_scale=5,7", "--output-dir", str(out)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, preexec_fn=ctrl_c_enabled)
    err: list[str] = []  # the reader thread alone reads stderr (a second reader would take part of it)
    reader = threading.Thread(target=lambda: err.extend(iter(lambda: proc.stderr.read(1), "")), daemon=True)
    reader.start()
    try:
        deadline = time.monotonic() + 400
        # The bar's postfix shows cell 1's own progress: its notebook is running in the kernel.
        while "steps=150 guidance_scale=5.0: " not in "".join(err):
            assert proc.poll() is None and time.monotonic() < deadline, "".join(err)
            time.sleep(0.05)
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    reader.join(10)
    stderr = "".join(err)
    assert proc.returncode == 130, stderr
    assert (f"animenb sweep: cancelled during cell 1; 1 of 4 cells succeeded (Ctrl-C); the finished cells are in "
            f"{out}/cells/, the record is {out}/sweep.json") in stderr, stderr
    record = json.loads((out / "sweep.json").read_text())
    assert record["status"] == "cancelled"
    assert [c.get("status") for c in record["cells"]] == ["succeeded", "cancelled", None, None]
    done = out / "cells" / "000"
    assert not errors(nbformat.read(done / "notebook.ipynb", as_version=4)) and (done / "manifest.json").is_file()
    # The interrupted cell's notebook is saved as far as it ran: stopped in generation (by the interrupt, or by the
    # kill when a loaded box is slow to take it), so its gate cell never ran and it wrote no manifest. The cells
    # after it never started.
    stopped = nbformat.read(out / "cells" / "001" / "notebook.ipynb", as_version=4)
    assert "score_job(" in stopped.cells[-1].source and stopped.cells[-1].execution_count is None
    assert not (out / "cells" / "001" / "manifest.json").exists()
    assert not (out / "cells" / "002").exists() and not (out / "grid.png").exists()
    assert not alive(record["cells"][0]["kernel_pid"])
