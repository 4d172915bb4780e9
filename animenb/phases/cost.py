"""What a job asks of the GPU box, in megapixel-steps: one step of denoising one megapixel image is 1.

    cost = width x height / 1e6 x (max(steps, MIN_STEPS) x images + FRAME_STEPS x frames)

- generation: `images` denoised together for `steps` steps, counted as at least MIN_STEPS steps: loading
  the latents, the text and image encoders and the VAE decode of a huge canvas cost that much however few
  the steps, so `steps: 1` cannot hide a 2048 px canvas;
- per-frame work: every frame the job decodes, re-times, encodes and scores, FRAME_STEPS steps' worth each.

Per phase (values as `animenb.phases.spec` defines them, None sizes being the model profile's
`default_size`):

- CHARACTER_SHEET: 8 poses, each one image, each a frame;
- ANIMATION_LOOP: `frames + loop_overlap` frames denoised together, each decoded and written;
- FULL_VIDEO: SVD's `frames` (plus one image when the source is generated from the prompt), decoded, and
  the `round(seconds x fps)` re-timed frames the MP4 holds;
- an orchestration: the three phases with its shared values, each tried up to `max_retries + 1` times.

The server caps it per role (`ServerConfig.max_job_cost`); GET /phases shows this formula (`FORMULA`).
"""
from __future__ import annotations

from typing import Any, Mapping

from .character_sheet import POSES
from .spec import phase_spec

UNIT = "megapixel-steps (width x height x steps x images / 1e6)"
MIN_STEPS = 4        # the least number of steps a generation is counted as (module docstring)
FRAME_STEPS = 0.25   # what decoding, re-timing, encoding and scoring one frame costs, in steps
FORMULA = (f"width x height / 1e6 x (max(steps, {MIN_STEPS}) x images + {FRAME_STEPS:g} x frames); images: "
           f"phase 1 {len(POSES)}, phase 2 frames + loop_overlap, phase 3 frames (+1 without `image`); frames: "
           "phase 1 and 2 as images, phase 3 frames + round(seconds x fps); an orchestration: its three phases "
           "x (max_retries + 1)")


def images_per_step(phase: int, values: Mapping[str, Any]) -> int:
    """How many images a phase denoises per step (over the whole job)."""
    merged = {**phase_spec(phase).defaults, **values}
    if phase == 1:
        return len(POSES)
    if phase == 2:
        return merged["frames"] + merged["loop_overlap"]
    return merged["frames"] + (1 if merged.get("image") is None else 0)


def frames_handled(phase: int, values: Mapping[str, Any]) -> int:
    """How many frames a phase decodes, re-times, encodes and scores (over the whole job)."""
    merged = {**phase_spec(phase).defaults, **values}
    if phase == 3:
        return merged["frames"] + round(merged["seconds"] * merged["fps"])
    return images_per_step(phase, merged)


def job_cost(phase: int, values: Mapping[str, Any], *, default_size: int) -> float:
    """Megapixel-steps of one phase job with `values` (module docstring); missing values take the phase's
    defaults."""
    merged = {**phase_spec(phase).defaults, **values}
    width = merged.get("width") or default_size
    height = merged.get("height") or default_size
    steps = max(merged["steps"], MIN_STEPS) * images_per_step(phase, merged)
    return width * height * (steps + FRAME_STEPS * frames_handled(phase, merged)) / 1e6


def orchestration_cost(values: Mapping[str, Any], *, default_size: int) -> float:
    """Megapixel-steps of a whole chain in the worst case (every phase retried `max_retries` times)."""
    shared = {k: values[k] for k in ("steps", "width", "height") if values.get(k) is not None}
    attempts = 1 + int(values.get("max_retries", 0))
    return attempts * sum(job_cost(phase, {**shared, **({"image": "chained"} if phase == 3 else {})},
                                   default_size=default_size) for phase in (1, 2, 3))
