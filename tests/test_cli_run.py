"""`animenb run`: a phase notebook under papermill (tiny, 64 px, 2 steps), parameters and one-line errors."""
import contextlib
import io
import json

import nbformat
import pytest

from animenb.cli import build_parser, main
from animenb.commands.run import notebook_parameters, parse_value, resolve_parameters
from animenb.config import notebooks_dir

TINY = ["-p", "steps", "2", "-p", "width", "64", "-p", "height", "64", "--models", "tiny"]


def invoke(argv):
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(argv)
    return code, out.getvalue(), err.getvalue()


@pytest.fixture(scope="module")
def phase1_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("cli") / "sheet"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("ANIMENB_THREADS", "1")  # the kernel inherits it
        result = invoke(["run", "character_sheet", *TINY, "-p", "prompt", 'no "quoted" \\ prompt', "-p", "seed", "9",
                         "--output-dir", str(out)])
    return out, result


def test_run_phase1_under_papermill(phase1_run):
    out, (code, stdout, stderr) = phase1_run
    assert code == 0, stderr
    assert f"output dir: {out}" in stdout and f"notebook:   {out / 'notebook.ipynb'}" in stdout
    assert "quality:" in stdout and "seed: 9" in stdout
    manifest = json.loads((out / "manifest.json").read_text())
    params = manifest["parameters"]
    assert params["prompt"] == 'no "quoted" \\ prompt'  # a str default takes the text as typed, verbatim
    assert (params["steps"], params["width"], manifest["seed"], manifest["phase"]["name"]) == (2, 64, 9,
                                                                                             "CHARACTER_SHEET")
    assert 0.0 <= manifest["quality"]["score"] <= 1.0
    assert (out / "sheet.png").is_file() and len(manifest["outputs"]["poses"]) == 8
    nb = nbformat.read(out / "notebook.ipynb", as_version=4)
    injected = [c for c in nb.cells if "injected-parameters" in c.metadata.get("tags", [])]
    assert len(injected) == 1 and f'output_dir = "{out}"' in injected[0].source
    # scored as a job is: the gate's cell ran last in the same kernel, with the run's own image encoder
    assert nb.cells[-1].metadata["tags"] == ["animenb-job-step"] and "score_job(" in nb.cells[-1].source
    assert "embedding_consistency" in manifest["quality"]["metrics"]
    # progress display data is consumed by the engine, not saved into the notebook
    assert "vnd.animenb.progress" not in json.dumps([c.get("outputs", []) for c in nb.cells])
    assert "CHARACTER_SHEET" in stderr and "16/16" in stderr  # the tqdm bar over 8 poses x 2 steps
    assert "16/16" in stderr.split("scoring")[0] and "| 0/1 " not in stderr  # scoring said on that bar


@pytest.mark.parametrize("argv, message", [
    (["run", "7"], "`phase` must be one of 1/CHARACTER_SHEET"),
    (["run", "1", "-p", "stepz", "2"], "`stepz` is not a parameter of the CHARACTER_SHEET notebook"),
    (["run", "1", "-p", "steps", "many"], "`steps` must be int like its default 15, got 'many'"),
    (["run", "2", "-p", "guidance_scale", "true"], "`guidance_scale` must be float"),
    (["run", "1", "-p", "__import__", "1"], "`__import__` is not a parameter"),
    (["run", "3", "-p", "seconds", ".nan"], "`seconds` must be a finite number"),
    (["run", "1", "-f", "/nonexistent/params.yaml"], "no parameters file"),
    (["run", "1", "-p", "output_dir", "/tmp/a", "--output-dir", "/tmp/b"], "disagree"),
])
def test_errors_are_one_line(argv, message):
    code, stdout, stderr = invoke(argv)
    assert code == 2 and stdout == ""
    assert stderr.count("\n") == 1 and stderr.startswith("animenb run: error: ") and message in stderr


def test_parameters_file_errors(tmp_path):
    listing = tmp_path / "list.yaml"
    listing.write_text("- steps\n- 2\n")
    code, _, stderr = invoke(["run", "1", "-f", str(listing)])
    assert code == 2 and "must be a YAML mapping" in stderr
    nested = tmp_path / "nested.yaml"
    nested.write_text("prompt: [1, 2]\n")
    code, _, stderr = invoke(["run", "1", "-f", str(nested)])
    assert code == 2 and "`prompt` must be str" in stderr


def test_a_failing_notebook_is_one_line(tmp_path):
    code, _, stderr = invoke(["run", "1", "-p", "width", "64", "-p", "height", "64", "-p", "steps", "1",
                              "--models", "no-such-profile", "--no-progress", "--output-dir", str(tmp_path / "bad")])
    line = stderr.strip().splitlines()[-1]
    assert code == 2 and line.startswith("animenb run: error: the CHARACTER_SHEET notebook failed")
    assert "no-such-profile" in line and str(tmp_path / "bad" / "notebook.ipynb") in line
    assert (tmp_path / "bad" / "notebook.ipynb").is_file()  # kept for inspection


@pytest.mark.parametrize("argv, message", [
    (["run", "1", "-p", "steps", "0"], "`steps` must be an integer in [1, 150], got 0"),
    (["run", "2", "-p", "frames", "6"], "`frames` must be at least 2 x loop_overlap (4)"),
    (["run", "3", "-p", "seconds", "0.5"], "`seconds` must be in [1, 30], got 0.5"),
    (["run", "1", "-p", "prompt", " "], "`prompt` must not be empty"),
])
def test_the_spec_refuses_before_a_kernel_starts(tmp_path, argv, message):
    code, _, stderr = invoke(argv + ["--no-progress", "--output-dir", str(tmp_path / "never")])
    assert code == 2 and message in stderr, stderr
    assert not (tmp_path / "never").exists()


@pytest.mark.parametrize("text, value", [
    ("15", 15), ("7.5", 7.5), ("null", None), ("true", True), ("girl", "girl"), ("2025-01-01", "2025-01-01"),
    ("[1, 2]", [1, 2]), ('"15"', "15"), ("a: b: c", "a: b: c"),
])
def test_parse_value_reads_yaml_scalars(text, value):
    assert parse_value(text) == value


def test_resolve_parameters_against_the_notebook():
    declared = notebook_parameters(notebooks_dir() / "01_character_sheet.ipynb")
    assert declared["steps"] == 15 and declared["width"] is None and declared["prompt"].startswith("anime")
    params = resolve_parameters(declared, {"steps": 4, "prompt": "from file"},
                                [("steps", "3"), ("width", "64"), ("reference_image", "null"), ("negative_prompt", "7")],
                                "CHARACTER_SHEET")
    assert params == {"steps": 3, "prompt": "from file", "width": 64, "reference_image": None,
                      "negative_prompt": "7"}  # -p wins over -f; a str default keeps the text


def test_help_explains_the_options(capsys):
    with pytest.raises(SystemExit) as exit_info:
        build_parser().parse_args(["run", "--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    for option in ("-p NAME VALUE", "-f YAML", "--output-dir DIR", "--models", "examples:"):
        assert option in text
