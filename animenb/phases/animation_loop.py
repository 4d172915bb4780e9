"""Phase 2, ANIMATION_LOOP: a seamless loop (default 16 frames at 8 fps = 2.0 s) with AnimateDiff."""

from __future__ import annotations

from pathlib import Path
from typing import Callable

from PIL import Image

from ..backends import Backend, VideoRequest
from ..media import close_loop, encode_concurrently, save_gif, save_mp4, save_pngs, save_webp
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

PHASE = get_phase("ANIMATION_LOOP")
LOOP_SUFFIX = "seamless loop animation, smooth motion"


SPEC = phase_spec(PHASE.id)
_DEFAULTS = SPEC.defaults


def animation_loop(
    prompt: str,
    *,
    negative_prompt: str = _DEFAULTS["negative_prompt"],
    seed: int | None = None,
    steps: int = _DEFAULTS["steps"],
    width: int | None = None,
    height: int | None = None,
    guidance_scale: float = _DEFAULTS["guidance_scale"],
    scheduler: str = _DEFAULTS["scheduler"],
    frames: int = _DEFAULTS["frames"],
    fps: int = _DEFAULTS["fps"],
    loop_overlap: int = _DEFAULTS["loop_overlap"],
    reference_image: str | Path | Image.Image | None = None,
    ip_adapter_scale: float = _DEFAULTS["ip_adapter_scale"],
    motion_scale: float = _DEFAULTS["motion_scale"],
    motion_lora: str | None = _DEFAULTS["motion_lora"],
    motion_lora_weight: float = _DEFAULTS["motion_lora_weight"],
    checkpoint: str | None = _DEFAULTS["checkpoint"],
    loras: list = _DEFAULTS["loras"],
    clip_skip: int | None = _DEFAULTS["clip_skip"],
    models: str | None = None,
    backend: str | Backend = _DEFAULTS["backend"],
    backend_options: dict | None = None,
    output_dir: str | Path | None = None,
    on_progress: Callable[[ProgressEvent], None] | None = None,
    display: str | None = "auto",
    cancel: CancelToken | None = None,
) -> PhaseResult:
    """Generate a `frames / fps`-second loop and write loop.gif/.mp4/.webp, frames/*.png, manifest.json.

    Loop closure: AnimateDiff renders `frames + loop_overlap` frames of one motion; the extra
    tail is cross-faded into the head (animenb.media.close_loop), so the step from the last
    frame back to the first continues the motion instead of jumping. `reference_image` (an
    image, a path, or a phase-1 output directory, whose reference pose is used) conditions
    every frame through IP-Adapter. Parameters, defaults, ranges and rules: `SPEC`.
    `cancel` (an `animenb.progress.CancelToken`) stops the run at its next step with `Cancelled`.
    """
    # 0. check inputs
    check_inputs(
        SPEC,
        dict(
            prompt=prompt,
            negative_prompt=negative_prompt,
            seed=seed,
            steps=steps,
            width=width,
            height=height,
            guidance_scale=guidance_scale,
            scheduler=scheduler,
            frames=frames,
            fps=fps,
            loop_overlap=loop_overlap,
            reference_image=reference_image,
            ip_adapter_scale=ip_adapter_scale,
            motion_scale=motion_scale,
            motion_lora=motion_lora,
            motion_lora_weight=motion_lora_weight,
            checkpoint=checkpoint,
            loras=list(loras or []),
            clip_skip=clip_skip,
            models=models,
            backend=backend,
            output_dir=output_dir,
        ),
    )
    seed = resolve_seed(seed)
    engine = resolve_backend(backend, models, backend_options)
    width, height = default_size(engine, width, height)
    reference = load_image(reference_image, "reference_image") if reference_image is not None else None
    request = VideoRequest(
        prompt=f"{prompt.strip()}, {LOOP_SUFFIX}",
        negative_prompt=negative_prompt,
        width=width,
        height=height,
        steps=steps,
        guidance_scale=guidance_scale,
        seed=seed,
        scheduler=scheduler,
        frames=frames + loop_overlap,
        ip_adapter_image=reference,
        ip_adapter_scale=ip_adapter_scale,
        motion_scale=motion_scale,
        motion_lora=motion_lora,
        motion_lora_weight=motion_lora_weight,
        checkpoint=checkpoint,
        loras=tuple(loras or ()),
        clip_skip=clip_skip,
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
        "fps": fps,
        "loop_overlap": loop_overlap,
        "ip_adapter_scale": ip_adapter_scale,
        "motion_scale": motion_scale,
        "motion_lora": motion_lora,
        "motion_lora_weight": motion_lora_weight,
        "checkpoint": checkpoint,
        "loras": list(loras or []),
        "clip_skip": clip_skip,
        "reference_image": None
        if reference_image is None or isinstance(reference_image, Image.Image)
        else str(reference_image),
    }
    description = engine.describe()
    label, model = models_label(description), model_name(description, "sd")
    timer = Timer()
    progress = ProgressReporter(
        PHASE.name, total_steps=steps, stage_count=2, publish=on_progress, display=display, cancel=cancel
    )

    # 1. denoise all frames together, then close the loop
    progress.start_stage(f"animating {frames + loop_overlap} frames")
    raw = engine.text_to_video(request, on_step=progress.on_step)
    loop = close_loop(raw, frames)
    timer.mark("generate")
    used = getattr(engine, "last_models", {})  # the LoRAs, embeddings and clip skip, for PNG info

    # 2. files
    progress.start_stage("encoding")
    pngs = [
        (
            frame,
            out / "frames" / f"frame_{index:03d}.png",
            png_parameters(PHASE, parameters, seed, label, model=model, used=used, frame=index),
        )
        for index, frame in enumerate(loop)
    ]
    if reference is not None:
        pngs.append(
            (
                reference,
                out / "reference.png",
                png_parameters(PHASE, parameters, seed, label, model=model, used=used, kind="reference"),
            )
        )
    save_pngs(pngs)
    # Then the animations, side by side: only WebP saves the frames themselves (see animenb.media).
    encode_concurrently(
        lambda: save_gif(loop, out / "loop.gif", fps),
        lambda: save_mp4(loop, out / "loop.mp4", fps),
        lambda: save_webp(loop, out / "loop.webp", fps),
    )
    files: list[tuple[Path, str]] = [(path, "frame") for _, path, _ in pngs[: len(loop)]]
    files += [(out / "loop.gif", "gif"), (out / "loop.mp4", "mp4"), (out / "loop.webp", "webp")]
    outputs = {
        "gif": "loop.gif",
        "mp4": "loop.mp4",
        "webp": "loop.webp",
        "frames": [path.relative_to(out).as_posix() for path, _ in files[: len(loop)]],
        "fps": fps,
        "frame_count": frames,
        "duration_seconds": frames / fps,
        "reference": None,
    }
    if reference is not None:
        files.append((out / "reference.png", "reference"))
        outputs["reference"] = "reference.png"
    timer.mark("write")
    manifest = write_phase_manifest(PHASE, out, parameters, seed, engine, timer, outputs, files)
    progress.finish()
    return PhaseResult(PHASE, out, manifest, loop)
