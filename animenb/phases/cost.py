"""What a job asks of the GPU box, in megapixel-steps: one step of denoising one megapixel image is 1.

    cost = width x height / 1e6 x (max(steps, MIN_STEPS) x calls x images + FRAME_STEPS x frames)

- generation: `images` denoised together for `steps` steps, counted as at least MIN_STEPS steps: loading
  the latents, the text and image encoders and the VAE decode of a huge canvas cost that much however few
  the steps, so `steps: 1` cannot hide a 2048 px canvas; `calls`: the sampler's model calls per step
  (2 for DPM++ SDE Karras, else 1);
- per-frame work: every frame the job decodes, re-times, encodes and scores, FRAME_STEPS steps' worth each.

Per phase (values as `animenb.phases.spec` defines them; width and height, when the job leaves them None,
being the size it will render at, `render_size`: the model profile's `default_size`, and for phase 3's SVD
frames the profile's native SVD size, `sizes.svd`, whose pixel count phase 3 keeps at its source's aspect):

- CHARACTER_SHEET: 8 poses, each one image, each a frame;
- ANIMATION_LOOP: `frames + loop_overlap` frames denoised together, each decoded and written;
- FULL_VIDEO: SVD's `frames` (plus one image at SD's size when the source is generated from the prompt),
  decoded, and the `round(seconds x fps)` re-timed frames the MP4 holds;
- an orchestration: the three phases with its shared values, each tried up to `max_retries + 1` times.

The server caps it per role (`ServerConfig.max_job_cost`); GET /phases shows this formula (`FORMULA`).
"""

from __future__ import annotations

from typing import Any, Mapping

from ..backends.samplers import model_calls
from .character_sheet import POSES
from .spec import phase_spec

UNIT = "megapixel-steps (width x height x steps x images / 1e6)"
MIN_STEPS = 4  # the least number of steps a generation is counted as (module docstring)
FRAME_STEPS = 0.25  # what decoding, re-timing, encoding and scoring one frame costs, in steps
FORMULA = (
    f"width x height / 1e6 x (max(steps, {MIN_STEPS}) x calls x images + {FRAME_STEPS:g} x frames); calls: "
    "the sampler's model calls per step (2 for DPM++ SDE Karras, else 1); images: "
    f"phase 1 {len(POSES)}, phase 2 frames + loop_overlap, phase 3 frames (+1 without `image`); frames: "
    "phase 1 and 2 as images, phase 3 frames + round(seconds x fps); width x height: the request's, else the "
    "profile's default size (phase 3's SVD frames: its SVD size); an orchestration: its three phases x "
    "(max_retries + 1)"
)


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


def render_size(
    phase: int, values: Mapping[str, Any], *, default_size: int, svd_size: tuple[int, int] | None = None
) -> tuple[int, int]:
    """The (width, height) a phase job renders at: the request's; without both, `default_size` for the
    missing side, except phase 3 with neither, which renders at the profile's `svd_size` (its pixel count,
    kept at the source's aspect by `full_video.svd_size`)."""
    width, height = values.get("width"), values.get("height")
    if phase == 3 and width is None and height is None and svd_size is not None:
        return svd_size
    return width or default_size, height or default_size


def job_cost(
    phase: int, values: Mapping[str, Any], *, default_size: int, svd_size: tuple[int, int] | None = None
) -> float:
    """Megapixel-steps of one phase job with `values` (module docstring); missing values take the phase's
    defaults. `svd_size`: the profile's native SVD (width, height), what phase 3 renders at when unsized."""
    merged = {**phase_spec(phase).defaults, **values}
    width, height = render_size(phase, merged, default_size=default_size, svd_size=svd_size)
    steps = max(merged["steps"], MIN_STEPS) * model_calls(merged.get("scheduler"))
    source = 1 if phase == 3 and merged.get("image") is None else 0  # generated first, at SD's size
    source_pixels = (merged.get("width") or default_size) * (merged.get("height") or default_size)
    rendered = steps * (images_per_step(phase, merged) - source) + FRAME_STEPS * frames_handled(phase, merged)
    return (width * height * rendered + source_pixels * steps * source) / 1e6


def orchestration_cost(
    values: Mapping[str, Any], *, default_size: int, svd_size: tuple[int, int] | None = None
) -> float:
    """Megapixel-steps of a whole chain in the worst case (every phase retried `max_retries` times)."""
    shared = {k: values[k] for k in ("steps", "width", "height") if values.get(k) is not None}
    attempts = 1 + int(values.get("max_retries", 0))
    return attempts * sum(
        job_cost(
            phase,
            {**shared, **({"image": "chained"} if phase == 3 else {})},
            default_size=default_size,
            svd_size=svd_size,
        )
        for phase in (1, 2, 3)
    )
