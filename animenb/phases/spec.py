"""One parameter spec per phase: names, JSON types, defaults, ranges and cross-field rules.

Every entry point reads it: the phase functions (their defaults and `check_inputs`), the
server's validation of POST /generate and /orchestrate, the backends' request checks
(the same bounds), `animenb run` and the in-process orchestrator. A test holds the
notebooks' parameters cells and parameters/<phase>.yaml to it. So a request the spec
accepts cannot fail validation later in a kernel, and one request gives one output
whichever way it is sent.

The generation bounds (sizes, steps, guidance, seed, frames per generation, schedulers) come
from `animenb.backends.base`, which checks every request with them.

The spec is plain data (`PhaseSpec.as_dict()` is JSON: what an OpenAPI document is built
from). Cross-field rules carry their expression as text next to the check.

    spec = phase_spec(2)                       # or "ANIMATION_LOOP"
    spec.defaults["frames"]                    # 16
    spec.check({"prompt": "a", "frames": 6})   # SpecError: `frames` must be at least 2 x loop_overlap ...
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping

# The generation bounds are the backends' own (what one generation may ask of a model): the spec
# builds on them, so a phase never accepts what its backend would refuse.
from ..backends.base import (
    MAX_CONTROL_SCALE,
    MAX_GUIDANCE,
    MAX_MODEL_FRAMES,
    MAX_MOTION_SCALE,
    MAX_SIZE,
    MAX_STEPS,
    MIN_SIZE,
    MOTION_LORA_UNSUPPORTED,
    SCHEDULERS,
    SEED_LIMIT,
    SIZE_MULTIPLE,
)
from ..profiles import MAX_CLIP_SKIP, MAX_LORA_WEIGHT, MAX_LORAS, parse_loras
from .catalog import get_phase

BACKENDS = ("diffusers", "comfyui")
MAX_PROMPT_CHARS = 2000
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp")
MANIFEST_NAME = "manifest.json"  # a run directory is an image source through its manifest


class SpecError(ValueError):
    """A value the spec refuses; `field` names the parameter to blame."""

    def __init__(self, field: str, message: str):
        super().__init__(message)
        self.field = field


@dataclass(frozen=True)
class Param:
    """One parameter. `type` is a JSON type ("string", "integer", "number"); `nullable` says
    whether null (None) is accepted and `description` what it means. `example` is the value the
    notebooks and parameters/*.yaml show where it differs from `default` (a prompt, a fixed
    seed). `api`: accepted by POST /generate. `image_ref`: an image file or a run directory."""

    name: str
    type: str
    default: Any = None
    description: str = ""
    nullable: bool = False
    required: bool = False
    minimum: float | None = None
    maximum: float | None = None
    multiple_of: int | None = None
    enum: tuple[str, ...] | None = None
    max_length: int | None = None
    blank: bool = True  # strings: whether "" / whitespace is accepted
    image_ref: bool = False
    api: bool = True
    example: Any = None
    items: dict | None = None  # arrays: the JSON Schema of one item (for documents)
    # arrays: checks the whole list, raising ValueError with the message to show (kept out of as_dict)
    check_items: Callable[[list], Any] | None = field(default=None, compare=False, repr=False)

    def as_dict(self) -> dict:
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in self.__dict__.items() if k != "check_items"}

    def check(self, value: Any) -> None:
        """SpecError unless `value` fits this parameter on its own (rules across fields: `Rule`)."""
        name = self.name
        if value is None:
            if not self.nullable:
                raise SpecError(name, f"`{name}` must be {self._kind()}, got None.")
            return
        if self.type == "integer":
            if type(value) is not int:
                raise SpecError(name, f"`{name}` must be an integer, got {value!r}.")
        elif self.type == "number":
            if type(value) not in (int, float) or not math.isfinite(value):
                raise SpecError(name, f"`{name}` must be a finite number, got {value!r}.")
        elif self.type == "string":
            self._check_string(value)
        elif self.type == "array":
            if type(value) is not list:
                raise SpecError(name, f"`{name}` must be a list, got {type(value).__name__}.")
            if self.check_items is not None:
                try:
                    self.check_items(value)
                except ValueError as exc:
                    raise SpecError(name, str(exc)) from None
            return
        if self.minimum is not None and value < self.minimum or self.maximum is not None and value > self.maximum:
            kind = "an integer in" if self.type == "integer" else "in"
            raise SpecError(
                name, f"`{name}` must be {kind} [{_num(self.minimum)}, {_num(self.maximum)}], got {value!r}."
            )
        if self.multiple_of and value % self.multiple_of:
            raise SpecError(name, f"`{name}` must be a multiple of {self.multiple_of}, got {value!r}.")
        if self.enum is not None and value not in self.enum:
            raise SpecError(name, f"`{name}` must be one of {', '.join(self.enum)}, got {value!r}.")
        if self.image_ref:
            image_source(value, name)

    def _kind(self) -> str:
        return {"integer": "an integer", "number": "a number", "string": "a string", "array": "a list"}[self.type]

    def _check_string(self, value: Any) -> None:
        name = self.name
        if type(value) is not str:
            raise SpecError(name, f"`{name}` must be a string, got {type(value).__name__}.")
        if not self.blank and not value.strip():
            raise SpecError(name, f"`{name}` must not be empty.")
        if self.max_length is not None and len(value) > self.max_length:
            raise SpecError(name, f"`{name}` must be at most {self.max_length} characters, got {len(value)}.")
        if "\x00" in value:
            raise SpecError(name, f"`{name}` must not contain NUL characters.")
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            raise SpecError(name, f"`{name}` must be valid Unicode text (it holds a lone surrogate).") from None


def _num(value: float | None) -> str:
    if value is None:
        return "-inf"
    return f"{value:g}" if isinstance(value, float) else str(value)


# Which image of a previous run feeds the next phase: a sheet's reference pose, a loop's first
# frame, a video's source image (by the run's phase name in its manifest).
RUN_IMAGE = {"CHARACTER_SHEET": "reference", "ANIMATION_LOOP": "frames", "FULL_VIDEO": "source_image"}


def image_source(value: str | Path, name: str) -> Path:
    """The image file `value` names: an image file, or the image a run's output directory hands on
    (`RUN_IMAGE`). What every phase loads its `image` / `reference_image` from; SpecError otherwise."""
    path = Path(value).expanduser()
    if path.is_dir():
        try:
            manifest = json.loads((path / MANIFEST_NAME).read_text())
        except (OSError, ValueError):
            raise SpecError(
                name, f"`{name}`: {value} is not a run's output directory (no readable {MANIFEST_NAME})."
            ) from None
        phase = manifest.get("phase") if isinstance(manifest, dict) else None
        key = RUN_IMAGE.get(str(phase.get("name")) if isinstance(phase, dict) else "", "reference")
        outputs = manifest.get("outputs") if isinstance(manifest.get("outputs"), dict) else {}
        chosen = outputs.get(key)
        if isinstance(chosen, list):
            chosen = chosen[0] if chosen else None
        if not isinstance(chosen, str) or not chosen:
            raise SpecError(name, f"`{name}`: run directory {value} has no `{key}` output to use as an image.")
        path = path / chosen
    if path.suffix.lower() not in IMAGE_SUFFIXES:
        raise SpecError(
            name,
            f"`{name}` must be an image ({', '.join(IMAGE_SUFFIXES)}) or a run's output directory, got {path.name!r}.",
        )
    if not path.is_file():
        raise SpecError(name, f"`{name}`: no image at {value}.")
    return path


@dataclass(frozen=True)
class Rule:
    """A rule across fields: `expression` (text, for documents) and `check` (values -> bool), blaming `field`."""

    field: str
    expression: str
    message: str  # formatted with the values, e.g. "... got {frames}."
    check: Callable[[Mapping[str, Any]], bool] = dataclasses.field(repr=False, compare=False)  # `field` is taken

    def as_dict(self) -> dict:
        return {"field": self.field, "expression": self.expression, "message": self.message}


@dataclass(frozen=True)
class PhaseSpec:
    phase: int
    name: str
    params: tuple[Param, ...]
    rules: tuple[Rule, ...] = ()

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(p.name for p in self.params)

    @property
    def defaults(self) -> dict[str, Any]:
        return {p.name: p.default for p in self.params}

    @property
    def api_params(self) -> tuple[Param, ...]:
        return tuple(p for p in self.params if p.api)

    def param(self, name: str) -> Param:
        for p in self.params:
            if p.name == name:
                return p
        raise KeyError(name)

    def check(self, values: Mapping[str, Any]) -> None:
        """SpecError for the first value (in spec order) or rule `values` break. Missing values take
        their defaults for the rules; a missing required value is an error; unknown names are the
        caller's to refuse (the server and the CLI do, with their own wording)."""
        for p in self.params:
            if p.name in values:
                p.check(values[p.name])
            elif p.required:
                raise SpecError(p.name, f"`{p.name}` is required.")
        merged = {**self.defaults, **{k: v for k, v in values.items() if k in self.names}}
        for rule in self.rules:
            if not rule.check(merged):
                raise SpecError(rule.field, rule.message.format(**merged))

    def as_dict(self) -> dict:
        return {
            "phase": self.phase,
            "name": self.name,
            "params": [p.as_dict() for p in self.params],
            "rules": [r.as_dict() for r in self.rules],
        }


# -- the parameters every phase shares ------------------------------------------------------------------
EXAMPLE_PROMPT = "anime girl with blue hair, school uniform"


def _common(
    *, negative_prompt: str, guidance_scale: float, prompt_required: bool = True, example_prompt: str = EXAMPLE_PROMPT
) -> tuple[Param, ...]:
    return (
        Param(
            "prompt",
            "string",
            None if prompt_required else "",
            required=prompt_required,
            blank=not prompt_required,
            max_length=MAX_PROMPT_CHARS,
            example=example_prompt,
            description="what to draw" + ("" if prompt_required else "; used when no `image` is given"),
        ),
        Param(
            "negative_prompt",
            "string",
            negative_prompt,
            max_length=MAX_PROMPT_CHARS,
            description="what to keep out of the image",
        ),
        Param(
            "seed",
            "integer",
            None,
            nullable=True,
            minimum=-1,
            maximum=SEED_LIMIT - 1,
            example=42,
            description="null or -1: a random seed, recorded in the manifest (and in the job)",
        ),
        Param("steps", "integer", 15, minimum=1, maximum=MAX_STEPS, description="denoising steps"),
        Param(
            "width",
            "integer",
            None,
            nullable=True,
            minimum=MIN_SIZE,
            maximum=MAX_SIZE,
            multiple_of=SIZE_MULTIPLE,
            description="pixels; null: the model profile's size (512 SD 1.5, 64 tiny)",
        ),
        Param(
            "height",
            "integer",
            None,
            nullable=True,
            minimum=MIN_SIZE,
            maximum=MAX_SIZE,
            multiple_of=SIZE_MULTIPLE,
            description="pixels; null: the model profile's size",
        ),
        Param(
            "guidance_scale",
            "number",
            guidance_scale,
            minimum=0.0,
            maximum=MAX_GUIDANCE,
            description="classifier-free guidance",
        ),
        Param(
            "scheduler",
            "string",
            "dpmpp_2m",
            enum=SCHEDULERS,
            description='sampler: A1111\'s name ("DPM++ 2M Karras", "Euler a"...) or an animenb id',
        ),
        Param(
            "models",
            "string",
            "",
            api=False,
            description="model profile; empty: $ANIMENB_MODELS or tiny (the server uses its own)",
        ),
        Param(
            "backend",
            "string",
            "diffusers",
            enum=BACKENDS,
            description="generation backend (the server's --backend when left out of a request)",
        ),
        Param("comfyui_url", "string", "", api=False, description="the ComfyUI server, for the comfyui backend"),
        Param(
            "output_dir",
            "string",
            "",
            api=False,
            description="where files go; empty: outputs/<timestamp>-<phase>-<id>/ (the server sets it)",
        ),
    )


def _reference_image(what: str) -> Param:
    return Param(
        "reference_image",
        "string",
        None,
        nullable=True,
        image_ref=True,
        description=f"IP-Adapter reference: an image or {what} (null: none)",
    )


# The models a researcher brings (animenb.model_files): a single-file checkpoint, LoRAs, A1111's clip skip.
# Names are checked where the model is loaded (ComfyUI has its own folders), the shapes here.
MODEL_CHOICES = (
    Param(
        "checkpoint",
        "string",
        None,
        nullable=True,
        max_length=300,
        description="a single-file checkpoint by name (GET /api/anime/models; ComfyUI: its ckpt_name) "
        "instead of the model profile's; null: the profile's",
    ),
    Param(
        "loras",
        "array",
        [],
        items={
            "type": "object",
            "additionalProperties": False,
            "oneOf": [{"required": ["name"]}, {"required": ["path"]}],
            "properties": {
                "name": {"type": "string", "pattern": r"\S"},
                "path": {"type": "string", "pattern": r"\S"},
                "weight": {"type": "number", "minimum": -MAX_LORA_WEIGHT, "maximum": MAX_LORA_WEIGHT},
            },
        },
        check_items=parse_loras,
        description=f'LoRAs after the profile\'s: [{{"name" (or "path"), "weight"}}], at most {MAX_LORAS}',
    ),
    Param(
        "clip_skip",
        "integer",
        None,
        nullable=True,
        minimum=1,
        maximum=MAX_CLIP_SKIP,
        description="A1111's clip skip (2 for most anime SD 1.5 models); null: the profile's",
    ),
)

IP_ADAPTER_SCALE = Param(
    "ip_adapter_scale",
    "number",
    0.6,
    minimum=0.0,
    maximum=2.0,
    api=False,
    description="how strongly the reference steers the image",
)

# Pose control (phase 1): an OpenPose ControlNet fed one skeleton per pose (animenb.poses).
# 1.0 is A1111's / ComfyUI's default ControlNet weight and what the OpenPose ControlNet was trained at.
POSE_PARAMS = (
    Param(
        "pose_strength",
        "number",
        1.0,
        minimum=0.0,
        maximum=MAX_CONTROL_SCALE,
        description="how strongly each pose follows its OpenPose skeleton (ControlNet weight); 0: prompt only, "
        "no ControlNet",
    ),
    Param(
        "pose_images",
        "string",
        None,
        nullable=True,
        api=False,
        description="a folder of 8 OpenPose images (name order = sheet order) used instead of the built-in "
        "skeletons; null: built-in",
    ),
)

CHARACTER_SHEET = PhaseSpec(
    1,
    "CHARACTER_SHEET",
    _common(negative_prompt="lowres, bad anatomy, blurry, extra limbs, text, watermark", guidance_scale=7.0)
    + (
        _reference_image("a previous run's output directory"),
        IP_ADAPTER_SCALE,
    )
    + POSE_PARAMS
    + MODEL_CHOICES,
)

ANIMATION_LOOP = PhaseSpec(
    2,
    "ANIMATION_LOOP",
    _common(
        negative_prompt="lowres, bad anatomy, blurry, flicker, text, watermark",
        guidance_scale=7.5,
        example_prompt=EXAMPLE_PROMPT + ", hair blowing in the wind",
    )
    + (
        Param("frames", "integer", 16, minimum=2, maximum=MAX_MODEL_FRAMES, description="frames in the loop"),
        Param("fps", "integer", 8, minimum=1, maximum=60, description="frames per second of the GIF/MP4/WebP"),
        Param(
            "loop_overlap",
            "integer",
            4,
            minimum=0,
            maximum=MAX_MODEL_FRAMES // 2,
            api=False,
            description="extra frames cross-faded into the head to close the loop",
        ),
        _reference_image("a phase-1 output directory"),
        IP_ADAPTER_SCALE,
        Param(
            "motion_scale",
            "number",
            1.0,
            minimum=0.0,
            maximum=MAX_MOTION_SCALE,
            api=False,
            description="how much the motion modules move the frames: 1 as trained (AnimateDiff's own setting), "
            "below calmer, above livelier (AnimateDiff-Evolved's motion scale)",
        ),
        Param(
            "motion_lora",
            "string",
            None,
            nullable=True,
            max_length=300,
            description="an AnimateDiff motion LoRA (camera moves such as zoom or pan): a name in the LoRA folder, a "
            "path, or a hub id such as guoyww/animatediff-motion-lora-zoom-out; null: none",
        ),
        Param(
            "motion_lora_weight",
            "number",
            1.0,
            minimum=0.0,
            maximum=MAX_LORA_WEIGHT,
            description="how strongly the motion LoRA acts (1 as trained)",
        ),
    )
    + MODEL_CHOICES,
    rules=(
        Rule(
            "frames",
            "loop_overlap <= frames // 2",
            "`frames` must be at least 2 x loop_overlap ({loop_overlap}) for the loop's cross-fade, got {frames}.",
            lambda v: v["loop_overlap"] <= v["frames"] // 2,
        ),
        Rule(
            "frames",
            f"frames + loop_overlap <= {MAX_MODEL_FRAMES}",
            f"`frames` + loop_overlap ({{loop_overlap}}) must be at most {MAX_MODEL_FRAMES} "
            "(frames in one generation), got {frames}.",
            lambda v: v["frames"] + v["loop_overlap"] <= MAX_MODEL_FRAMES,
        ),
        Rule(
            "motion_lora",
            "motion_lora == null or backend != 'comfyui'",
            MOTION_LORA_UNSUPPORTED,
            lambda v: v["motion_lora"] is None or v["backend"] != "comfyui",
        ),
    ),
)

FULL_VIDEO = PhaseSpec(
    3,
    "FULL_VIDEO",
    _common(negative_prompt="lowres, bad anatomy, blurry, text, watermark", guidance_scale=7.0, prompt_required=False)
    + (
        Param(
            "image",
            "string",
            None,
            nullable=True,
            image_ref=True,
            description="the image to animate: an image or a phase-1/phase-2 output directory; null: from `prompt`",
        ),
        Param("frames", "integer", 25, minimum=2, maximum=MAX_MODEL_FRAMES, description="SVD frames"),
        # SVD's conditioning, defaults from diffusers' StableVideoDiffusionPipeline (and its SVD-XT example).
        Param(
            "svd_fps",
            "integer",
            7,
            minimum=1,
            maximum=60,
            api=False,
            description="SVD's fps conditioning (7: the rate SVD-XT was fine-tuned at; diffusers' default)",
        ),
        Param(
            "motion_bucket_id",
            "integer",
            127,
            minimum=0,
            maximum=255,
            api=False,
            description="SVD motion amount, higher moves more (127: diffusers' default, SVD's training median)",
        ),
        Param(
            "noise_aug_strength",
            "number",
            0.02,
            minimum=0.0,
            maximum=1.0,
            api=False,
            description="noise added to the conditioning image, more lets the video depart from it (0.02: diffusers' "
            "default)",
        ),
        Param(
            "decode_chunk_size",
            "integer",
            None,
            nullable=True,
            minimum=1,
            maximum=MAX_MODEL_FRAMES,
            api=False,
            description="frames the temporal VAE decodes together, fewer saves memory (null: the profile's fast "
            "path, 8 as in diffusers' SVD example)",
        ),
        Param("seconds", "number", 5.0, minimum=1.0, maximum=30.0, description="length of the video"),
        Param("fps", "integer", 24, minimum=1, maximum=60, description="frames per second of the MP4"),
    ),
    rules=(
        Rule(
            "prompt",
            "image != null or prompt.strip() != ''",
            "`image` or `prompt` is required: phase 3 animates an image, generated from the prompt when none is given.",
            lambda v: v["image"] is not None or bool(str(v["prompt"] or "").strip()),
        ),
        Rule(
            "seconds",
            "round(seconds * fps) >= 2",
            "`seconds` x `fps` must give at least 2 frames, got {seconds} x {fps}.",
            lambda v: round(v["seconds"] * v["fps"]) >= 2,
        ),
    ),
)

SPECS: dict[int, PhaseSpec] = {spec.phase: spec for spec in (CHARACTER_SHEET, ANIMATION_LOOP, FULL_VIDEO)}


def phase_spec(key: int | str) -> PhaseSpec:
    """The spec of a phase by id (1, "1") or name ("CHARACTER_SHEET")."""
    return SPECS[get_phase(key).id]
