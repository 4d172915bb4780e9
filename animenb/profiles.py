"""Model profiles: which weights play which role, read from parameters/models/<profile>.yaml.

A role's `source` is a hub id, a local folder, or `tiny:<role>` (built by animenb.tiny).
Real ids and paths are one setting away: copy a profile, change the sources.

The `sd` and `vae` roles may also be single files in the original SD layout (`.safetensors` /
`.ckpt`, a path or a name in the checkpoints / VAE folder, see animenb.model_files), loaded with a
local `config` (a diffusers folder or hub id holding the configs and tokenizer). A profile may
name default `loras` ([{name, weight}]) and a `clip_skip` (A1111's: 2 for most anime SD 1.5 models).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path

import yaml

from .config import default_profile, parameters_dir
from .fast_paths import FastPaths, parse_fast_paths

ROLES = ("sd", "motion_adapter", "svd", "ip_adapter", "controlnet", "vae")
# Where a single-file SD 1.x checkpoint takes its configs and tokenizer when its role names no `config`.
SD15_CONFIG = "stable-diffusion-v1-5/stable-diffusion-v1-5"
# ...and a single-file ControlNet (an SD 1.5 ControlNet: every v1.1 one shares this architecture).
CONTROLNET_SD15_CONFIG = "lllyasviel/control_v11p_sd15_openpose"
FILE_FOLDERS = {"vae": "vae", "controlnet": "controlnet"}  # role -> model_files kind a file name is looked up in
MAX_CLIP_SKIP = 4
TINY_LABEL = "tiny (random weights)"


class ModelNotAvailableError(RuntimeError):
    """A role's weights are neither on disk nor downloadable; the message says how to fix it."""


@dataclass(frozen=True)
class RoleSource:
    source: str
    subfolder: str | None = None
    weight_name: str | None = None
    variant: str | None = None
    config: str | None = None  # single files: the diffusers config folder or hub id

    @property
    def is_tiny(self) -> bool:
        return self.source.startswith("tiny:")

    @property
    def is_single_file(self) -> bool:
        from .model_files import is_single_file

        return is_single_file(self.source)

    @property
    def is_local_path(self) -> bool:
        return self.source.startswith(("/", ".", "~")) or Path(self.source).expanduser().exists()


@dataclass(frozen=True)
class ModelProfile:
    name: str
    label: str
    default_size: int
    roles: dict[str, RoleSource]
    device: str = "auto"
    dtype: str = "auto"
    fast_paths: FastPaths = field(default_factory=FastPaths)
    path: Path | None = field(default=None, compare=False)
    sizes: dict[str, tuple[int, int]] = field(default_factory=dict)  # role -> native (width, height)

    def native_size(self, role: str, aspect: float | None = None) -> tuple[int, int]:
        """`role`'s native (width, height): `sizes.<role>` of the profile, else `default_size` square.

        With `aspect` (width / height of the image it starts from), the same pixel count at that aspect,
        sides rounded to multiples of 64: SVD-XT's 1024x576 stays 1024x576 for a 16:9 source, becomes
        576x1024 for 9:16 and 768x768 for a square one, instead of stretching the source.
        """
        width, height = self.sizes.get(role, (self.default_size, self.default_size))
        if aspect is None or role not in self.sizes:
            return width, height
        area = width * height
        fitted_width = max(64, round((area * aspect) ** 0.5 / 64) * 64)
        fitted_height = max(64, round((area / aspect) ** 0.5 / 64) * 64)
        return min(fitted_width, 2048), min(fitted_height, 2048)

    loras: tuple[tuple[str, float], ...] = ()  # applied to every job, before the request's own
    clip_skip: int | None = None

    @property
    def is_tiny(self) -> bool:
        return all(r.is_tiny for r in self.roles.values())

    def role(self, role: str) -> RoleSource:
        if role not in self.roles:
            raise ModelNotAvailableError(
                f"Model profile `{self.name}` has no `{role}` role; add `roles.{role}.source` to {self.path}."
            )
        return self.roles[role]

    def resolve(self, role: str) -> str:
        """Where `role` loads from: a local folder or file, or a hub id."""
        spec = self.role(role)
        if spec.is_single_file and not spec.is_local_path:  # a name in the checkpoints / VAE / ControlNet folder
            from .model_files import find

            try:
                return str(find(FILE_FOLDERS.get(role, "checkpoints"), spec.source).path)
            except ValueError as exc:
                raise ModelNotAvailableError(f"Model role `{role}` of profile `{self.name}`: {exc}") from None
        if spec.is_tiny:
            from .tiny import ensure_tiny_models

            return str(ensure_tiny_models()[spec.source.removeprefix("tiny:")])
        if spec.is_local_path:
            folder = Path(spec.source).expanduser()
            if not folder.exists():
                raise ModelNotAvailableError(
                    f"Model role `{role}` of profile `{self.name}`: {folder} does not exist. "
                    f"Fix: put the weights there or change `roles.{role}.source` in {self.path}."
                )
            return str(folder)
        return spec.source

    def public_path(self) -> str | None:
        """The profile's file as a public record (a job's manifest) may show it: relative to the repository's
        parameters folder for a shipped profile, else its file name only (no server paths)."""
        if not self.path:
            return None
        path = Path(self.path)
        try:
            return path.resolve().relative_to(parameters_dir().resolve().parent).as_posix()
        except ValueError:
            return path.name

    def single_file_config(self, role: str) -> str:
        """The config a single-file role loads with: its own `config`, else SD 1.5's (hub id) or, for the
        `controlnet` role, an SD 1.5 ControlNet's."""
        config = self.role(role).config or (CONTROLNET_SD15_CONFIG if role == "controlnet" else SD15_CONFIG)
        if config.startswith("tiny:"):
            from .tiny import ensure_tiny_models

            return str(ensure_tiny_models()[config.removeprefix("tiny:")])
        return str(Path(config).expanduser()) if config.startswith(("/", ".", "~")) else config

    def with_role(self, role: str, spec: RoleSource) -> "ModelProfile":
        return replace(self, roles={**self.roles, role: spec})

    def with_checkpoint(self, checkpoint: str | Path) -> "ModelProfile":
        """This profile with its `sd` role replaced by a single-file checkpoint (a request's `checkpoint`).
        The file takes its config from the profile's own SD model, so a tiny profile's checkpoints load
        with the tiny configs and a real one's with SD 1.5's."""
        old = self.role("sd")
        config = old.config if old.is_single_file else old.source
        spec = RoleSource(source=str(checkpoint), config=config)
        return replace(self.with_role("sd", spec), label=f"{self.label} + {Path(checkpoint).name}")

    def as_dict(self) -> dict:
        return {
            "profile": self.name,
            "label": self.label,
            "tiny": self.is_tiny,
            "path": self.public_path(),
            "roles": {k: v.source for k, v in self.roles.items()},
            "fast_paths": self.fast_paths.as_dict(),
            "loras": [{"name": n, "weight": w} for n, w in self.loras],
            "clip_skip": self.clip_skip,
        }


def available_profiles() -> list[str]:
    return sorted(p.stem for p in (parameters_dir() / "models").glob("*.yaml"))


def load_profile(name_or_path: str | Path | None = None) -> ModelProfile:
    """Load a profile by name (parameters/models/<name>.yaml) or from a YAML path."""
    key = str(name_or_path or default_profile())
    path = Path(key).expanduser()
    if path.suffix not in (".yaml", ".yml"):
        path = parameters_dir() / "models" / f"{key}.yaml"
    if not path.is_file():
        raise ValueError(
            f"`models` must be one of {', '.join(available_profiles())} or a profile YAML path, got {key!r}."
        )
    data = yaml.safe_load(path.read_text()) or {}
    roles = {}
    for role, spec in (data.get("roles") or {}).items():
        if role not in ROLES:
            raise ValueError(f"Profile {path}: unknown role `{role}`; roles are {', '.join(ROLES)}.")
        roles[role] = RoleSource(source=spec) if isinstance(spec, str) else RoleSource(**spec)
    sizes = {}
    for role, size in (data.get("sizes") or {}).items():
        if (
            role not in ROLES
            or not isinstance(size, list)
            or len(size) != 2
            or not all(type(v) is int and 64 <= v <= 2048 and v % 8 == 0 for v in size)
        ):
            raise ValueError(
                f"Profile {path}: `sizes.{role}` must be [width, height] (multiples of 8 in [64, 2048]) "
                f"for one of the roles {', '.join(ROLES)}, got {size!r}."
            )
        sizes[role] = (size[0], size[1])
    name = data.get("name", path.stem)
    tiny = bool(roles) and all(r.is_tiny for r in roles.values())
    try:
        loras = parse_loras(data.get("loras"))
        clip_skip = check_clip_skip(data.get("clip_skip"))
    except ValueError as exc:
        raise ValueError(f"Profile {path}: {exc}") from None
    return ModelProfile(
        name=name,
        label=TINY_LABEL if tiny else data.get("label", name),
        default_size=int(data.get("default_size", 512)),
        roles=roles,
        device=str(data.get("device", "auto")),
        dtype=str(data.get("dtype", "auto")),
        fast_paths=parse_fast_paths(data.get("fast_paths"), path),
        path=path,
        sizes=sizes,
        loras=loras,
        clip_skip=clip_skip,
    )


MAX_LORAS = 8
MAX_LORA_WEIGHT = 4.0


def parse_loras(value) -> tuple[tuple[str, float], ...]:
    """`loras` as a request or profile gives it ([{"name" or "path", "weight"}]) -> ((name or path, weight), ...)."""
    if value is None:
        return ()
    if not isinstance(value, (list, tuple)) or len(value) > MAX_LORAS:
        raise ValueError(
            f'`loras` must be a list of at most {MAX_LORAS} {{"name", "weight"}} objects, got {value!r:.200}.'
        )
    parsed = []
    for item in value:
        if isinstance(item, (list, tuple)) and len(item) == 2:  # already parsed
            item = {"name": item[0], "weight": item[1]}
        if not isinstance(item, dict) or set(item) - {"name", "path", "weight"} or ("name" in item) == ("path" in item):
            raise ValueError(f'each of `loras` must be {{"name" or "path", "weight"}}, got {item!r:.200}.')
        name = item.get("name", item.get("path"))
        weight = item.get("weight", 1.0)
        if not isinstance(name, str) or not name.strip():
            raise ValueError(f"a LoRA's name must be a non-empty string, got {name!r}.")
        if (
            isinstance(weight, bool)
            or not isinstance(weight, (int, float))
            or not -MAX_LORA_WEIGHT <= weight <= MAX_LORA_WEIGHT
        ):
            raise ValueError(
                f"LoRA `{name}`: `weight` must be a number in [-{MAX_LORA_WEIGHT:g}, "
                f"{MAX_LORA_WEIGHT:g}], got {weight!r}."
            )
        parsed.append((name, float(weight)))
    return tuple(parsed)


def check_clip_skip(value) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_CLIP_SKIP:
        raise ValueError(f"`clip_skip` must be an integer in [1, {MAX_CLIP_SKIP}], got {value!r}.")
    return value
