"""A sweep's plan: up to three axes of one phase's parameters -> the list of cells to run.

Axes are written as A1111's X/Y/Z plot writes them, or as JSON lists:

    [8, 15, 25]        the values as they are
    "8, 15, 25"        comma-separated (strings too: "DPM++ 2M, Euler a")
    "1-4"              an integer range, ends included: 1, 2, 3, 4
    "8-40:8"           ... with a step: 8, 16, 24, 32, 40 ("5-7:0.5" for numbers: 5.0, 5.5, 6.0, 6.5, 7.0)
    "8-40 (+8)"        A1111's other way to write a step
    "5-7 [5]"          A1111's count: 5 values evenly from 5 to 7

`mode` "grid" runs every combination (the first axis varies fastest: X, then Y, then Z); "zip" runs
the i-th value of every axis together (all axes the same length). Every value is checked against the
phase's spec axis by axis, then every cell as a whole (the spec's cross-field rules), before anything
runs; a `SweepError` names the field: `axes.<name>` for an axis, the parameter's name otherwise.

    plan = build_plan(1, {"prompt": "a girl", "seed": 3}, {"steps": "8-24:8", "guidance_scale": [5, 7]})
    plan.cells[0]    # {"steps": 8, "guidance_scale": 5.0}
    plan.values(0)   # the whole parameters of cell 0
"""

from __future__ import annotations

import itertools
import math
import re
from dataclasses import dataclass, field
from typing import Any, Mapping

from animenb.phases.cost import job_cost
from animenb.phases.spec import Param, SpecError, phase_spec

MAX_AXES = 3  # X, Y and Z, as in A1111
MAX_CELLS = 64  # one sweep's cells at most (each is a job)
MODES = ("grid", "zip")
MAX_RANGE_VALUES = 1000  # a range is expanded before the cell cap applies: bound the expansion itself

_RANGE = re.compile(
    r"^\s*(?P<start>[-+]?\d+(?:\.\d+)?)\s*-\s*(?P<stop>[-+]?\d+(?:\.\d+)?)\s*"
    r"(?::\s*(?P<step>\d+(?:\.\d+)?)|\(\s*\+\s*(?P<plus>\d+(?:\.\d+)?)\s*\)"
    r"|\[\s*(?P<count>\d+)\s*\])?\s*$"
)


class SweepError(SpecError):
    """A sweep the spec refuses; `field` is `axes`, `axes.<name>`, `mode` or a parameter's name."""


def _number(text: str, param: Param) -> int | float:
    value = float(text)
    if param.type == "integer" and value.is_integer():
        return int(value)
    return value


def parse_axis(name: str, raw: Any, param: Param) -> list:
    """An axis's values as a list (module docstring), each checked by `param`; SweepError names `axes.<name>`."""
    where = f"axes.{name}"
    if isinstance(raw, str):
        match = _RANGE.match(raw) if param.type in ("integer", "number") else None
        values = _expand_range(where, match, param) if match else [v.strip() for v in raw.split(",")]
        if param.type in ("integer", "number") and not match:
            try:
                values = [_number(v, param) for v in values]
            except ValueError:
                raise SweepError(
                    where, f"`{where}` must be numbers, a list or a range like 8-40:8, got {raw!r}."
                ) from None
    elif isinstance(raw, list):
        values = list(raw)
    else:
        raise SweepError(where, f'`{where}` must be a list of values or a string like "8-40:8", got {raw!r}.')
    if not values:
        raise SweepError(where, f"`{where}` must have at least one value.")
    checked = []
    for value in values:
        if param.type == "integer" and type(value) is float and value.is_integer():
            value = int(value)  # JSON has one number type
        if param.type == "number" and type(value) is int:
            value = float(value)
        try:
            param.check(value)
        except SpecError as exc:
            raise SweepError(where, f"`{where}`: {exc}") from None
        checked.append(value)
    if len(set(map(repr, checked))) != len(checked):
        raise SweepError(where, f"`{where}` lists a value twice: {checked!r}.")
    return checked


def _expand_range(where: str, match: re.Match, param: Param) -> list:
    start, stop = float(match["start"]), float(match["stop"])
    if match["count"] is not None:
        count = int(match["count"])
        if not 1 <= count <= MAX_RANGE_VALUES:
            raise SweepError(where, f"`{where}`: the count must be in [1, {MAX_RANGE_VALUES}], got {count}.")
        values = [start] if count == 1 else [start + (stop - start) * i / (count - 1) for i in range(count)]
        if param.type == "integer":
            values = [float(round(v)) for v in values]
    else:
        step = float(match["step"] or match["plus"] or 1)
        if step <= 0:
            raise SweepError(where, f"`{where}`: the step must be positive, got {step:g}.")
        if (stop - start) / step + 1 > MAX_RANGE_VALUES:
            raise SweepError(where, f"`{where}` expands to more than {MAX_RANGE_VALUES} values.")
        direction = 1 if stop >= start else -1
        count = math.floor(abs(stop - start) / step + 1e-9) + 1
        values = [round(start + direction * step * i, 10) for i in range(count)]
    return [_number(repr(v), param) for v in values]


@dataclass(frozen=True)
class SweepPlan:
    """Validated: `phase` id, `parameters` shared by every cell, `axes` {name: values} in X, Y, Z order,
    `mode`, and `cells` (one {axis: value} per job, in run order)."""

    phase: int
    parameters: dict[str, Any]
    axes: dict[str, list]
    mode: str = "grid"
    cells: list[dict[str, Any]] = field(default_factory=list)

    def values(self, index: int) -> dict[str, Any]:
        """The whole parameters of cell `index`."""
        return {**self.parameters, **self.cells[index]}

    def cost(self, *, default_size: int, svd_size: tuple[int, int] | None = None) -> float:
        """Megapixel-steps of every cell (`animenb.phases.cost.job_cost`), summed."""
        return sum(
            job_cost(self.phase, self.values(i), default_size=default_size, svd_size=svd_size)
            for i in range(len(self.cells))
        )

    def shape(self) -> tuple[int, ...]:
        """Values per axis (grid) or (cells,) (zip)."""
        return tuple(len(v) for v in self.axes.values()) if self.mode == "grid" else (len(self.cells),)

    def as_dict(self) -> dict:
        """The recipe: what a parent job stores and `plan_from_dict` reads back."""
        return {
            "phase": self.phase,
            "parameters": dict(self.parameters),
            "axes": {k: list(v) for k, v in self.axes.items()},
            "mode": self.mode,
        }


def combine(axes: Mapping[str, list], mode: str) -> list[dict[str, Any]]:
    """The cells of `axes`: every combination, first axis fastest ("grid"), or the values side by side ("zip")."""
    names = list(axes)
    if mode == "zip":
        return [dict(zip(names, row)) for row in zip(*axes.values())]
    return [dict(zip(names, reversed(row))) for row in itertools.product(*reversed(list(axes.values())))]


def build_plan(
    phase: int | str,
    parameters: Mapping[str, Any],
    axes: Mapping[str, Any],
    mode: str = "grid",
    *,
    max_cells: int = MAX_CELLS,
) -> SweepPlan:
    """Validate and expand a sweep (module docstring). `parameters` are the values every cell shares; a
    name may not be both a parameter and an axis."""
    spec = phase_spec(phase)
    if mode not in MODES:
        raise SweepError("mode", f"`mode` must be one of {', '.join(MODES)}, got {mode!r}.")
    if not isinstance(axes, Mapping) or not axes:
        raise SweepError(
            "axes", f"`axes` must be an object {{parameter: values}} with 1 to {MAX_AXES} axes, got {axes!r}."
        )
    if len(axes) > MAX_AXES:
        raise SweepError("axes", f"`axes` may name at most {MAX_AXES} parameters (X, Y, Z), got {len(axes)}.")
    sweepable = {p.name: p for p in spec.api_params if not p.image_ref}
    parsed: dict[str, list] = {}
    for name, raw in axes.items():
        if name not in sweepable:
            raise SweepError(
                f"axes.{name}",
                f"`axes.{name}`: phase {spec.phase} has no parameter {name!r} to sweep; "
                f"sweepable: {', '.join(sweepable)}.",
            )
        if name in parameters:
            raise SweepError(f"axes.{name}", f"`{name}` is both an axis and a parameter: give it in one place.")
        parsed[name] = parse_axis(name, raw, sweepable[name])
    if mode == "zip" and len({len(v) for v in parsed.values()}) > 1:
        lengths = ", ".join(f"{k}: {len(v)}" for k, v in parsed.items())
        raise SweepError("axes", f"`mode` zip needs axes of one length, got {lengths}.")
    count = math.prod(len(v) for v in parsed.values()) if mode == "grid" else len(next(iter(parsed.values())))
    if count > max_cells:
        raise SweepError("axes", f"`axes` make {count} cells; a sweep may have at most {max_cells}.")
    cells = combine(parsed, mode)
    for cell in cells:
        try:
            spec.check({**parameters, **cell})
        except SpecError as exc:
            where = f"axes.{exc.field}" if exc.field in cell else exc.field
            raise SweepError(where, f"cell {cell}: {exc}") from None
    return SweepPlan(phase=spec.phase, parameters=dict(parameters), axes=parsed, mode=mode, cells=cells)


def plan_from_dict(data: Mapping[str, Any]) -> SweepPlan:
    """The plan a parent job stored (`SweepPlan.as_dict`), expanded again (the same cells, in the same order)."""
    return build_plan(
        data["phase"],
        data["parameters"],
        data["axes"],
        data.get("mode", "grid"),
        max_cells=max(MAX_CELLS, math.prod(len(v) for v in data["axes"].values())),
    )
