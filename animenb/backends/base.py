"""The backend interface: three generation primitives every backend implements.

Phase functions (animenb.phases) are backend-agnostic: they derive pose prompts,
compose sheets, close loops, re-time videos and write files; a backend only turns a
request into PIL images. Requests are validated here, before any model is touched.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Callable

from PIL import Image

from ..profiles import MAX_LORA_WEIGHT, check_clip_skip, parse_loras
from .samplers import SCHEDULER_NAMES as SCHEDULERS  # noqa: F401  (the names the spec and widgets offer)
from .samplers import sampler

# Called after every denoising step; may raise to stop generation (see animenb.progress).
StepCallback = Callable[..., None]

# What one generation may ask of a model; the phase specs (animenb.phases.spec) build on these.
MIN_SIZE, MAX_SIZE, SIZE_MULTIPLE = 64, 2048, 8
MAX_STEPS = 150
MAX_GUIDANCE = 30.0
SEED_LIMIT = 2**63
MAX_MODEL_FRAMES = 64  # AnimateDiff / SVD frames in one generation (a loop's overlap included)
MAX_CONTROL_SCALE = 2.0  # ControlNet conditioning scale (A1111's "Control Weight" slider goes to 2)
MAX_MOTION_SCALE = 2.0  # AnimateDiff motion scale (AnimateDiff-Evolved's scale_multival)
# ComfyUI's core nodes cannot apply an AnimateDiff motion LoRA (AnimateDiff itself is a custom node pack there, and
# animenb's graph does not wire that pack's motion-LoRA loader): motion LoRAs are a diffusers-backend option.
MOTION_LORA_UNSUPPORTED = (
    "`motion_lora` is not available on the comfyui backend: ComfyUI's core nodes cannot apply "
    "an AnimateDiff motion LoRA. Use the diffusers backend, or leave `motion_lora` null."
)


class BackendError(RuntimeError):
    """A backend could not do what was asked (missing node pack, server gone, out of memory...)."""


class OutOfMemoryError(BackendError):
    """The device ran out of memory; the model cache has been freed."""


def _check_common(
    prompt: str, width: int, height: int, steps: int, seed: int, guidance_scale: float, scheduler: str
) -> None:
    if not isinstance(prompt, str) or not prompt.strip():
        raise ValueError(f"`prompt` must be a non-empty string, got {prompt!r}.")
    for name, value in (("width", width), ("height", height)):
        if (
            isinstance(value, bool)
            or not isinstance(value, int)
            or not MIN_SIZE <= value <= MAX_SIZE
            or value % SIZE_MULTIPLE
        ):
            raise ValueError(
                f"`{name}` must be an integer in [{MIN_SIZE}, {MAX_SIZE}] and a multiple of "
                f"{SIZE_MULTIPLE}, got {value!r}."
            )
    if isinstance(steps, bool) or not isinstance(steps, int) or not 1 <= steps <= MAX_STEPS:
        raise ValueError(f"`steps` must be an integer in [1, {MAX_STEPS}], got {steps!r}.")
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < SEED_LIMIT:
        raise ValueError(f"`seed` must be an integer in [0, 2**63), got {seed!r}.")
    if not 0.0 <= float(guidance_scale) <= MAX_GUIDANCE:
        raise ValueError(f"`guidance_scale` must be in [0, {MAX_GUIDANCE:g}], got {guidance_scale!r}.")
    sampler(scheduler)


def _check_models(request) -> None:
    """The model choices a request may add to its profile's: `checkpoint`, `loras`, `clip_skip`."""
    if request.checkpoint is not None and (not isinstance(request.checkpoint, str) or not request.checkpoint.strip()):
        raise ValueError(f"`checkpoint` must be a checkpoint name or null, got {request.checkpoint!r}.")
    object.__setattr__(request, "loras", parse_loras(request.loras))
    check_clip_skip(request.clip_skip)


@dataclass(frozen=True)
class ImageRequest:
    """Text (+ optional IP-Adapter reference, + optional ControlNet pose image) to one image.

    `control_image` (an OpenPose render, see animenb.poses) steers the pose through the profile's
    `controlnet` role at `control_scale`; None or a scale of 0 generates without ControlNet.
    """

    prompt: str
    negative_prompt: str = ""
    width: int = 512
    height: int = 512
    steps: int = 15
    guidance_scale: float = 7.0
    seed: int = 0
    scheduler: str = "dpmpp_2m"
    ip_adapter_image: Image.Image | None = None
    ip_adapter_scale: float = 0.6
    control_image: Image.Image | None = None
    control_scale: float = 1.0
    checkpoint: str | None = None  # a single file in the checkpoints folder instead of the profile's model
    loras: tuple = ()  # ((name or path, weight), ...) after the profile's own
    clip_skip: int | None = None  # A1111's: 1 = the last CLIP layer; null: the profile's

    def __post_init__(self):
        _check_common(self.prompt, self.width, self.height, self.steps, self.seed, self.guidance_scale, self.scheduler)
        _check_control(self.control_image, self.control_scale)
        _check_models(self)

    @property
    def controlled(self) -> bool:
        """Whether this request goes through the ControlNet (an image and a scale above 0)."""
        return self.control_image is not None and self.control_scale > 0


def _check_control(image, scale) -> None:
    if image is not None and not isinstance(image, Image.Image):
        raise ValueError(f"`control_image` must be a PIL image or None, got {type(image).__name__}.")
    if isinstance(scale, bool) or not isinstance(scale, (int, float)) or not 0.0 <= scale <= MAX_CONTROL_SCALE:
        raise ValueError(f"`control_scale` must be a number in [0, {MAX_CONTROL_SCALE:g}], got {scale!r}.")


@dataclass(frozen=True)
class VideoRequest:
    """Text (+ optional IP-Adapter reference) to `frames` frames (AnimateDiff)."""

    prompt: str
    negative_prompt: str = ""
    width: int = 512
    height: int = 512
    steps: int = 15
    guidance_scale: float = 7.5
    seed: int = 0
    scheduler: str = "dpmpp_2m"
    frames: int = 16
    ip_adapter_image: Image.Image | None = None
    ip_adapter_scale: float = 0.6
    motion_scale: float = 1.0  # the motion modules' contribution: 1 as trained, below calmer, above livelier
    motion_lora: str | None = None  # an AnimateDiff motion LoRA: a LoRA-folder name, a path or a hub id
    motion_lora_weight: float = 1.0
    checkpoint: str | None = None  # a single file in the checkpoints folder instead of the profile's model
    loras: tuple = ()  # ((name or path, weight), ...) after the profile's own
    clip_skip: int | None = None  # A1111's: 1 = the last CLIP layer; null: the profile's

    def __post_init__(self):
        _check_common(self.prompt, self.width, self.height, self.steps, self.seed, self.guidance_scale, self.scheduler)
        _check_models(self)
        if not isinstance(self.frames, int) or not 2 <= self.frames <= MAX_MODEL_FRAMES:
            raise ValueError(f"`frames` must be an integer in [2, {MAX_MODEL_FRAMES}], got {self.frames!r}.")
        if (
            isinstance(self.motion_scale, bool)
            or not isinstance(self.motion_scale, (int, float))
            or not 0.0 <= self.motion_scale <= MAX_MOTION_SCALE
        ):
            raise ValueError(
                f"`motion_scale` must be a number in [0, {MAX_MOTION_SCALE:g}], got {self.motion_scale!r}."
            )
        _check_motion_lora(self.motion_lora, self.motion_lora_weight)


def _check_motion_lora(name, weight) -> None:
    if name is not None and (not isinstance(name, str) or not name.strip()):
        raise ValueError(f"`motion_lora` must be a motion LoRA name, path or hub id, or null, got {name!r}.")
    if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not 0.0 <= weight <= MAX_LORA_WEIGHT:
        raise ValueError(f"`motion_lora_weight` must be a number in [0, {MAX_LORA_WEIGHT:g}], got {weight!r}.")


@dataclass(frozen=True)
class ImageToVideoRequest:
    """One image to `frames` frames (Stable Video Diffusion)."""

    image: Image.Image
    width: int = 512
    height: int = 512
    steps: int = 15
    seed: int = 0
    frames: int = 25
    fps: int = 7
    motion_bucket_id: int = 127
    noise_aug_strength: float = 0.02
    min_guidance_scale: float = 1.0
    max_guidance_scale: float = 3.0
    decode_chunk_size: int | None = None  # frames per temporal VAE decode; None: the backend's choice

    def __post_init__(self):
        if self.decode_chunk_size is not None and (
            type(self.decode_chunk_size) is not int or not 1 <= self.decode_chunk_size <= MAX_MODEL_FRAMES
        ):
            raise ValueError(
                f"`decode_chunk_size` must be None or an integer in [1, {MAX_MODEL_FRAMES}], "
                f"got {self.decode_chunk_size!r}."
            )
        if not isinstance(self.image, Image.Image):
            raise ValueError(f"`image` must be a PIL image, got {type(self.image).__name__}.")
        _check_common("image", self.width, self.height, self.steps, self.seed, 1.0, "dpmpp_2m")
        if not isinstance(self.frames, int) or not 2 <= self.frames <= MAX_MODEL_FRAMES:
            raise ValueError(f"`frames` must be an integer in [2, {MAX_MODEL_FRAMES}], got {self.frames!r}.")


class Backend(ABC):
    """Generation primitives. `on_step()` is called once per denoising step and may raise to stop."""

    name: str = "abstract"

    @abstractmethod
    def text_to_image(self, request: ImageRequest, on_step: StepCallback | None = None) -> Image.Image:
        """One image for `request`; same request and seed give the same pixels."""

    @abstractmethod
    def text_to_video(self, request: VideoRequest, on_step: StepCallback | None = None) -> list[Image.Image]:
        """`request.frames` frames of one animated shot (AnimateDiff)."""

    @abstractmethod
    def image_to_video(self, request: ImageToVideoRequest, on_step: StepCallback | None = None) -> list[Image.Image]:
        """`request.frames` frames animating `request.image` (SVD)."""

    @abstractmethod
    def describe(self) -> dict:
        """What produced the output, for manifests: backend, device, dtype, models profile and label."""

    def close(self) -> None:
        """Release resources (connections, cached models)."""
