"""Phase 1, CHARACTER_SHEET: one character in 8 poses, kept consistent with IP-Adapter.

Each pose is steered by an OpenPose skeleton through the profile's ControlNet (animenb.poses: the
8 built-in views, or the user's pose images); the prompt suffixes still name the view. With
`pose_strength=0` the sheet is prompt-only, as SD 1.5 sheets were before pose control.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Callable

from PIL import Image

from ..backends import Backend, ImageRequest
from ..media import compose_sheet, save_pngs
from ..poses import builtin_skeletons, load_pose_images, pose_image_paths
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

PHASE = get_phase("CHARACTER_SHEET")

# (file key, caption, prompt suffix). The first pose is the reference for the other seven
# when no reference image is given, so it is the most informative view: full body, front.
POSES: tuple[tuple[str, str, str], ...] = (
    ("front", "front", "full body, front view, standing, neutral expression"),
    ("back", "back", "full body, back view, standing"),
    ("left", "left side", "full body, side view from the left, profile"),
    ("right", "right side", "full body, side view from the right, profile"),
    ("three_quarter", "3/4 view", "full body, three-quarter view, dynamic pose"),
    ("smile", "smile", "upper body, front view, smiling, happy expression"),
    ("angry", "angry", "upper body, front view, angry expression"),
    ("surprised", "surprised", "upper body, front view, surprised expression"),
)
SHEET_SUFFIX = "character sheet, simple white background, consistent character design"
CAPTIONS = [f"{index + 1}. {caption}" for index, (_key, caption, _suffix) in enumerate(POSES)]  # sheet labels


def pose_prompts(prompt: str) -> list[str]:
    """The 8 prompts of a sheet: the character prompt, the pose, a sheet style suffix."""
    return [f"{prompt.strip()}, {suffix}, {SHEET_SUFFIX}" for _key, _caption, suffix in POSES]


SPEC = phase_spec(PHASE.id)
_DEFAULTS = SPEC.defaults


def pose_skeletons(pose_strength: float, pose_images, width: int, height: int) -> list[Image.Image | None]:
    """The OpenPose image each pose follows (Nones when `pose_strength` is 0: no control)."""
    if not pose_strength:
        return [None] * len(POSES)
    if pose_images is None:
        return builtin_skeletons([key for key, _caption, _suffix in POSES], width, height)
    return load_pose_images(pose_images, len(POSES), width, height)


def _pose_images_record(pose_images) -> str | list | None:
    """`pose_images` as the manifest records it: a path, paths, or "<image>" for in-memory images."""
    if pose_images is None:
        return None
    if isinstance(pose_images, (str, Path)):
        return str(pose_images)
    return ["<image>" if isinstance(item, Image.Image) else str(item) for item in pose_images]


def character_sheet(
    prompt: str,
    *,
    negative_prompt: str = _DEFAULTS["negative_prompt"],
    seed: int | None = None,
    steps: int = _DEFAULTS["steps"],
    width: int | None = None,
    height: int | None = None,
    guidance_scale: float = _DEFAULTS["guidance_scale"],
    scheduler: str = _DEFAULTS["scheduler"],
    reference_image: str | Path | Image.Image | None = None,
    ip_adapter_scale: float = _DEFAULTS["ip_adapter_scale"],
    pose_strength: float = _DEFAULTS["pose_strength"],
    pose_images: str | Path | list | None = _DEFAULTS["pose_images"],
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
    """Generate an 8-pose character sheet and write sheet.png, poses/*.png, reference.png, manifest.json.

    Every pose uses the same seed (shared initial noise keeps proportions and palette aligned)
    and an IP-Adapter reference: `reference_image` if given (an image, a path, or a run's
    output directory), else the first (front) pose for the other seven. Each pose follows an
    OpenPose skeleton at `pose_strength` (0: no ControlNet): the built-in views, or `pose_images`
    (a folder of 8 images in name order, or a list of 8 paths / PIL images); the skeletons used are
    kept as poses/pose_XX_<key>.openpose.png and skeletons.png. Parameters, defaults and ranges:
    `SPEC` (animenb.phases.spec).
    `cancel` (an `animenb.progress.CancelToken`) stops the run at its next step with `Cancelled`.
    """
    # 0. check inputs before any model is touched
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
            reference_image=reference_image,
            ip_adapter_scale=ip_adapter_scale,
            pose_strength=pose_strength,
            checkpoint=checkpoint,
            loras=list(loras or []),
            clip_skip=clip_skip,
            models=models,
            backend=backend,
            output_dir=output_dir,
        ),
    )
    if pose_images is not None:  # a folder or a list of 8 images (the spec only types the folder's path)
        if not isinstance(pose_images, (str, Path)):
            pose_images = list(pose_images)
        pose_image_paths(pose_images, len(POSES))
    seed = resolve_seed(seed)
    engine = resolve_backend(backend, models, backend_options)
    width, height = default_size(engine, width, height)
    prompts = pose_prompts(prompt)
    skeletons = pose_skeletons(pose_strength, pose_images, width, height)
    requests = [
        ImageRequest(
            prompt=p,
            negative_prompt=negative_prompt,
            width=width,
            height=height,
            steps=steps,
            guidance_scale=guidance_scale,
            seed=seed,
            scheduler=scheduler,
            ip_adapter_scale=ip_adapter_scale,
            control_image=skeleton,
            control_scale=pose_strength,
            checkpoint=checkpoint,
            loras=tuple(loras or ()),
            clip_skip=clip_skip,
        )
        for p, skeleton in zip(prompts, skeletons)
    ]
    reference = load_image(reference_image, "reference_image") if reference_image is not None else None
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
        "ip_adapter_scale": ip_adapter_scale,
        "checkpoint": checkpoint,
        "loras": list(loras or []),
        "clip_skip": clip_skip,
        "reference_image": None
        if reference_image is None or isinstance(reference_image, Image.Image)
        else str(reference_image),
        "pose_strength": pose_strength,
        "pose_images": _pose_images_record(pose_images),
    }
    description = engine.describe()
    label, model = models_label(description), model_name(description, "sd")
    timer = Timer()
    progress = ProgressReporter(
        PHASE.name,
        total_steps=len(POSES) * steps,
        stage_count=len(POSES),
        publish=on_progress,
        display=display,
        cancel=cancel,
    )

    # 1. one image per pose; the reference is fixed before the first pose that needs it
    poses: list[Image.Image] = []
    for index, ((_key, caption, _suffix), request) in enumerate(zip(POSES, requests)):
        progress.start_stage(f"pose {index + 1}/{len(POSES)}: {caption}")
        if reference is not None:
            request = replace(request, ip_adapter_image=reference)
        poses.append(engine.text_to_image(request, on_step=progress.on_step))
        if reference is None:
            reference = poses[0]
    timer.mark("generate")
    used = getattr(engine, "last_models", {})  # the LoRAs, embeddings and clip skip, for PNG info

    # 2. files: single poses, the labelled sheet, the reference the poses followed (and their skeletons)
    progress.start_stage("writing files")
    pngs = [
        (
            image,
            out / "poses" / f"pose_{index + 1:02d}_{key}.png",
            png_parameters(PHASE, {**parameters, "prompt": p}, seed, label, model=model, used=used, pose=key),
        )
        for index, ((key, _caption, _suffix), image, p) in enumerate(zip(POSES, poses, prompts))
    ]
    sheet = compose_sheet(poses, CAPTIONS, title=prompt[:80], footer=f"seed {seed} · {label}")
    pngs.append(
        (sheet, out / "sheet.png", png_parameters(PHASE, parameters, seed, label, model=model, used=used, kind="sheet"))
    )
    # The reference is usually pose 1 itself: a copy, since one image cannot be saved from two threads.
    assert reference is not None  # pose 1 at the latest
    pngs.append(
        (
            reference.copy(),
            out / "reference.png",
            png_parameters(PHASE, parameters, seed, label, model=model, used=used, kind="reference"),
        )
    )
    controlled = skeletons[0] is not None
    if controlled:  # the skeletons each pose was asked to follow, beside it and as one sheet
        skeleton_pngs = [
            (
                image,
                out / "poses" / f"pose_{index + 1:02d}_{key}.openpose.png",
                png_parameters(PHASE, parameters, seed, label, model=model, pose=key, kind="openpose"),
            )
            for index, ((key, _caption, _suffix), image) in enumerate(zip(POSES, skeletons))
        ]
        skeleton_sheet = compose_sheet(
            skeletons, CAPTIONS, title=f"OpenPose skeletons · pose strength {pose_strength:g}"
        )
        skeleton_pngs.append(
            (
                skeleton_sheet,
                out / "skeletons.png",
                png_parameters(PHASE, parameters, seed, label, model=model, kind="skeletons"),
            )
        )
        pngs += skeleton_pngs
    save_pngs(pngs)
    files = [(path, "pose") for _, path, _ in pngs[: len(poses)]]
    files += [(out / "sheet.png", "sheet"), (out / "reference.png", "reference")]
    pose_paths = [path.relative_to(out).as_posix() for path, _ in files[: len(poses)]]
    outputs = {"sheet": "sheet.png", "poses": pose_paths, "reference": "reference.png"}
    if controlled:
        files += [(path, "skeleton") for _, path, _ in skeleton_pngs[:-1]] + [(out / "skeletons.png", "skeletons")]
        outputs["skeletons"] = "skeletons.png"
        outputs["pose_skeletons"] = [path.relative_to(out).as_posix() for _, path, _ in skeleton_pngs[:-1]]
    timer.mark("write")
    manifest = write_phase_manifest(PHASE, out, parameters, seed, engine, timer, outputs, files)
    progress.finish()
    return PhaseResult(PHASE, out, manifest, poses)
