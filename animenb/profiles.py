"""Model profiles: which weights play which role, read from parameters/models/<profile>.yaml.

A role's `source` is a hub id, a local folder, or `tiny:<role>` (built by animenb.tiny).
Real ids and paths are one setting away: copy a profile, change the sources.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import yaml

from .config import default_profile, parameters_dir
from .fast_paths import FastPaths, parse_fast_paths

ROLES = ("sd", "motion_adapter", "svd", "ip_adapter", "controlnet")
TINY_LABEL = "tiny (random weights)"


class ModelNotAvailableError(RuntimeError):
    """A role's weights are neither on disk nor downloadable; the message says how to fix it."""


@dataclass(frozen=True)
class RoleSource:
    source: str
    subfolder: str | None = None
    weight_name: str | None = None
    variant: str | None = None

    @property
    def is_tiny(self) -> bool:
        return self.source.startswith("tiny:")

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

    @property
    def is_tiny(self) -> bool:
        return all(r.is_tiny for r in self.roles.values())

    def role(self, role: str) -> RoleSource:
        if role not in self.roles:
            raise ModelNotAvailableError(
                f"Model profile `{self.name}` has no `{role}` role; add `roles.{role}.source` to {self.path}.")
        return self.roles[role]

    def resolve(self, role: str) -> str:
        """Where `from_pretrained` should load `role` from: a local folder or a hub id."""
        spec = self.role(role)
        if spec.is_tiny:
            from .tiny import ensure_tiny_models

            return str(ensure_tiny_models()[spec.source.removeprefix("tiny:")])
        if spec.is_local_path:
            folder = Path(spec.source).expanduser()
            if not folder.exists():
                raise ModelNotAvailableError(
                    f"Model role `{role}` of profile `{self.name}`: folder {folder} does not exist. "
                    f"Fix: put the weights there or change `roles.{role}.source` in {self.path}.")
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

    def as_dict(self) -> dict:
        return {"profile": self.name, "label": self.label, "tiny": self.is_tiny,
                "path": self.public_path(),
                "roles": {k: v.source for k, v in self.roles.items()}, "fast_paths": self.fast_paths.as_dict()}


def available_profiles() -> list[str]:
    return sorted(p.stem for p in (parameters_dir() / "models").glob("*.yaml"))


def load_profile(name_or_path: str | Path | None = None) -> ModelProfile:
    """Load a profile by name (parameters/models/<name>.yaml) or from a YAML path."""
    key = str(name_or_path or default_profile())
    path = Path(key).expanduser()
    if path.suffix not in (".yaml", ".yml"):
        path = parameters_dir() / "models" / f"{key}.yaml"
    if not path.is_file():
        raise ValueError(f"`models` must be one of {', '.join(available_profiles())} or a profile YAML path, "
                         f"got {key!r}.")
    data = yaml.safe_load(path.read_text()) or {}
    roles = {}
    for role, spec in (data.get("roles") or {}).items():
        if role not in ROLES:
            raise ValueError(f"Profile {path}: unknown role `{role}`; roles are {', '.join(ROLES)}.")
        roles[role] = RoleSource(source=spec) if isinstance(spec, str) else RoleSource(**spec)
    sizes = {}
    for role, size in (data.get("sizes") or {}).items():
        if role not in ROLES or not isinstance(size, list) or len(size) != 2 or \
                not all(type(v) is int and 64 <= v <= 2048 and v % 8 == 0 for v in size):
            raise ValueError(f"Profile {path}: `sizes.{role}` must be [width, height] (multiples of 8 in [64, 2048]) "
                             f"for one of the roles {', '.join(ROLES)}, got {size!r}.")
        sizes[role] = (size[0], size[1])
    name = data.get("name", path.stem)
    tiny = bool(roles) and all(r.is_tiny for r in roles.values())
    return ModelProfile(name=name, label=TINY_LABEL if tiny else data.get("label", name),
                        default_size=int(data.get("default_size", 512)), roles=roles,
                        device=str(data.get("device", "auto")), dtype=str(data.get("dtype", "auto")),
                        fast_paths=parse_fast_paths(data.get("fast_paths"), path), path=path, sizes=sizes)
