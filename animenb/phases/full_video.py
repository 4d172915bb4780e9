"""Phase 3, FULL_VIDEO: Stable Video Diffusion from one image, re-timed to exactly `seconds` (5.0 s)."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Callable

from PIL import Image

from ..backends import Backend, ImageRequest, ImageToVideoRequest
from ..media import encode_concurrently, retime, save_mp4, save_pngs
from ..progress import CancelToken, ProgressEvent, ProgressReporter
from .catalog import get_phase
from .common import (
    PhaseResult,
    Timer,
    check_inputs,
    default_size,
    load_image,
    model_name,
    models_label,
    png_parameters,
    prepare_output_dir,
    resolve_backend,
    resolve_seed,
    write_phase_manifest,
)
from .spec import phase_spec

PHASE = get_phase("FULL_VIDEO")
SPEC = phase_spec(PHASE.id)
_DEFAULTS = SPEC.defaults


def svd_size(backend: Backend, source_size: tuple[int, int]) -> tuple[int, int]:
    """SVD's (width, height) for a source of `source_size`: the profile's native SVD size (`sizes.svd`,
    1024x576 for SVD-XT) at the source's aspect; without one, the profile's default size, as before."""
    profile = getattr(backend, "profile", None)
    if profile is None:
        return default_size(backend, None, None)
    return profile.native_size("svd", aspect=source_size[0] / source_size[1])


def full_video(
    prompt: str = _DEFAULTS["prompt"],
    *,
    image: str | Path | Image.Image | None = None,
    negative_prompt: str = _DEFAULTS["negative_prompt"],
    seed: int | None = None,
    steps: int = _DEFAULTS["steps"],
    width: int | None = None,
    height: int | None = None,
    guidance_scale: float = _DEFAULTS["guidance_scale"],
    scheduler: str = _DEFAULTS["scheduler"],
    frames: int = _DEFAULTS["frames"],
    svd_fps: int = _DEFAULTS["svd_fps"],
    motion_bucket_id: int = _DEFAULTS["motion_bucket_id"],
    noise_aug_strength: float = _DEFAULTS["noise_aug_strength"],
    decode_chunk_size: int | None = _DEFAULTS["decode_chunk_size"],
    seconds: float = _DEFAULTS["seconds"],
    fps: int = _DEFAULTS["fps"],
    models: str | None = None,
    backend: str | Backend = _DEFAULTS["backend"],
    backend_options: dict | None = None,
    output_dir: str | Path | None = None,
    on_progress: Callable[[ProgressEvent], None] | None = None,
    display: str | None = "auto",
    cancel: CancelToken | None = None,
) -> PhaseResult:
    """Animate `image` with SVD and write video.mp4 (exactly `seconds` at `fps`), source.png, frames/*.png.

    `image` is an image, a path, or a run's output directory (phase 1: its reference pose;
    phase 2: its first loop frame). Without one, the source image is generated from `prompt`
    first. SVD's `frames` are re-timed to round(seconds * fps) frames by blending neighbours
    (animenb.media.retime), so the MP4 lasts exactly `seconds`. Parameters, defaults, ranges and
    rules: `SPEC`.
    `cancel` (an `animenb.progress.CancelToken`) stops the run at its next step with `Cancelled`.
    """
    # 0. check inputs
    check_inputs(
        SPEC,
        dict(
            prompt=prompt,
            image=image,
            negative_prompt=negative_prompt,
            seed=seed,
            steps=steps,
            width=width,
            height=height,
            guidance_scale=guidance_scale,
            scheduler=scheduler,
            frames=frames,
            svd_fps=svd_fps,
            motion_bucket_id=motion_bucket_id,
            noise_aug_strength=noise_aug_strength,
            decode_chunk_size=decode_chunk_size,
            seconds=seconds,
            fps=fps,
            models=models,
            backend=backend,
            output_dir=output_dir,
        ),
    )
    seed = resolve_seed(seed)
    engine = resolve_backend(backend, models, backend_options)
    sized = width is not None or height is not None
    width, height = default_size(engine, width, height)
    source = load_image(image, "image") if image is not None else None
    source_request = (
        None
        if source is not None
        else ImageRequest(
            prompt=prompt,
            negative_prompt=negative_prompt,
            width=width,
            height=height,
            steps=steps,
            guidance_scale=guidance_scale,
            seed=seed,
            scheduler=scheduler,
        )
    )
    if not sized:  # SVD at its own native size, at the aspect of the image it animates
        width, height = svd_size(engine, source.size if source is not None else (width, height))
    placeholder = source or Image.new("RGB", (width, height))
    video_request = ImageToVideoRequest(
        image=placeholder,
        width=width,
        height=height,
        steps=steps,
        seed=seed,
        frames=frames,
        fps=svd_fps,
        motion_bucket_id=motion_bucket_id,
        noise_aug_strength=noise_aug_strength,
        decode_chunk_size=decode_chunk_size,
    )
    out = prepare_output_dir(output_dir, PHASE.name)
    parameters = {
        "prompt": prompt,
        "negative_prompt": negative_prompt,
        "seed": seed,
        "steps": steps,
        "width": width,
        "height": height,
        "guidance_scale": guidance_scale,
        "scheduler": scheduler,
        "frames": frames,
        "svd_fps": svd_fps,
        "motion_bucket_id": motion_bucket_id,
        "noise_aug_strength": noise_aug_strength,
        "decode_chunk_size": decode_chunk_size,
        "seconds": seconds,
        "fps": fps,
        "image": None if image is None or isinstance(image, Image.Image) else str(image),
    }
    description = engine.describe()
    label = models_label(description)
    timer = Timer()
    stages = 2 if source is not None else 3
    total = steps * (stages - 1)
    progress = ProgressReporter(
        PHASE.name, total_steps=total, stage_count=stages, publish=on_progress, display=display, cancel=cancel
    )

    # 1. the source image (generated when not given), 2. SVD, 3. re-time to exactly `seconds`
    if source_request is not None:  # no source image given
        progress.start_stage("source image")
        source = engine.text_to_image(source_request, on_step=progress.on_step)
    progress.start_stage(f"animating {frames} frames")
    raw = engine.image_to_video(replace(video_request, image=source), on_step=progress.on_step)
    timer.mark("generate")
    progress.start_stage("re-timing and encoding")
    video = retime(raw, seconds, fps)  # made frame by frame as the MP4 encoder takes them
    video_frames = round(seconds * fps)
    source_model = model_name(description, "sd") if image is None else None  # None: the image was given
    pngs = [
        (source, out / "source.png", png_parameters(PHASE, parameters, seed, label, model=source_model, kind="source"))
    ]
    # SVD samples with Euler on Karras sigmas, guidance rising from min to max across the frames.
    frame_parameters = png_parameters(
        PHASE,
        parameters,
        seed,
        label,
        model=model_name(description, "svd"),
        sampler="euler_karras",
        cfg_scale=video_request.max_guidance_scale,
        min_cfg_scale=video_request.min_guidance_scale,
    )
    pngs += [
        (frame, out / "frames" / f"frame_{index:03d}.png", {**frame_parameters, "frame": index})
        for index, frame in enumerate(raw)
    ]
    # The PNGs and the MP4 side by side: the MP4 only reads the frames (see animenb.media).
    encode_concurrently(lambda: save_pngs(pngs), lambda: save_mp4(video, out / "video.mp4", fps))
    files: list[tuple[Path, str]] = [(out / "source.png", "source")] + [(path, "frame") for _, path, _ in pngs[1:]]
    frame_paths = [path.relative_to(out).as_posix() for path, _ in files[1:]]
    files.append((out / "video.mp4", "mp4"))
    timer.mark("write")
    outputs = {
        "mp4": "video.mp4",
        "source_image": "source.png",
        "frames": frame_paths,
        "fps": fps,
        "frame_count": video_frames,
        "duration_seconds": video_frames / fps,
    }
    manifest = write_phase_manifest(PHASE, out, parameters, seed, engine, timer, outputs, files)
    progress.finish()
    # SVD's own frames (in memory already); the re-timed ones were streamed into video.mp4, never held.
    return PhaseResult(PHASE, out, manifest, list(raw))
