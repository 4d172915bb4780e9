"""What a job asks of the GPU, in megapixel-steps: width x height x denoising steps x images, / 1e6.

Denoising time grows about linearly in each factor, so one number compares a 2048 px sheet
with a 64-frame loop. Per phase (values as `animenb.phases.spec` defines them, None sizes
being the model profile's `default_size`):

- CHARACTER_SHEET: 8 poses, each one image;
- ANIMATION_LOOP: `frames + loop_overlap` frames denoised together;
- FULL_VIDEO: SVD's `frames`, plus one image when the source is generated from the prompt;
- an orchestration: the three phases with its shared values, each tried up to `max_retries + 1` times.

The server caps it per role (`ServerConfig.max_job_cost`).
"""
from __future__ import annotations

from typing import Any, Mapping

from .character_sheet import POSES
from .spec import phase_spec

UNIT = "megapixel-steps (width x height x steps x images / 1e6)"


def images_per_step(phase: int, values: Mapping[str, Any]) -> int:
    """How many images a phase denoises per step (over the whole job)."""
    merged = {**phase_spec(phase).defaults, **values}
    if phase == 1:
        return len(POSES)
    if phase == 2:
        return merged["frames"] + merged["loop_overlap"]
    return merged["frames"] + (1 if merged.get("image") is None else 0)


def job_cost(phase: int, values: Mapping[str, Any], *, default_size: int) -> float:
    """Megapixel-steps of one phase job with `values`; missing values take the phase's defaults."""
    merged = {**phase_spec(phase).defaults, **values}
    width = merged.get("width") or default_size
    height = merged.get("height") or default_size
    return width * height * merged["steps"] * images_per_step(phase, merged) / 1e6


def orchestration_cost(values: Mapping[str, Any], *, default_size: int) -> float:
    """Megapixel-steps of a whole chain in the worst case (every phase retried `max_retries` times)."""
    shared = {k: values[k] for k in ("steps", "width", "height") if values.get(k) is not None}
    attempts = 1 + int(values.get("max_retries", 0))
    return attempts * sum(job_cost(phase, {**shared, **({"image": "chained"} if phase == 3 else {})},
                                   default_size=default_size) for phase in (1, 2, 3))
