"""Validated request values -> papermill parameters: identifier names, plain JSON types only.

papermill escapes `str` values safely (unicode_escape, then every `"`), alone or inside
lists and dicts, but pastes parameter names and the `str()` of any other type into the
parameters cell raw: a tuple, Path or numpy scalar can become code. So every name must be
a Python identifier (not a keyword, not private) and every value exactly a str, int,
float (finite), bool, None, or a list / str-keyed dict of those.
"""

from __future__ import annotations

import keyword
import math
from pathlib import Path
from typing import Any, Mapping

MAX_DEPTH = 8


class ParameterError(ValueError):
    """A value that must not reach a notebook."""


def _plain(value: Any, where: str, depth: int = 0) -> Any:
    if depth > MAX_DEPTH:
        raise ParameterError(f"`{where}` is nested deeper than {MAX_DEPTH} levels.")
    kind = type(value)
    if value is None or kind in (str, bool, int):
        return value
    if kind is float:
        if not math.isfinite(value):
            raise ParameterError(f"`{where}` must be a finite number, got {value!r}.")
        return value
    if kind is list:
        return [_plain(v, f"{where}[{i}]", depth + 1) for i, v in enumerate(value)]
    if kind is dict:
        out = {}
        for key, v in value.items():
            if type(key) is not str:
                raise ParameterError(f"`{where}` keys must be strings, got {key!r}.")
            out[key] = _plain(v, f"{where}.{key}", depth + 1)
        return out
    raise ParameterError(
        f"`{where}` must be a plain JSON value (str, int, float, bool, None, list, dict), got {kind.__name__}."
    )


def check_name(name: Any) -> str:
    if type(name) is not str or not name.isidentifier() or keyword.iskeyword(name) or name.startswith("_"):
        raise ParameterError(f"Parameter names must be public Python identifiers, got {name!r}.")
    return name


def to_papermill(values: Mapping[str, Any]) -> dict[str, Any]:
    """A copy of `values` safe to pass as papermill `parameters` (raises `ParameterError`)."""
    return {check_name(name): _plain(value, name) for name, value in values.items()}


def phase_parameters(
    request: Mapping[str, Any],
    *,
    output_dir: str | Path,
    models: str,
    backend: str | None = None,
    comfyui_url: str | None = None,
) -> dict[str, Any]:
    """The parameters of a phase notebook: the validated request fields plus where and with what to run.

    The request's own `backend` wins over the server default; the ComfyUI backend gets the
    server's `comfyui_url`.
    """
    values = dict(request)
    values.pop("phase", None)
    values["output_dir"] = str(Path(output_dir).resolve())
    values["models"] = str(models)
    backend = values.get("backend") or backend
    if backend:
        values["backend"] = str(backend)
    if backend == "comfyui":
        if not comfyui_url:
            raise ParameterError("backend `comfyui` needs the server's --comfyui-url.")
        values["comfyui_url"] = str(comfyui_url)
    return to_papermill(values)
