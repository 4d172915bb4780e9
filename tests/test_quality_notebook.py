"""notebooks/04_quality.ipynb under papermill, on synthetic run directories of each phase."""
import json
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import nbformat
import papermill

from animenb.manifest import read_manifest
from animenb.quality import make_demo_run

NOTEBOOK = Path(__file__).resolve().parent.parent / "notebooks" / "04_quality.ipynb"


def test_notebook_has_a_parameters_cell():
    nb = nbformat.read(NOTEBOOK, as_version=4)
    tagged = [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])]
    assert len(tagged) == 1
    src = tagged[0].source
    assert 'output_dir = ""' in src and "phase = None" in src and "threshold = None" in src and "figures = True" in src
    # its reference outputs (strict nbval, see the Makefile) are checked by tests/test_notebooks_committed.py


# phase 3 with the forced-failure threshold the orchestrator uses; phase 2 without figures, as the server runs it
CASES = [(1, None, True), (2, None, False), (3, 1.01, True)]


def _execute(tmp_path: Path, phase: int, threshold: float | None, figures: bool) -> tuple[Path, Path]:
    run = make_demo_run(tmp_path / f"run{phase}", phase, size=64)
    params = {"output_dir": str(run), "figures": figures}
    if threshold is not None:
        params["threshold"] = threshold
    out = tmp_path / f"out{phase}.ipynb"
    papermill.execute_notebook(str(NOTEBOOK), str(out), parameters=params, kernel_name="python3",
                               progress_bar=False, cwd=str(tmp_path))
    return run, out


def test_notebook_scores_and_records_each_phase(tmp_path):
    # The three kernels run side by side: most of each run is kernel start-up and imports.
    with ThreadPoolExecutor(max_workers=len(CASES)) as pool:
        results = list(pool.map(lambda case: _execute(tmp_path, *case), CASES))
    for (phase, threshold, figures), (run, out) in zip(CASES, results):
        quality = json.loads((run / "quality.json").read_text())
        entry = read_manifest(run)["quality"]
        name = {1: "CHARACTER_SHEET", 2: "ANIMATION_LOOP", 3: "FULL_VIDEO"}[phase]
        assert entry["phase"] == quality["phase"] == name
        assert entry["score"] == quality["score"] and set(entry["metrics"]) == set(quality["metrics"])
        assert entry["threshold"] == (threshold or 0.80)
        assert entry["passed"] is (threshold is None), (name, entry)
        executed = nbformat.read(out, as_version=4)
        drawn = any(o.get("output_type") == "display_data" and "image/png" in o.get("data", {})
                    for c in executed.cells for o in c.get("outputs", []))
        assert drawn is figures, name
