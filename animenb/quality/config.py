"""`parameters/quality.yaml`: weights, validity multipliers, critical floors, gate thresholds and metric mappings."""

from __future__ import annotations

import copy
import math
from pathlib import Path
from typing import Any

import yaml

from ..config import home_dir, parameters_dir
from ..phases import DEFAULT_GATE, get_phase

CONFIG_NAME = "quality.yaml"
CALIBRATED_NAME = "quality.calibrated.yaml"  # written by `animenb calibrate` into the server's home
DEFAULT_REVIEW_MARGIN = 0.0  # without one in the config the gate only passes or fails

# Metrics each phase can compute: weights and multipliers must name these.
PHASE_METRICS: dict[str, frozenset[str]] = {
    "CHARACTER_SHEET": frozenset(
        {
            "identity_consistency",
            "pose_distinctness",
            "cleanliness",
            "palette_consistency",
            "structure_consistency",
            "sharpness",
            "noise_free",
            "reference_consistency",
            "embedding_consistency",
            "not_blank",
            "not_collapsed",
        }
    ),
    "ANIMATION_LOOP": frozenset(
        {
            "loop_seam",
            "temporal_flicker",
            "motion_smoothness",
            "motion_regularity",
            "subject_consistency",
            "reference_consistency",
            "embedding_consistency",
            "cleanliness",
            "sharpness",
            "noise_free",
            "not_blank",
            "dynamic_degree",
        }
    ),
    "FULL_VIDEO": frozenset(
        {
            "temporal_flicker",
            "motion_smoothness",
            "motion_regularity",
            "subject_consistency",
            "source_consistency",
            "embedding_consistency",
            "cleanliness",
            "sharpness",
            "noise_free",
            "not_blank",
            "dynamic_degree",
        }
    ),
}

MAPPING_DEFAULTS: dict[str, float] = {
    "blur_low": 0.35,
    "blur_high": 0.89,
    "noise_low": 3.0,
    "noise_high": 13.0,
    "blank_std_floor": 12.0,
    "collapse_mad_floor": 3.0,
    "distinct_scale": 6.0,
    "foreground_tolerance": 30.0,
    "palette_bins": 8,
    "structure_crop": 32,
    "structure_low": 0.0,
    "structure_high": 0.6,
    "iou_low": 0.5,
    "iou_high": 0.8,
    "identity_bands": 3,
    "identity_distance": 40.0,
    "identity_low": 0.4,
    "identity_high": 0.9,
    "embedding_low": 0.5,
    "embedding_high": 0.95,
    "flicker_low": 0.80,
    "smoothness_scale": 0.05,
    "jitter_low": 0.6,
    "jitter_high": 1.4,
    "jitter_min_speed": 0.01,
    "jitter_cycle_gain": 4.0,
    "frame_quantile": 0.25,
    "seam_tolerance": 1.0,
    "dynamic_threshold": 1.0,
    "dynamic_span": 4,
    "texture_floor": 16.0,
}
# (low, high) pairs that must be ordered low < high; for blur, noise and jitter "low" is the good end.
ORDERED_MAPPINGS = (
    ("structure_low", "structure_high"),
    ("embedding_low", "embedding_high"),
    ("identity_low", "identity_high"),
    ("iou_low", "iou_high"),
    ("blur_low", "blur_high"),
    ("noise_low", "noise_high"),
    ("jitter_low", "jitter_high"),
)


def default_config_path() -> Path:
    return parameters_dir() / CONFIG_NAME


def active_config_path(home: str | Path | None = None) -> Path:
    """The config the gates use: `animenb calibrate`'s in the server's home (`home`, default $ANIMENB_HOME)
    when there is one, else parameters/quality.yaml."""
    calibrated = Path(home or home_dir()) / CALIBRATED_NAME
    return calibrated if calibrated.is_file() else default_config_path()


def check_threshold(threshold: Any, name: str = "threshold") -> float:
    """A gate threshold is a finite number >= 0; values above 1 are allowed (they force a failure)."""
    if (
        isinstance(threshold, bool)
        or not isinstance(threshold, (int, float))
        or not math.isfinite(threshold)
        or threshold < 0
    ):
        raise ValueError(f"`{name}` must be a finite number >= 0, got {threshold!r}.")
    return float(threshold)


def _check_number(value: Any, name: str, positive: bool = False) -> float:
    if (
        isinstance(value, bool)
        or not isinstance(value, (int, float))
        or not math.isfinite(value)
        or value < 0
        or (positive and value == 0)
    ):
        kind = "a positive number" if positive else "a number >= 0"
        raise ValueError(f"`{name}` must be {kind}, got {value!r}.")
    return float(value)


def validate_config(config: dict) -> dict:
    """Check a loaded config and fill defaults; raises ValueError naming the offending key."""
    if not isinstance(config, dict):
        raise ValueError(f"`quality config` must be a mapping, got {type(config).__name__}.")
    cfg = copy.deepcopy(config)
    cfg["work_size"] = int(_check_number(cfg.get("work_size", 256), "work_size", positive=True))
    cfg["flow_size"] = int(_check_number(cfg.get("flow_size", 128), "flow_size", positive=True))
    mappings = dict(MAPPING_DEFAULTS)
    for key, value in (cfg.get("mappings") or {}).items():
        if key not in MAPPING_DEFAULTS:
            raise ValueError(f"`mappings.{key}` is not a known mapping; known: {', '.join(sorted(MAPPING_DEFAULTS))}.")
        mappings[key] = _check_number(value, f"mappings.{key}")
    for key in (
        "blank_std_floor",
        "collapse_mad_floor",
        "distinct_scale",
        "smoothness_scale",
        "seam_tolerance",
        "palette_bins",
        "structure_crop",
        "identity_bands",
        "identity_distance",
        "jitter_min_speed",
        "jitter_cycle_gain",
        "dynamic_span",
    ):
        _check_number(mappings[key], f"mappings.{key}", positive=True)
    for low, high in ORDERED_MAPPINGS:
        if mappings[low] >= mappings[high]:
            raise ValueError(
                f"`mappings.{low}` must be below `mappings.{high}`, got {mappings[low]} >= {mappings[high]}."
            )
    for key in ("flicker_low", "frame_quantile"):
        if not 0 <= mappings[key] < 1:
            raise ValueError(f"`mappings.{key}` must be in [0, 1), got {mappings[key]}.")
    for key in ("palette_bins", "structure_crop", "identity_bands", "dynamic_span"):
        mappings[key] = int(mappings[key])
    cfg["mappings"] = mappings

    phases = cfg.get("phases") or {}
    out = {}
    for name, known in PHASE_METRICS.items():
        section = phases.get(name)
        if not isinstance(section, dict):
            raise ValueError(f"`phases.{name}` is missing from the quality config.")
        weights = section.get("weights") or {}
        multipliers = section.get("multipliers") or {}
        critical = section.get("critical") or {}
        for key in list(weights) + list(multipliers) + list(critical):
            if key not in known:
                raise ValueError(f"`phases.{name}` names unknown metric {key!r}; known: {', '.join(sorted(known))}.")
        w = {k: _check_number(v, f"phases.{name}.weights.{k}") for k, v in weights.items()}
        if sum(w.values()) <= 0:
            raise ValueError(f"`phases.{name}.weights` must have a positive sum, got {w}.")
        m = {k: _check_number(v, f"phases.{name}.multipliers.{k}", positive=True) for k, v in multipliers.items()}
        c = {k: _check_number(v, f"phases.{name}.critical.{k}") for k, v in critical.items()}
        out[name] = {
            "threshold": check_threshold(section.get("threshold", DEFAULT_GATE), f"phases.{name}.threshold"),
            "review_margin": _check_number(
                section.get("review_margin", DEFAULT_REVIEW_MARGIN), f"phases.{name}.review_margin"
            ),
            "weights": w,
            "multipliers": m,
            "critical": c,
        }
    cfg["phases"] = out
    return cfg


def load_quality_config(path: str | Path | dict | None = None) -> dict:
    """Read and validate the active config (`active_config_path`: a calibrated one in the home, else
    parameters/quality.yaml), or `path`; a dict is validated as is."""
    if isinstance(path, dict):
        return validate_config(path)
    path = Path(path) if path is not None else active_config_path()
    if not path.is_file():
        raise FileNotFoundError(f"No quality config at {path}.")
    return validate_config(yaml.safe_load(path.read_text()) or {})


def phase_name(phase: int | str) -> str:
    """1 / "1" / "animation_loop" -> "ANIMATION_LOOP"."""
    return get_phase(phase).name
