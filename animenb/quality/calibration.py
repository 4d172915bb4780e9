"""Fitting the gates' floors and thresholds to labelled outputs, and re-deciding scored outputs without
rescoring them.

A gate's decision depends only on the metrics and the config (scoring.combine), so once a set of
outputs is scored (validity.run_suite rows, or reviewers' verdicts on real outputs) any config can be
tried on it for free. `fit` chooses, per phase, each critical floor and the score threshold by
coordinate ascent on *balanced accuracy* (the mean of the pass rate of good outputs and the fail rate
of broken ones, so that the more numerous class does not dominate), and among the values that reach the
best balanced accuracy it takes the middle of the widest run: the floor sits midway between the good
outputs' lowest and the broken outputs' highest values, as far from both as the data allows (the same
idea as a maximum-margin classifier). Fit only on calibration rows; report on held-out ones.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable, Sequence

import numpy as np

from .config import validate_config
from .scoring import combine

GRID = np.round(np.arange(0.0, 1.0001, 0.01), 2)  # candidate floors and thresholds (metrics are in [0, 1])


def row_metrics(row: dict, prefix: str = "metric.") -> dict[str, float]:
    """The metrics of a `validity.run_suite` row (keys "metric.<name>"; "second.<name>" for second opinions)."""
    return {k[len(prefix) :]: float(v) for k, v in row.items() if k.startswith(prefix) and v is not None}


def redecide(rows: Iterable[dict], config: dict, threshold: float | None = None) -> list[dict]:
    """The rows' verdicts under another `config`, from their stored metrics (no rescoring)."""
    cfg = validate_config(config)
    out = []
    for row in rows:
        report = combine(row["phase"], row_metrics(row), cfg, threshold, row_metrics(row, "second."))
        verdict = report.verdict
        out.append(
            {
                **row,
                "verdict": verdict,
                "passed": verdict == "pass",
                "score": report.score,
                "threshold": report.threshold,
                "failures": list(report.failures),
                "review_reasons": list(report.review_reasons),
                "correct": verdict == ("pass" if row["expected_pass"] else "fail"),
            }
        )
    return out


def balanced_accuracy(passed: np.ndarray, expected: np.ndarray) -> float:
    """Mean of the good outputs' pass rate and the broken outputs' fail rate (1 class missing: its rate)."""
    rates = [passed[expected].mean()] if expected.any() else []
    if (~expected).any():
        rates.append((~passed[~expected]).mean())
    return float(np.mean(rates)) if rates else 1.0


def _widest_best(values: np.ndarray, scores: np.ndarray) -> float:
    """The middle of the widest run of consecutive grid `values` whose score is the best."""
    best = scores >= scores.max() - 1e-12
    runs, start = [], None
    for i, b in enumerate(np.append(best, False)):
        if b and start is None:
            start = i
        elif not b and start is not None:
            runs.append((i - start, start, i - 1))
            start = None
    _, lo, hi = max(runs)
    return float(values[(lo + hi) // 2])


def fit_phase(rows: Sequence[dict], section: dict, passes: int = 3) -> tuple[dict, float, float]:
    """Floors of `section["critical"]` and the threshold fitted to one phase's `rows` (their score and
    critical metrics); returns (floors, threshold, balanced accuracy on the rows)."""
    expected = np.array([r["expected_pass"] for r in rows], dtype=bool)
    scores = np.array([r["score"] for r in rows], dtype=np.float64)
    names = [k for k in section["critical"] if all(f"metric.{k}" in r for r in rows)]
    values = {k: np.array([r[f"metric.{k}"] for r in rows], dtype=np.float64) for k in names}
    floors = {k: float(section["critical"][k]) for k in names}
    threshold = float(section["threshold"])

    def passed(floors: dict, threshold: float) -> np.ndarray:
        ok = scores >= threshold
        for k, f in floors.items():
            ok &= values[k] >= f
        return ok

    for _ in range(passes):
        for k in names:
            grid = [balanced_accuracy(passed({**floors, k: f}, threshold), expected) for f in GRID]
            floors[k] = _widest_best(GRID, np.array(grid))
        grid = [balanced_accuracy(passed(floors, t), expected) for t in GRID]
        threshold = _widest_best(GRID, np.array(grid))
    return floors, threshold, balanced_accuracy(passed(floors, threshold), expected)


def fit(rows: Iterable[dict], config: dict) -> tuple[dict, dict[str, dict]]:
    """A copy of `config` with every phase's critical floors and threshold fitted to `rows` (scored with
    `config`'s weights: the score does not depend on floors), and per phase what was fitted."""
    cfg = validate_config(config)
    out = copy.deepcopy(cfg)
    rows = list(rows)
    fitted: dict[str, dict] = {}
    for phase, section in cfg["phases"].items():
        mine = [r for r in rows if r["phase"] == phase]
        if not mine:
            continue
        floors, threshold, ba = fit_phase(mine, section)
        out["phases"][phase]["critical"].update(floors)
        out["phases"][phase]["threshold"] = threshold
        fitted[phase] = {"critical": floors, "threshold": threshold, "balanced_accuracy": ba, "cases": len(mine)}
    return validate_config(out), fitted
