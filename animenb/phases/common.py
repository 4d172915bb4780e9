"""What every phase function shares: inputs, output directory, backend, manifest, result."""

from __future__ import annotations

import secrets
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from PIL import Image

from .. import __version__
from ..backends import Backend, get_backend
from ..config import outputs_dir
from ..manifest import file_entry, utc_now, versions, write_manifest
from ..media import a1111_model_fields
from .catalog import Phase
from .spec import PhaseSpec, image_source


@dataclass(frozen=True)
class PhaseResult:
    """What a phase function returns: where its files are, its manifest, and the images it made."""

    phase: Phase
    output_dir: Path
    manifest: dict
    images: list[Image.Image] = field(repr=False)

    def path(self, key: str) -> Path:
        """Absolute path of a named output (e.g. "sheet", "gif", "mp4")."""
        return self.output_dir / self.manifest["outputs"][key]

    def __repr__(self) -> str:
        # One line, like the HTML form: the dataclass default printed the whole manifest into every
        # executed notebook (3.5 kB for a tiny sheet), and formatting it cost a warm job ~1.5 ms.
        m = self.manifest
        return (
            f"PhaseResult({self.phase.name}, seed={m['seed']}, models={m['models']!r}, "
            f"{m['timings']['total_seconds']:.2f} s, output_dir={str(self.output_dir)!r})"
        )

    def _repr_html_(self) -> str:
        m = self.manifest
        return (
            f"<b>{self.phase.name}</b> seed {m['seed']} · {m['models']} · "
            f"{m['timings']['total_seconds']:.2f} s · <code>{self.output_dir}</code>"
        )


def check_inputs(spec: PhaseSpec, values: dict) -> None:
    """A phase function's arguments against its spec (animenb.phases.spec), before any model work.

    A PIL image or a Backend object passed directly is the caller's own and is not checked; a Path
    is checked as text; None `models`/`output_dir` mean the defaults, as "" does in the notebooks.
    """
    plain = {}
    for name, value in values.items():
        if isinstance(value, (Image.Image, Backend)):
            continue
        if isinstance(value, Path):
            value = str(value)
        if value is None and name in ("models", "output_dir"):
            value = ""
        plain[name] = value
    spec.check(plain)


def check_prompt(prompt) -> str:
    if not isinstance(prompt, str) or not prompt.strip():
        raise ValueError(f"`prompt` must be a non-empty string, got {prompt!r}.")
    return prompt


def resolve_seed(seed: int | None) -> int:
    if seed is None or seed == -1:
        return secrets.randbelow(2**32)
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2**63:
        raise ValueError(f"`seed` must be an integer in [0, 2**63) (or None/-1 for a random one), got {seed!r}.")
    return seed


def resolve_backend(backend: str | Backend, models: str | None, backend_options: dict | None) -> Backend:
    if isinstance(backend, Backend):
        return backend
    options = dict(backend_options or {})
    if backend == "diffusers":
        options.setdefault("models", models)
    return get_backend(backend, **options)


def default_size(backend: Backend, width: int | None, height: int | None) -> tuple[int, int]:
    """None means the model profile's native size (512 for SD 1.5, 64 for the tiny profile)."""
    profile = getattr(backend, "profile", None)
    native = profile.default_size if profile is not None else 512
    return width or native, height or native


def models_label(description: dict) -> str:
    models = description.get("models")
    if isinstance(models, dict) and models.get("label"):
        return models["label"]
    return str(description.get("models_label") or description.get("checkpoint") or description["backend"])


def stamped_output_dir(name: str, root: str | Path | None = None) -> Path:
    """A new run directory's path (not created): <root>/<UTC stamp>-<name lower>-<6 hex>, root by default
    outputs/. Every default run directory is named this way (phases, the chain, `animenb run`, the explorer),
    so they sort by time and never collide."""
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S")
    return Path(root or outputs_dir()) / f"{stamp}-{name.lower()}-{secrets.token_hex(3)}"


def prepare_output_dir(output_dir: str | Path | None, name: str) -> Path:
    """`output_dir`, created; by default `stamped_output_dir(name)` (name: the phase's or the chain's)."""
    if not output_dir:
        output_dir = stamped_output_dir(name)
    path = Path(output_dir).expanduser().resolve()
    path.mkdir(parents=True, exist_ok=True)
    return path


def load_image(source: str | Path | Image.Image, role: str) -> Image.Image:
    """An image from a PIL image, an image file, or a run's output directory (`spec.image_source`)."""
    if isinstance(source, Image.Image):
        return source.convert("RGB")
    with Image.open(image_source(source, role)) as im:
        return im.convert("RGB")


class Timer:
    def __init__(self):
        self.started = time.perf_counter()
        self.marks: dict[str, float] = {}
        self._last = self.started

    def mark(self, name: str) -> None:
        now = time.perf_counter()
        self.marks[f"{name}_seconds"] = round(now - self._last, 4)
        self._last = now

    def as_dict(self) -> dict:
        return {**self.marks, "total_seconds": round(time.perf_counter() - self.started, 4)}


def model_name(description: dict, role: str) -> str | None:
    """The model behind `role` ("sd", "svd", ...) as A1111's `Model` field names it (no path, no extension).

    diffusers: the profile's source for the role (a hub id, a folder's name, `animenb-tiny-sd` for
    random weights); ComfyUI: the checkpoint file it loaded (`svd_checkpoint` for SVD). Readers such
    as sd-parsers split fields on `,` and `:` without honouring A1111's quotes, so neither appears.
    """
    models = description.get("models")
    if isinstance(models, dict) and isinstance(models.get("roles"), dict):
        source = models["roles"].get(role)
        if source is None:
            return None
        if source.startswith("tiny:"):
            return f"animenb-tiny-{source.removeprefix('tiny:')}"
        path = Path(source).expanduser()
        return path.name if path.is_absolute() or source.startswith((".", "~")) else source
    checkpoint = description.get("svd_checkpoint" if role == "svd" else "checkpoint")
    return Path(checkpoint).stem if checkpoint else None


def png_parameters(
    phase: Phase,
    parameters: dict,
    seed: int,
    label: str,
    *,
    model: str | None,
    sampler: str | None = None,
    cfg_scale: float | None = None,
    used: dict | None = None,
    **extra,
) -> dict:
    """What every PNG of a run carries (see animenb.media.save_png): generation settings, model, phase.

    `sampler` and `cfg_scale` default to the phase's `scheduler` and `guidance_scale`; SVD frames
    pass their own (SVD samples with Euler on Karras sigmas under its own guidance). `used` is the
    backend's `last_models` (LoRAs, embeddings, clip skip, a single file's name and hash), written as
    A1111 writes them.
    """
    models_used = a1111_model_fields(used or {})
    model = models_used.pop("model", model)
    extra = {**models_used, **extra}
    return {
        "prompt": parameters.get("prompt", ""),
        "negative_prompt": parameters.get("negative_prompt", ""),
        "steps": parameters.get("steps"),
        "sampler": sampler or parameters.get("scheduler"),
        "cfg_scale": parameters.get("guidance_scale") if cfg_scale is None else cfg_scale,
        "seed": seed,
        "size": f"{parameters.get('width')}x{parameters.get('height')}",
        "model": model,
        "models": label,
        "phase": phase.name,
        **extra,
        "animenb": __version__,
    }


def write_phase_manifest(
    phase: Phase,
    output_dir: Path,
    parameters: dict,
    seed: int,
    backend: Backend,
    timer: Timer,
    outputs: dict,
    files: list[tuple[Path, str]],
) -> dict:
    description = backend.describe()
    manifest = {
        "animenb_version": __version__,
        "created_at": utc_now(),
        "phase": {"id": phase.id, "name": phase.name},
        "parameters": parameters,
        "seed": seed,
        "models": models_label(description),
        "backend": description,
        "versions": versions(),
        "timings": timer.as_dict(),
        "outputs": outputs,
        "files": [file_entry(output_dir, path, kind) for path, kind in files],
    }
    write_manifest(output_dir, manifest)
    return manifest
