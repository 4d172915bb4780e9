"""`animenb run PHASE -p key value ...`: one phase notebook under papermill, in a fresh kernel, with a tqdm bar.

The notebook is the phase's notebook from the catalog (notebooks/0N_*.ipynb) and takes the
same parameters: its `parameters` cell lists them. Values go through the same checks as
jobs (`animenb.runner.parameters`: identifier names, plain JSON values; the phase's spec,
`animenb.phases.spec`: types, ranges, cross-field rules) before a kernel starts, plus one
more: a name the notebook does not declare is refused, and a value whose type does not fit the
notebook's default is refused (a str default takes the text as typed, so `-p prompt no`
is the string "no", not False). The executed notebook is kept as DIR/notebook.ipynb next
to the run's files, as for a job.
"""

from __future__ import annotations

import argparse
import ast
import math
import sys
from datetime import date, datetime
from pathlib import Path
from typing import Any

HELP = "run one phase notebook (1/2/3 or its name) under papermill with -p parameters; prints where the files are"
NOTEBOOK_NAME = "notebook.ipynb"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.epilog = (
        "examples:\n"
        "  animenb run 1 -p prompt 'girl with red scarf' -p steps 20 -p seed 7\n"
        "  animenb run CHARACTER_SHEET -f parameters/character_sheet.yaml --output-dir runs/sheet\n"
        "  animenb run 2 -p reference_image runs/sheet -p models tiny\n"
        "values are YAML scalars (15 -> int, 7.5 -> float, null -> None, true -> bool) unless the\n"
        "notebook's default is a string; -p wins over -f; see a phase's parameters cell for names."
    )
    parser.add_argument("phase", metavar="PHASE", help="1, 2, 3 or CHARACTER_SHEET, ANIMATION_LOOP, FULL_VIDEO")
    parser.add_argument(
        "-p",
        "--parameter",
        dest="parameters",
        nargs=2,
        action="append",
        default=[],
        metavar=("NAME", "VALUE"),
        help="a notebook parameter (repeatable)",
    )
    parser.add_argument(
        "-f",
        "--parameters-file",
        dest="parameters_file",
        default=None,
        metavar="YAML",
        help="a YAML mapping of parameters, e.g. parameters/character_sheet.yaml",
    )
    parser.add_argument(
        "--output-dir",
        default=None,
        metavar="DIR",
        help="where the run writes its files and notebook.ipynb (default: outputs/<timestamp>-<phase>-<id>/)",
    )
    parser.add_argument("--models", default=None, help="model profile (same as -p models NAME)")
    parser.add_argument("--kernel", default="python3", help="Jupyter kernel name (default python3)")
    parser.add_argument("--no-score", action="store_true", help="skip quality scoring after the run")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


# -- parameters --------------------------------------------------------------------------------
def notebook_parameters(notebook: str | Path) -> dict[str, Any]:
    """{name: default} from the notebook's `parameters`-tagged cell (literal defaults only)."""
    import nbformat

    nb = nbformat.read(str(notebook), as_version=4)
    cells = [c for c in nb.cells if c.cell_type == "code" and "parameters" in c.metadata.get("tags", [])]
    if not cells:
        raise ValueError(f"{notebook} has no cell tagged `parameters`.")
    defaults: dict[str, Any] = {}
    for node in ast.parse(cells[0].source).body:
        if isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name):
            try:
                defaults[node.targets[0].id] = ast.literal_eval(node.value)
            except ValueError:
                defaults[node.targets[0].id] = None
    return defaults


def parse_value(text: str) -> Any:
    """A YAML scalar, as papermill's -p reads it: "15" -> 15, "7.5" -> 7.5, "null" -> None, "true" -> True."""
    import yaml

    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError:
        return text
    if isinstance(value, (date, datetime)):  # YAML would make "2025-01-01" a date: keep the text
        return text
    return value


def _fits(default: Any, value: Any) -> bool:
    if default is None or value is None:
        return True
    if isinstance(default, bool):
        return isinstance(value, bool)
    if isinstance(default, int):
        return isinstance(value, int) and not isinstance(value, bool)
    if isinstance(default, float):
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    return isinstance(value, type(default))


def resolve_parameters(
    declared: dict[str, Any], from_file: dict[str, Any], pairs: list[tuple[str, str]], phase_name: str
) -> dict[str, Any]:
    """-f values, then -p values (text as typed where the default is a str), checked against `declared`."""
    from ..runner.parameters import to_papermill

    values: dict[str, Any] = dict(from_file)
    for name, text in pairs:
        default = declared.get(name)
        values[name] = text if isinstance(default, str) else parse_value(text)
    for name, value in values.items():
        if name not in declared:
            known = ", ".join(declared)
            raise ValueError(f"`{name}` is not a parameter of the {phase_name} notebook; its parameters are: {known}.")
        if isinstance(value, float) and not math.isfinite(value):
            raise ValueError(f"`{name}` must be a finite number, got {value!r}.")
        if not _fits(declared[name], value):
            raise ValueError(
                f"`{name}` must be {type(declared[name]).__name__} like its default {declared[name]!r}, got {value!r}."
            )
    return to_papermill(values)


def _read_parameters_file(path: str | None) -> dict[str, Any]:
    if not path:
        return {}
    import yaml

    file = Path(path).expanduser()
    if not file.is_file():
        raise FileNotFoundError(f"`-f`: no parameters file at {file}.")
    try:
        data = yaml.safe_load(file.read_text())
    except yaml.YAMLError as exc:
        raise ValueError(f"`-f` {file}: not valid YAML ({str(exc).splitlines()[0]}).") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ValueError(f"`-f` {file} must be a YAML mapping of name: value, got {type(data).__name__}.")
    return data


# -- run -----------------------------------------------------------------------------------------
class _Bar:
    """A tqdm bar over the phase's denoising steps, fed by the notebook's progress display data."""

    def __init__(self, label: str, enabled: bool):
        self.label, self.enabled = label, enabled
        self.bar: Any = None  # tqdm's bar, made on the first event
        self.last: dict | None = None

    def __call__(self, event: dict) -> None:
        self.last = event
        if not self.enabled:
            return
        if event.get("part") == "quality":  # scoring comes after the last step: said on the steps' bar
            if self.bar is not None:
                self.bar.set_postfix_str("scoring")
            return
        total = int(event.get("total_steps") or 1)
        if self.bar is None or self.bar.total != total:
            from tqdm.auto import tqdm

            if self.bar is not None:
                self.bar.close()
            self.bar = tqdm(total=total, desc=self.label, unit="step", file=sys.stderr, dynamic_ncols=True)
        self.bar.set_postfix_str(str(event.get("stage", "")), refresh=False)
        self.bar.update(max(0, int(event.get("step") or 0) - self.bar.n))

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def run(args: argparse.Namespace) -> int:
    from ..config import notebooks_dir
    from ..phases.catalog import get_phase
    from ..phases.common import stamped_output_dir
    from ..phases.spec import phase_spec

    # 0. check everything before a kernel starts
    phase = get_phase(args.phase)
    notebook = notebooks_dir() / phase.notebook
    if not notebook.is_file():
        raise FileNotFoundError(f"the {phase.name} notebook is missing: {notebook}")
    declared = notebook_parameters(notebook)
    pairs = [(name, value) for name, value in args.parameters]
    if args.models is not None:
        pairs.append(("models", args.models))
    params = resolve_parameters(declared, _read_parameters_file(args.parameters_file), pairs, phase.name)
    phase_spec(phase.id).check({**declared, **params})  # what the phase function would refuse, refused now
    given_dir = params.get("output_dir") or None
    if args.output_dir and given_dir and Path(given_dir).resolve() != Path(args.output_dir).resolve():
        raise ValueError(f"`--output-dir` {args.output_dir} and `-p output_dir` {given_dir} disagree; give one.")
    chosen_dir = args.output_dir or given_dir
    out = Path(chosen_dir).expanduser().resolve() if chosen_dir else stamped_output_dir(phase.name)
    out.mkdir(parents=True, exist_ok=True)
    params["output_dir"] = str(out)
    executed = out / NOTEBOOK_NAME

    # 1. the notebook, in a fresh kernel, progress intercepted by the animenb engine
    import logging

    from papermill.exceptions import PapermillExecutionError

    from ..runner.job_notebook import execute_notebook

    # papermill warns about every commented default it cannot parse for its own inspection
    logging.getLogger("papermill").setLevel(logging.ERROR)
    bar = _Bar(f"{phase.id} {phase.name}", enabled=not args.no_progress)
    # Scored as a job is: the quality gate's cell, appended, in the same kernel.
    from ..runner.phase_jobs import quality_cell

    extra_cells = () if args.no_score else (quality_cell(out, phase.id, None),)
    try:
        execute_notebook(
            notebook, executed, params, kernel_name=args.kernel, progress_callback=bar, extra_cells=extra_cells
        )
    except PapermillExecutionError as exc:
        bar.close()
        raise ValueError(
            f"the {phase.name} notebook failed in cell {exc.exec_count}: {exc.ename}: "
            f"{str(exc.evalue).splitlines()[0] if exc.evalue else ''}  (see {executed})"
        ) from None
    finally:
        bar.close()

    # 2. the gate's decision, then where everything is
    from ..manifest import read_manifest

    manifest = read_manifest(out)
    quality = manifest.get("quality") or {}
    if quality.get("error"):
        print(f"quality: not scored: {quality['error']['type']}: {quality['error']['message']}")
    elif not args.no_score:
        gate = "passed" if quality["passed"] else "below"
        print(f"quality: {quality['score']:.3f} ({gate} the {quality['threshold']:.2f} gate)")
    print(
        f"seed: {manifest.get('seed')}  models: {manifest.get('models')}  "
        f"time: {(manifest.get('timings') or {}).get('total_seconds', float('nan')):.2f} s"
    )
    print(f"output dir: {out}")
    print(f"notebook:   {executed}")
    return 0
