"""Pipeline loading and the per-process model cache.

Each pipeline is loaded once per process (key: kind, profile, device, dtype) and kept in
a module-level dict, which survives the job runner's namespace reset because it lives in
`sys.modules`. AnimateDiff and the pose-controlled SD pipeline (`sd_controlnet`) are built from
the cached SD pipeline with `from_pipe`, so the text encoder, tokenizer, VAE (and for ControlNet the
UNet with its IP-Adapter) are shared rather than loaded twice.

Device and dtype are explicit: "auto" means CUDA + float16 when a GPU is present, else
CPU + float32; a profile, an environment variable (ANIMENB_DEVICE, ANIMENB_DTYPE) or an
argument overrides it. ANIMENB_THREADS sets torch's CPU threads (default: half the cores).
"""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from .fast_paths import apply_load_time
from .profiles import ModelNotAvailableError, ModelProfile, load_profile

KINDS = ("sd", "animatediff", "svd", "sd_controlnet")
# AnimateDiff's motion modules were trained on a linear beta schedule, not SD's scaled-linear one: the
# settings of diffusers' AnimateDiff examples (DDIMScheduler.from_pretrained(..., clip_sample=False,
# timestep_spacing="linspace", beta_schedule="linear", steps_offset=1)); every sampler is built from them.
ANIMATEDIFF_SCHEDULER = {
    "beta_schedule": "linear",
    "timestep_spacing": "linspace",
    "clip_sample": False,
    "steps_offset": 1,
}
_CACHE: dict[tuple, Any] = {}
_LOCK = threading.RLock()


@dataclass(frozen=True)
class Placement:
    device: str
    dtype: str  # "float16" | "float32" | "bfloat16"

    @property
    def torch_dtype(self):
        import torch

        return getattr(torch, self.dtype)


def resolve_placement(profile: ModelProfile, device: str | None = None, dtype: str | None = None) -> Placement:
    import torch

    device = device or os.environ.get("ANIMENB_DEVICE") or profile.device
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    dtype = dtype or os.environ.get("ANIMENB_DTYPE") or profile.dtype
    if dtype == "auto":
        dtype = "float16" if device.startswith("cuda") else "float32"
    if dtype not in ("float16", "float32", "bfloat16"):
        raise ValueError(f"`dtype` must be float16, float32, bfloat16 or auto, got {dtype!r}.")
    return Placement(device, dtype)


_threads_applied = False


def apply_thread_limit() -> None:
    """Set torch's CPU threads once per process: ANIMENB_THREADS, else half the cores (at least 1).

    Measured on a 2-core box with other work running: 2 threads made a tiny character sheet
    8x slower than 1 (OpenMP threads spin while waiting for a busy core), so by default
    animenb leaves half the cores to the server, ffmpeg and the rest. Applied once, so a later
    `torch.set_num_threads` in a notebook stays in force.
    """
    global _threads_applied
    if _threads_applied:
        return
    import torch

    threads = os.environ.get("ANIMENB_THREADS")
    if threads is None:
        wanted = max(1, (os.cpu_count() or 2) // 2)
    elif threads.isdigit() and int(threads) >= 1:
        wanted = int(threads)
    else:
        raise ValueError(f"ANIMENB_THREADS must be a positive integer, got {threads!r}.")
    if torch.get_num_threads() != wanted:
        torch.set_num_threads(wanted)
    _threads_applied = True


def _quiet() -> None:
    import diffusers
    import transformers

    diffusers.utils.logging.disable_progress_bar()
    diffusers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    transformers.utils.logging.set_verbosity_error()


def _from_pretrained(cls, profile: ModelProfile, role: str, **kwargs):
    """`cls.from_pretrained` for a role, turning "not on disk and not downloadable" into one clear error."""
    source = profile.resolve(role)
    spec = profile.role(role)
    if spec.variant:
        kwargs["variant"] = spec.variant
    try:
        return cls.from_pretrained(source, **kwargs)
    except OSError as exc:
        raise ModelNotAvailableError(
            f"Model role `{role}` of profile `{profile.name}`: cannot load {source!r} "
            f"({str(exc).splitlines()[0][:200]}). Fix: run once with network access so huggingface_hub can "
            f"cache it, fetch it with `animenb models download {profile.name}`, or point `roles.{role}.source` "
            f"in {profile.path} at a local folder. For offline work use `--models tiny`."
        ) from exc


def _from_single_file(cls, profile: ModelProfile, role: str, **kwargs):
    """`cls.from_single_file` for a role held in one original-layout file, with a local config (or a cached
    hub config): diffusers would otherwise fetch configs from the hub at every load."""
    source, config = profile.resolve(role), profile.single_file_config(role)
    try:
        return cls.from_single_file(source, config=config, **kwargs)
    except (OSError, ValueError) as exc:
        raise ModelNotAvailableError(
            f"Model role `{role}` of profile `{profile.name}`: cannot load the single file {Path(source).name} "
            f"with config {config!r} ({str(exc).splitlines()[0][:200]}). Fix: set `roles.{role}.config` to a "
            f"local diffusers folder of the same architecture, or fetch {config!r} once with "
            f"`animenb models download {profile.name}`."
        ) from exc


def _load_vae(profile: ModelProfile, dtype):
    """The profile's VAE override (a single file or a diffusers folder), or None."""
    from diffusers import AutoencoderKL

    if "vae" not in profile.roles:
        return None
    spec = profile.role("vae")
    if spec.is_single_file:
        if spec.config is None:  # a VAE file takes the SD model's VAE config
            sd = profile.role("sd")
            config = sd.config if sd.is_single_file else sd.source
            profile = profile.with_role("vae", replace(spec, config=config))
        return _from_single_file(AutoencoderKL, profile, "vae", subfolder="vae", torch_dtype=dtype)
    kwargs = {"subfolder": spec.subfolder} if spec.subfolder else {}
    return _from_pretrained(AutoencoderKL, profile, "vae", torch_dtype=dtype, **kwargs)


def _load_sd(profile: ModelProfile, dtype):
    import diffusers

    kwargs = {"safety_checker": None, "requires_safety_checker": False}
    vae = _load_vae(profile, dtype)
    if vae is not None:
        kwargs["vae"] = vae
    if profile.role("sd").is_single_file:
        return _from_single_file(diffusers.StableDiffusionPipeline, profile, "sd", torch_dtype=dtype, **kwargs)
    return _from_pretrained(diffusers.StableDiffusionPipeline, profile, "sd", dtype=dtype, **kwargs)


def _load_ip_adapter(pipe, profile: ModelProfile) -> None:
    spec = profile.role("ip_adapter")
    source = profile.resolve("ip_adapter")
    try:
        pipe.load_ip_adapter(
            source, subfolder=spec.subfolder or "models", weight_name=spec.weight_name or "ip-adapter_sd15.safetensors"
        )
    except OSError as exc:
        raise ModelNotAvailableError(
            f"Model role `ip_adapter` of profile `{profile.name}`: cannot load {source!r} "
            f"({str(exc).splitlines()[0][:200]}). Fix: cache it with network access or point "
            f"`roles.ip_adapter.source` in {profile.path} at a local folder."
        ) from exc


def _load(kind: str, profile: ModelProfile, placement: Placement):
    import diffusers

    _quiet()
    dtype = placement.torch_dtype
    if kind == "sd":
        pipe = _load_sd(profile, dtype)
        if "ip_adapter" in profile.roles:  # a profile without one does plain text-to-image
            _load_ip_adapter(pipe, profile)
    elif kind == "animatediff":
        adapter = _from_pretrained(diffusers.MotionAdapter, profile, "motion_adapter", dtype=dtype)
        sd = pipeline("sd", profile, placement)
        if getattr(sd.unet, "_animenb_loras", None) or getattr(sd.text_encoder, "_animenb_loras", None):
            from .backends.diffusers_models import unload_loras

            # UNetMotionModel.from_unet2d copies plain weights: a UNet holding peft LoRA layers (an earlier
            # image job's) cannot be copied, so they are unloaded first (a later job loads them again).
            unload_loras(sd)
        pipe = diffusers.AnimateDiffPipeline.from_pipe(sd, motion_adapter=adapter, dtype=dtype)
        pipe.scheduler = pipe.scheduler.from_config(pipe.scheduler.config, **ANIMATEDIFF_SCHEDULER)
        _scale_motion_modules(pipe.unet)
    elif kind == "svd":
        pipe = _from_pretrained(diffusers.StableVideoDiffusionPipeline, profile, "svd", dtype=dtype)
    elif kind == "sd_controlnet":
        return _load_controlnet_pipeline(profile, placement)
    else:
        raise ValueError(f"`kind` must be one of {', '.join(KINDS)}, got {kind!r}.")
    if not profile.fast_paths.cpu_offload:  # offload places each model itself, on use
        pipe.to(placement.device)
    apply_load_time(pipe, kind, profile.fast_paths, placement.device)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _scale_motion_modules(unet) -> None:
    """Let `set_motion_scale` scale what each motion module adds to its input.

    A motion module returns `input + f(input)`; a hook makes it `input + scale * f(input)` (scale 1:
    untouched), which is what AnimateDiff-Evolved's motion scale does in ComfyUI.
    """
    from diffusers.models.unets.unet_motion_model import AnimateDiffTransformer3D

    unet._animenb_motion_scale = 1.0

    def scaled(module, args, output):
        scale = unet._animenb_motion_scale
        return output if scale == 1.0 else args[0] + scale * (output - args[0])

    for module in unet.modules():
        if isinstance(module, AnimateDiffTransformer3D):
            module.register_forward_hook(scaled)


def set_motion_scale(pipe, scale: float) -> None:
    """The motion scale of an AnimateDiff pipeline loaded here (see `_scale_motion_modules`)."""
    pipe.unet._animenb_motion_scale = float(scale)


def _load_controlnet_pipeline(profile: ModelProfile, placement: Placement):
    """SD + the profile's `controlnet` role, sharing the warm SD pipeline's modules (IP-Adapter included).

    The shared UNet and VAE already had their load-time settings applied with the SD pipeline;
    only the ControlNet is placed here (or offloaded with the rest).
    """
    import diffusers

    if profile.role("controlnet").is_single_file:  # an original-layout file, as lllyasviel and Civitai ship them
        controlnet = _from_single_file(
            diffusers.ControlNetModel, profile, "controlnet", torch_dtype=placement.torch_dtype
        )
    else:
        controlnet = _from_pretrained(diffusers.ControlNetModel, profile, "controlnet", dtype=placement.torch_dtype)
    _embed_hint_once(controlnet)
    sd = pipeline("sd", profile, placement)
    pipe = diffusers.StableDiffusionControlNetPipeline.from_pipe(sd, controlnet=controlnet, dtype=placement.torch_dtype)
    if profile.fast_paths.cpu_offload:
        pipe.enable_model_cpu_offload(device=placement.device)
    else:
        controlnet.to(placement.device)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _embed_hint_once(controlnet) -> None:
    """Run the ControlNet's hint encoder once per control image, not at every denoising step.

    The hint encoder reads the control image at full resolution, and diffusers calls it at every step on
    the same tensor (its pipeline prepares the image once, before the loop). The result depends on that
    tensor only, so it is kept while the same, unmodified tensor comes back. On the tiny profile at 512 px
    it was half of the ControlNet's time (bench/pose_control.py).
    """
    import torch

    embedding = controlnet.controlnet_cond_embedding
    compute = embedding.forward
    last: dict = {}

    def forward(conditioning):
        if torch.is_grad_enabled():  # training: nothing kept
            return compute(conditioning)
        if last.get("input") is not conditioning or last["version"] != conditioning._version:
            # Holding the input keeps its memory from being reused by another tensor that `is` could mistake.
            last.update(input=conditioning, version=conditioning._version, output=compute(conditioning))
        return last["output"]

    embedding.forward = forward


def pipeline(kind: str, profile: ModelProfile | str | None = None, placement: Placement | None = None):
    """The cached pipeline of `kind` for `profile`, loading it on first use."""
    if not isinstance(profile, ModelProfile):
        profile = load_profile(profile)
    placement = placement or resolve_placement(profile)
    # The roles are in the key: a request's `checkpoint` is the same profile with another `sd` file.
    key = (
        kind,
        profile.name,
        profile.path,
        placement.device,
        placement.dtype,
        profile.fast_paths,
        tuple(sorted(profile.roles.items())),
    )
    with _LOCK:
        if key not in _CACHE:
            _CACHE[key] = _load(kind, profile, placement)
        return _CACHE[key]


def cache_info() -> list[dict]:
    """What is loaded: kind, profile, device, dtype and parameter bytes per pipeline."""
    info = []
    with _LOCK:
        for key, pipe in _CACHE.items():
            kind, name, _path, device, dtype = key[:5]  # then the profile's fast paths
            total = 0
            for component in pipe.components.values():
                if hasattr(component, "parameters"):
                    total += sum(p.numel() * p.element_size() for p in component.parameters())
            info.append({"kind": kind, "profile": name, "device": device, "dtype": dtype, "bytes": total})
    return info


def clear_cache() -> None:
    """Drop every cached pipeline and release accelerator memory (after an out-of-memory error)."""
    import gc

    with _LOCK:
        _CACHE.clear()
    gc.collect()
    try:
        import torch

        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    except ImportError:
        pass


def image_embedder(profile: ModelProfile | str | None = None, placement: Placement | None = None):
    """`embed(images) -> (N, D) float32 array`: the IP-Adapter's CLIP vision encoder, for quality scoring.

    Reuses the cached SD pipeline's `image_encoder` and `feature_extractor` (loaded with the
    IP-Adapter), so scoring loads nothing new.
    """
    import numpy as np
    import torch

    pipe = pipeline("sd", profile, placement)
    encoder, processor = pipe.image_encoder, pipe.feature_extractor

    def embed(images) -> np.ndarray:
        pixels = processor(images=[im.convert("RGB") for im in images], return_tensors="pt").pixel_values
        with torch.no_grad():
            out = encoder(pixels.to(encoder.device, encoder.dtype)).image_embeds
        return out.float().cpu().numpy()

    return embed
