"""Run a job notebook with papermill's steps and save it once, atomically, in its public form.

`papermill.execute_notebook` writes the executed notebook where it ends, validating it again first
(nbclient validated every output as it arrived); a job's notebook then had to be read back and
rewritten without the server's paths (`animenb.runner.public_paths`), and for that moment a reader
could fetch it with them. Here the same steps (load, parameterize, record the paths in its metadata,
run on the engine, mark the cell that failed) end in one save: the text, passed through `public_text`,
goes to a temporary file that replaces the output in one step, whatever way the run ended.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Callable

from animenb import atomic

from .engine import ENGINE_NAME

log = logging.getLogger(__name__)


def execute_notebook(
    input_path: str | Path,
    output_path: str | Path,
    parameters: dict[str, Any] | None = None,
    *,
    public_text: Callable[[str], str] | None = None,
    kernel_name: str | None = None,
    **engine_kwargs: Any,
):
    """As `papermill.execute_notebook(input_path, output_path, parameters, engine_name="animenb",
    progress_bar=False, ...)`, but saved once when the run ends (module docstring). Raises what papermill
    raises (`PapermillExecutionError` for a cell that failed) after the save."""
    from papermill.engines import papermill_engines
    from papermill.execute import prepare_notebook_metadata, raise_for_execution_errors, remove_error_markers
    from papermill.iorw import load_notebook_node
    from papermill.parameterize import parameterize_notebook

    input_path, output_path = str(input_path), str(output_path)
    nb = load_notebook_node(input_path)
    if parameters:
        nb = parameterize_notebook(nb, parameters, kernel_name=kernel_name, engine_name=ENGINE_NAME)
    nb = remove_error_markers(prepare_notebook_metadata(nb, input_path, output_path))
    kernel_name = papermill_engines.nb_kernel_name(engine_name=ENGINE_NAME, nb=nb, name=kernel_name)
    try:
        # The engine runs `nb` in place, so it holds every output however the run ends; papermill's
        # error check marks the failed cell in it too (and skips its own save: no path).
        nb = papermill_engines.execute_notebook_with_engine(
            ENGINE_NAME,
            nb,
            input_path=input_path,
            output_path=None,
            kernel_name=kernel_name,
            progress_bar=False,
            **engine_kwargs,
        )
        raise_for_execution_errors(nb, None)
    except BaseException:
        try:
            save_notebook(nb, output_path, public_text)
        except Exception:  # the run's own error is the one to report
            log.exception("could not save the notebook to %s", output_path)
        raise
    save_notebook(nb, output_path, public_text)
    return nb


def save_notebook(nb, path: str | Path, public_text: Callable[[str], str] | None = None) -> None:
    """`nb` as nbformat writes it (not validated again), through `public_text`, atomically."""
    import nbformat

    text = nbformat.v4.writes(nb) + "\n"
    atomic.write_text(Path(path), public_text(text) if public_text else text)
