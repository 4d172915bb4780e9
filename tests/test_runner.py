"""Runner pieces without the server: parameter safety, the event bus, the engine on its own."""
from __future__ import annotations

import ast
import math
from pathlib import Path

import nbformat
import pytest

from animenb.progress import PROGRESS_MIME
from animenb.runner.events import EventBus, JobFinishedEvent, JobProgressEvent, JobStartedEvent
from animenb.runner.parameters import ParameterError, phase_parameters, to_papermill

NOTEBOOKS = Path(__file__).parent / "notebooks"
NASTY = ['plain', 'quote " inside', "single ' quote", '"""triple"""', "back\\slash\\", "new\nline\r\n",
         '"; import os; os.system("echo PWNED"); "', "\\\"", "unicode ✓ 日本", "\x01\x7f", "tab\there"]


@pytest.mark.parametrize("prompt", NASTY)
def test_prompts_reach_the_notebook_verbatim_as_one_assignment(prompt):
    from papermill.translators import translate_parameters

    params = to_papermill({"prompt": prompt, "tags": [prompt], "extra": {"k": prompt}})
    code = translate_parameters("python3", "python", params, "injected")
    tree = ast.parse(code)
    assigns = [n for n in tree.body if isinstance(n, ast.Assign)]
    assert len(assigns) == len(tree.body) == 3
    values = {a.targets[0].id: ast.literal_eval(a.value) for a in assigns}
    assert values == {"prompt": prompt, "tags": [prompt], "extra": {"k": prompt}}


@pytest.mark.parametrize("bad", [
    {"x; import os": 1}, {"class": 1}, {"_private": 1}, {"": 1}, {"p": ("tuple",)}, {"p": Path("/tmp")},
    {"p": math.nan}, {"p": math.inf}, {"p": {1: "int key"}}, {"p": object()}, {"p": b"bytes"},
])
def test_unsafe_parameters_are_refused(bad):
    with pytest.raises(ParameterError):
        to_papermill(bad)


def test_phase_parameters_add_output_dir_models_backend(tmp_path):
    params = phase_parameters({"prompt": "a", "seed": 3, "phase": 1}, output_dir=tmp_path, models="tiny",
                              backend="diffusers")
    assert params == {"prompt": "a", "seed": 3, "output_dir": str(tmp_path.resolve()), "models": "tiny",
                      "backend": "diffusers"}


def test_event_bus_seq_history_and_subscribers():
    bus = EventBus(history=3)
    got_a, got_all = [], []
    sub = bus.subscribe("a", got_a.append)
    bus.subscribe(None, got_all.append)
    bus.subscribe("a", lambda e: 1 / 0)  # a broken subscriber is dropped, the others go on
    for i in range(5):
        bus.publish(JobProgressEvent.build("a", {"percent": 10 * i, "step": i, "total_steps": 5, "stage": "s"}))
    bus.publish(JobStartedEvent(job_id="b", phase=1, device="cpu", attempt=1))
    assert [e.seq for e in got_a] == [1, 2, 3, 4, 5] and bus.last_seq("b") == 1 and len(got_all) == 6
    assert bus.subscriber_count("a") == 1
    assert [e.seq for e in bus.history("a", after=3)] == [4, 5] and len(bus.history("a")) == 3
    bus.unsubscribe(sub)
    bus.publish(JobFinishedEvent(job_id="a", status="succeeded"))
    assert len(got_a) == 5 and got_all[-1].as_dict()["event"] == "finished"


def test_a_finished_event_keeps_its_record_out_of_its_wire_form():
    """The WebSocket builds the status body from the record the event carries; the record is never sent."""
    from animenb.store import JobError, JobOutputs, JobStatus, SqliteJobStore

    store = SqliteJobStore()
    try:
        job = store.create(phase=1, parameters={})
        store.transition(job.id, JobStatus.RUNNING)
        done = store.transition(job.id, JobStatus.FAILED, error=JobError("Boom", "it broke"),
                                outputs=JobOutputs(files=["a.png"]))
    finally:
        store.close()
    event = JobFinishedEvent.build(done, duration=1.23456, seq=7)
    assert event.record is done
    wire = event.as_dict()
    assert wire == {"event": "finished", "job_id": done.id, "seq": 7, "time": event.time, "status": "failed",
                    "error": done.error.as_dict(), "outputs": ["a.png"], "duration_seconds": 1.235}
    wire["outputs"].append("b.png")
    assert event.outputs == ["a.png"]  # the wire form is a copy
    from animenb.server.openapi import event_schema

    assert "record" not in event_schema(JobFinishedEvent)["properties"]


def test_progress_event_percent_never_decreases():
    event = JobProgressEvent.build("j", {"percent": 30, "step": 3, "total_steps": 10, "eta_seconds": 2.5}, floor=40.0)
    assert event.percent == 40.0 and event.eta_seconds == 2.5
    assert JobProgressEvent.build("j", {"percent": "junk"}).percent == 0.0


def test_engine_registered_and_runs_cold_dropping_progress(tmp_path):
    """`papermill --engine animenb` without a warm kernel: a normal run, progress consumed. 50 steps
    with no delay: the kernel shows the first event, at most a step or two (0.1 s apart) and the end."""
    import papermill as pm
    from papermill.engines import papermill_engines

    from animenb.runner.engine import WarmKernelEngine

    assert papermill_engines.get_engine("animenb") is WarmKernelEngine
    seen = []
    out = tmp_path / "out.ipynb"
    pm.execute_notebook(str(NOTEBOOKS / "progress.ipynb"), str(out), engine_name="animenb", progress_bar=False,
                        parameters={"output_dir": str(tmp_path / "o"), "steps": 50, "delay": 0.0},
                        progress_callback=seen.append)
    assert seen[0]["stage"] == "denoise" and seen[0]["step"] == 0
    assert seen[-1]["stage"] == "done" and seen[-1]["step"] == seen[-1]["total_steps"] == 50
    assert len(seen) <= 4, [e["step"] for e in seen]
    nb = nbformat.read(out, as_version=4)
    assert not any(PROGRESS_MIME in o.get("data", {}) for c in nb.cells for o in c.get("outputs", []))
    assert (tmp_path / "o" / "manifest.json").is_file()


@pytest.mark.parametrize("first", ["papermill", "animenb"])
def test_engine_registers_itself_without_an_entry_point(first):
    """A checkout on PYTHONPATH has no entry point: importing the engine registers it all the same, whichever
    of papermill and the engine is imported first (a fresh interpreter where entry points find nothing)."""
    import subprocess
    import sys

    imports = (["import papermill.engines", "import animenb.runner.engine"] if first == "papermill"
               else ["import animenb.runner.engine", "import papermill.engines"])
    code = "\n".join([
        "import entrypoints",
        "entrypoints.get_group_all = lambda group, path=None: []  # as if animenb were not installed",
        *imports,
        "from papermill.engines import papermill_engines",
        "from animenb.runner.engine import WarmKernelEngine",
        "assert papermill_engines.get_engine('animenb') is WarmKernelEngine",
    ])
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr


def test_warm_kernel_reset_after_job_and_cached_language_info(tmp_path):
    """The eager reset after a job leaves the next job a clean namespace (modules stay imported); the second
    notebook gets language_info from the cache, not from a kernel_info round trip."""
    import threading

    import papermill as pm
    from nbformat.v4 import new_code_cell, new_notebook

    from animenb.runner.kernels import WarmKernel

    def notebook(name, *sources):
        nb = new_notebook(cells=[new_code_cell(s) for s in sources])
        nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
        path = tmp_path / f"{name}.ipynb"
        nbformat.write(nb, path)
        return path

    first = notebook("first", "import json\nleak = 41")
    second = notebook("second", "assert 'leak' not in globals(), 'namespace not reset'\nimport json\nprint(json.dumps(1))")
    kernel = WarmKernel("cpu")
    kernel.start()
    try:
        assert kernel.clean and kernel.language_info is None
        runs = []
        for path in (first, second):
            kernel.ensure_clean()
            kernel.clean = False
            out = tmp_path / f"out-{path.name}"
            requests = []
            original = kernel.kc.kernel_info
            kernel.kc.kernel_info = lambda *a, **k: requests.append(1) or original(*a, **k)
            pm.execute_notebook(str(path), str(out), engine_name="animenb", progress_bar=False,
                                request_save_on_cell_execute=False, warm_kernel=kernel,
                                cancel_event=threading.Event())
            kernel.kc.kernel_info = original
            runs.append((nbformat.read(out, as_version=4), len(requests)))
            kernel.reset_after_job()
            assert kernel.clean
        (nb1, info1), (nb2, info2) = runs
        assert info1 == 1 and info2 == 0
        assert nb2.metadata["language_info"]["name"] == "python" == nb1.metadata["language_info"]["name"]
        assert nb2.cells[0].outputs[0]["text"] == "1\n"
    finally:
        kernel.shutdown()


@pytest.fixture(scope="module")
def warm_kernel():
    from animenb.runner.kernels import WarmKernel

    kernel = WarmKernel("cpu")
    kernel.start()
    yield kernel
    kernel.shutdown()


def _parameterized_notebook(tmp_path, parameters_source: str, run_source: str) -> Path:
    from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

    cells = [new_markdown_cell("# title"), new_code_cell(parameters_source), new_code_cell(run_source)]
    cells[1].metadata["tags"] = ["parameters"]
    nb = new_notebook(cells=cells)
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    path = tmp_path / "parameterized.ipynb"
    nbformat.write(nb, path)
    return path


def _run_warm(kernel, path: Path, out: Path, parameters: dict):
    import threading

    import papermill as pm

    kernel.ensure_clean()
    kernel.clean = False
    try:
        return pm.execute_notebook(str(path), str(out), engine_name="animenb", progress_bar=False,
                                   request_save_on_cell_execute=False, warm_kernel=kernel, parameters=parameters,
                                   cancel_event=threading.Event())
    finally:
        kernel.reset_after_job()


def _executed_run_cell(tmp_path, kernel, run_source: str, parameters: dict):
    """The run cell of `_parameterized_notebook` (parameters `x = 1`) as saved after a warm run."""
    path = _parameterized_notebook(tmp_path, "x = 1", run_source)
    _run_warm(kernel, path, tmp_path / "out.ipynb", parameters)
    return nbformat.read(tmp_path / "out.ipynb", as_version=4).cells[-1]


def test_parameters_injected_and_next_cell_run_as_one_execution_with_their_own_outputs(tmp_path, warm_kernel):
    """One kernel execution (one execution count) for the parameters, injected-parameters and run cells; each
    cell keeps its own outputs and papermill status; the run cell sees the injected values."""
    from animenb.runner.engine import BOUNDARY_MIME

    path = _parameterized_notebook(tmp_path, "x = 1\nprint('defaults', x)", "print('run', x, y)\nx * 10")
    nb = _run_warm(warm_kernel, path, tmp_path / "out.ipynb", {"x": 5, "y": "z"})
    saved = nbformat.read(tmp_path / "out.ipynb", as_version=4)
    _title, params, injected, run = saved.cells
    assert "injected-parameters" in injected.metadata.tags
    assert [o["text"] for o in params.outputs] == ["defaults 1\n"]
    assert injected.outputs == []
    assert run.outputs[0]["text"] == "run 5 z\n" and run.outputs[1]["data"]["text/plain"] == "50"
    assert params.execution_count == injected.execution_count == run.execution_count
    assert all(c.metadata.papermill.status == "completed" for c in (params, injected, run))
    assert injected.metadata.papermill.end_time >= params.metadata.papermill.end_time
    assert params.source == "x = 1\nprint('defaults', x)"  # the joined source never reaches the notebook
    assert not any(BOUNDARY_MIME in o.get("data", {}) for c in saved.cells for o in c.get("outputs", []))
    assert nb.cells[2].execution_count == saved.cells[2].execution_count


@pytest.mark.parametrize("run_source, joined", [
    ("if True:\n    print('run', x)", False),       # a compound statement cannot share the first line
    ("@staticmethod\ndef f():\n    pass\nprint('run', x)", False),
    ("%time print('run', x)", False),                # IPython syntax: its own execution
    ("# a comment first\nprint('run', x)", True),
])
def test_the_next_cell_joins_only_when_its_first_line_can_follow(tmp_path, warm_kernel, run_source, joined):
    path = _parameterized_notebook(tmp_path, "x = 1", run_source)
    _run_warm(warm_kernel, path, tmp_path / "out.ipynb", {"x": 7})
    _title, params, injected, run = nbformat.read(tmp_path / "out.ipynb", as_version=4).cells
    assert run.metadata.papermill.status == "completed"
    assert any("run 7" in o.get("text", "") for o in run.outputs), run.outputs
    assert (params.execution_count == run.execution_count) is joined


def test_a_print_that_arrives_in_pieces_is_one_output(tmp_path, warm_kernel):
    """The kernel flushes stdout on a timer, so one line can reach the client in pieces: consecutive pieces of
    one stream join, as a frontend shows them; another stream between them keeps them apart."""
    source = ("import sys\n"
              "sys.stdout.write('run '); sys.stdout.flush()\n"
              "sys.stdout.write(f'{x}\\n'); sys.stdout.flush()\n"
              "sys.stderr.write('warned\\n'); sys.stderr.flush()\n"
              "print('after')")
    run = _executed_run_cell(tmp_path, warm_kernel, source, {"x": 7})
    assert [(o["name"], o["text"]) for o in run.outputs] == [
        ("stdout", "run 7\n"), ("stderr", "warned\n"), ("stdout", "after\n")]


def test_a_warm_kernel_skips_empty_flushes_and_keeps_output_order(tmp_path, warm_kernel):
    """A flush with nothing written makes no round trip through the kernel's IOPub thread
    (`QUIET_FLUSH_CODE`); prints and displays still arrive in the order the cell made them."""
    source = ("import sys\n"
              "from IPython.display import display\n"
              "pub = sys.stdout.pub_thread\n"
              "scheduled = []\n"
              "pub.schedule = lambda f, schedule=pub.schedule: (scheduled.append(f), schedule(f))[1]\n"
              "sys.stdout.flush(); sys.stderr.flush()\n"
              "del pub.schedule\n"
              "for i in range(x):\n"
              "    print('line', i)\n"
              "    display({'text/plain': f'shown {i}'}, raw=True)\n"
              "print('round trips for empty flushes:', len(scheduled))")
    run = _executed_run_cell(tmp_path, warm_kernel, source, {"x": 20})
    seen = [o["text"] if o["output_type"] == "stream" else o["data"]["text/plain"] for o in run.outputs]
    expected = [text for i in range(20) for text in (f"line {i}\n", f"shown {i}")]
    assert seen == expected + ["round trips for empty flushes: 0\n"]


def test_a_warm_kernel_transforms_each_cell_once(tmp_path, warm_kernel):
    """ipykernel and IPython's run_cell each transform a cell's source; the warm kernel does it once
    (`ONE_TRANSFORM_CODE`), and IPython syntax still runs."""
    from nbformat.v4 import new_code_cell, new_notebook

    nb = new_notebook(cells=[
        new_code_cell("manager = get_ipython().input_transformer_manager\n"
                      "calls = []\n"
                      "manager.transform_cell = lambda cell, transform=manager.transform_cell: "
                      "(calls.append(cell), transform(cell))[1]"),
        new_code_cell("answer = !echo 42\nint(answer[0]) + 1"),
        new_code_cell("del manager.transform_cell\nprint(len([c for c in calls if c.startswith('answer')]))"),
    ])
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(nb, tmp_path / "in.ipynb")
    _run_warm(warm_kernel, tmp_path / "in.ipynb", tmp_path / "out.ipynb", {})
    _, shell_cell, count_cell = nbformat.read(tmp_path / "out.ipynb", as_version=4).cells
    assert shell_cell.outputs[0]["data"]["text/plain"] == "43"
    assert count_cell.outputs[0]["text"] == "1\n"


def _run_and_save(kernel, path: Path, out: Path, parameters: dict, **kwargs):
    """`animenb.runner.job_notebook.execute_notebook` on the warm kernel, as a local slot runs a job's notebook."""
    import threading

    from animenb.runner.job_notebook import execute_notebook

    kernel.ensure_clean()
    kernel.clean = False
    kwargs.setdefault("cancel_event", threading.Event())
    try:
        return execute_notebook(path, out, parameters, warm_kernel=kernel, **kwargs)
    finally:
        kernel.reset_after_job()


def test_a_job_notebook_appears_once_when_it_ends_in_its_public_form(tmp_path, warm_kernel):
    """No notebook on disk while it runs; then the whole of it, through `public_text`, with no temporary
    file left beside it."""
    out = tmp_path / "job" / "notebook.ipynb"
    out.parent.mkdir()
    path = _parameterized_notebook(tmp_path, "x = 1", "import os\nprint('saved yet:', os.path.exists(out), 'in', here)")
    _run_and_save(warm_kernel, path, out, {"x": 2, "here": str(tmp_path), "out": str(out)},
                  public_text=lambda text: text.replace(str(tmp_path), "<root>"))
    text = out.read_text(encoding="utf-8")
    assert str(tmp_path) not in text
    saved = nbformat.reads(text, as_version=4)
    nbformat.validate(saved)
    assert saved.cells[-1].outputs[0]["text"] == "saved yet: False in <root>\n"
    assert saved.metadata.papermill.output_path == "<root>/job/notebook.ipynb"
    assert saved.metadata.papermill.parameters == {"x": 2, "here": "<root>", "out": "<root>/job/notebook.ipynb"}
    assert [p.name for p in out.parent.iterdir()] == ["notebook.ipynb"]


def test_a_failed_job_notebook_is_saved_with_the_failed_cell_marked(tmp_path, warm_kernel):
    import papermill as pm
    from papermill.execute import ERROR_MARKER_TAG

    path = _parameterized_notebook(tmp_path, "x = 1", "raise ValueError(f'bad {x} in {here}')")
    out = tmp_path / "notebook.ipynb"
    with pytest.raises(pm.PapermillExecutionError) as err:
        _run_and_save(warm_kernel, path, out, {"x": 3, "here": str(tmp_path)},
                      public_text=lambda text: text.replace(str(tmp_path), "<root>"))
    assert err.value.ename == "ValueError" and str(tmp_path) in err.value.evalue  # the server's log keeps it
    assert str(tmp_path) not in out.read_text(encoding="utf-8")
    saved = nbformat.read(out, as_version=4)
    assert ERROR_MARKER_TAG in saved.cells[0].metadata.tags
    failed = [c for c in saved.cells if c.cell_type == "code"][-1]
    assert failed.metadata.papermill.status == "failed" and failed.outputs[-1]["evalue"] == "bad 3 in <root>"


def test_a_notebook_that_cannot_be_saved_leaves_the_runs_own_error_to_report(tmp_path, warm_kernel):
    import papermill as pm

    path = _parameterized_notebook(tmp_path, "x = 1", "raise ValueError('its own')")
    with pytest.raises(pm.PapermillExecutionError) as err:
        _run_and_save(warm_kernel, path, tmp_path / "no such folder" / "notebook.ipynb", {})
    assert err.value.evalue == "its own"


def test_a_job_notebook_cancelled_between_cells_is_saved_as_far_as_it_ran(tmp_path, warm_kernel):
    """The engine raises `JobCancelled` before the next cell; the notebook is saved all the same."""
    import threading

    from nbformat.v4 import new_code_cell, new_notebook

    from animenb.runner.engine import JobCancelled

    nb = new_notebook(cells=[
        new_code_cell("from IPython.display import display\nprint('first')\n"
                      f"display({{{PROGRESS_MIME!r}: {{'percent': 50.0}}}}, raw=True)"),
        new_code_cell("print('second')"),
    ])
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(nb, tmp_path / "in.ipynb")
    cancel = threading.Event()
    with pytest.raises(JobCancelled):
        _run_and_save(warm_kernel, tmp_path / "in.ipynb", tmp_path / "out.ipynb", {}, cancel_event=cancel,
                      progress_callback=lambda payload: cancel.set())
    first, second = nbformat.read(tmp_path / "out.ipynb", as_version=4).cells
    assert first.outputs[0]["text"] == "first\n" and first.metadata.papermill.status == "completed"
    assert second.outputs == [] and second.execution_count is None


def test_a_joined_cells_traceback_has_its_own_line_numbers(tmp_path, warm_kernel):
    import papermill as pm

    path = _parameterized_notebook(tmp_path, "x = 1", "y = x + 1\n\nraise ValueError(f'boom {y}')")
    with pytest.raises(pm.PapermillExecutionError) as err:
        _run_warm(warm_kernel, path, tmp_path / "out.ipynb", {"x": 2})
    assert err.value.ename == "ValueError" and err.value.evalue == "boom 3"
    params, injected, run = [c for c in nbformat.read(tmp_path / "out.ipynb", as_version=4).cells
                             if c.cell_type == "code"]
    assert params.execution_count == run.execution_count  # it did run joined
    assert run.metadata.papermill.status == "failed" and injected.metadata.papermill.status == "completed"
    traceback = "\n".join(run.outputs[-1]["traceback"])
    assert "line 3" in traceback and "line 5" not in traceback, traceback


@pytest.mark.parametrize("where", ["parameters", "injected"])
def test_an_error_in_a_joined_cell_is_that_cells_error(tmp_path, warm_kernel, where):
    """Papermill marks the cell that raised, and only it; the cells after it never run."""
    import papermill as pm
    from nbformat.v4 import new_code_cell

    parameters_source = "x = 1\nraise ValueError('bad default')" if where == "parameters" else "x = 1"
    path = _parameterized_notebook(tmp_path, parameters_source, "print('run')")
    nb = nbformat.read(path, as_version=4)
    # Where papermill puts its injected cell; injected code that raises (papermill's own cannot).
    injected = new_code_cell("x = 2\nint('not a number')" if where == "injected" else "x = 2")
    injected.metadata["tags"] = ["injected-parameters"]
    nb.cells.insert(2, injected)
    nbformat.write(nb, path)
    with pytest.raises(pm.PapermillExecutionError) as err:
        _run_warm(warm_kernel, path, tmp_path / "out.ipynb", {})
    assert err.value.ename == "ValueError"
    params, injected, run = [c for c in nbformat.read(tmp_path / "out.ipynb", as_version=4).cells
                             if c.cell_type == "code"]
    failed, other = (params, injected) if where == "parameters" else (injected, params)
    assert failed.metadata.papermill.exception is True and failed.metadata.papermill.status == "failed"
    assert [o["output_type"] for o in failed.outputs] == ["error"]
    assert other.outputs == [] and other.metadata.papermill.status == (
        "pending" if where == "parameters" else "completed")
    assert run.metadata.papermill.status == "pending" and run.outputs == []
