"""The model files researchers bring: checkpoints, LoRAs and textual-inversion embeddings in folders.

    ANIMENB_CHECKPOINTS  single-file checkpoints (.safetensors, .ckpt); default <home>/models/checkpoints
    ANIMENB_VAES         VAE override files;                          default <home>/models/vae
    ANIMENB_LORAS        LoRAs (.safetensors);                         default <home>/models/loras
    ANIMENB_EMBEDDINGS   embeddings (.safetensors, .pt, .bin);          default <home>/models/embeddings
    ANIMENB_CONTROLNETS  ControlNets (.safetensors, .ckpt);             default <home>/models/controlnet

A file is named by its path relative to its folder without the suffix (`chars/alice` for
`loras/chars/alice.safetensors`), as A1111 and ComfyUI list them. Hashes are the ones A1111 writes
into PNG info and Civitai searches by: `Model hash` is the first 10 hex digits of the file's
SHA-256; a LoRA's hash is the first 12 of the SHA-256 of a safetensors file's tensor data (its
"addnet" hash, which ignores the metadata header).
"""

from __future__ import annotations

import hashlib
import os
import re
from dataclasses import dataclass
from pathlib import Path

from .config import home_dir

KINDS = {  # kind -> (environment variable, folder under <home>/models, suffixes)
    "checkpoints": ("ANIMENB_CHECKPOINTS", "checkpoints", (".safetensors", ".ckpt")),
    "vae": ("ANIMENB_VAES", "vae", (".safetensors", ".ckpt", ".pt")),
    "loras": ("ANIMENB_LORAS", "loras", (".safetensors",)),
    "embeddings": ("ANIMENB_EMBEDDINGS", "embeddings", (".safetensors", ".pt", ".bin")),
    "controlnet": ("ANIMENB_CONTROLNETS", "controlnet", (".safetensors", ".ckpt")),
}
SINGLE_FILE_SUFFIXES = (".safetensors", ".ckpt")
_HASH_CACHE: dict[tuple, str] = {}


def folder(kind: str) -> Path:
    variable, name, _ = KINDS[kind]
    return Path(os.environ.get(variable) or home_dir() / "models" / name).expanduser()


def is_single_file(source: str) -> bool:
    return source.lower().endswith(SINGLE_FILE_SUFFIXES)


@dataclass(frozen=True)
class ModelFile:
    kind: str
    name: str  # relative to the folder, without the suffix
    path: Path

    @property
    def size(self) -> int:
        return self.path.stat().st_size

    def as_dict(self) -> dict:
        """What GET /api/anime/models shows: no absolute path."""
        entry = {"name": self.name, "file": self.path.name, "bytes": self.size, "sha256": sha256(self.path)}
        entry["hash"] = short_hash(self)
        return entry


def files(kind: str) -> list[ModelFile]:
    root, suffixes = folder(kind), KINDS[kind][2]
    if not root.is_dir():
        return []
    found = [p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in suffixes and not p.name.startswith(".")]
    return sorted(
        (ModelFile(kind, p.relative_to(root).with_suffix("").as_posix(), p) for p in found),
        key=lambda f: f.name.lower(),
    )


def find(kind: str, name_or_path: str) -> ModelFile:
    """The file `name_or_path` names: a name in the kind's folder (with or without its suffix) or a
    path to an existing file with an accepted suffix. ValueError listing what there is otherwise."""
    if not isinstance(name_or_path, str) or not name_or_path.strip():
        raise ValueError(
            f"a {kind[:-1] if kind.endswith('s') else kind} name must be a non-empty string, got {name_or_path!r}."
        )
    suffixes = KINDS[kind][2]
    path = Path(name_or_path).expanduser()
    if path.is_absolute() or name_or_path.startswith(("./", "../", "~")):
        if not path.is_file() or path.suffix.lower() not in suffixes:
            raise ValueError(f"no {kind} file at {name_or_path} (accepted: {', '.join(suffixes)}).")
        return ModelFile(kind, path.stem, path)
    wanted = name_or_path.removesuffix(path.suffix) if path.suffix.lower() in suffixes else name_or_path
    available = files(kind)
    for entry in available:
        if entry.name == wanted:
            return entry
    names = ", ".join(f.name for f in available) or "none"
    raise ValueError(f"no {kind} file named {name_or_path!r} in {folder(kind)} ({KINDS[kind][0]}); available: {names}.")


def sha256(path: Path) -> str:
    return _cached_hash(path, "sha256", lambda: _digest(path, 0))


def addnet_hash(path: Path) -> str:
    """SHA-256 of a safetensors file's tensor data (after the 8-byte length and the JSON header)."""

    def compute():
        with open(path, "rb") as f:
            header = int.from_bytes(f.read(8), "little")
        return _digest(path, 8 + header)

    return _cached_hash(path, "addnet", compute)


def short_hash(entry: ModelFile) -> str:
    """The hash A1111 prints for this file: `Model hash` (10) or a LoRA's (12)."""
    if entry.kind == "loras" and entry.path.suffix.lower() == ".safetensors":
        return addnet_hash(entry.path)[:12]
    return sha256(entry.path)[:10]


def _cached_hash(path: Path, kind: str, compute) -> str:
    stat = Path(path).stat()
    key = (str(path), kind, stat.st_size, stat.st_mtime_ns)
    if key not in _HASH_CACHE:
        _HASH_CACHE[key] = compute()
    return _HASH_CACHE[key]


def _digest(path: Path, offset: int) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        f.seek(offset)
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def mentioned_embeddings(*prompts: str) -> list[ModelFile]:
    """Embeddings whose names appear as words in the prompts (A1111: `EasyNegative` in the negative prompt;
    ComfyUI's `embedding:EasyNegative` too)."""
    text = " ".join(p for p in prompts if p)
    return [e for e in files("embeddings") if re.search(rf"(?<![\w-]){re.escape(e.name)}(?![\w-])", text)]


def listing() -> dict:
    """Every checkpoint, VAE, LoRA, embedding and ControlNet found, by kind (names, sizes, hashes; no absolute
    paths)."""
    return {kind: [entry.as_dict() for entry in files(kind)] for kind in KINDS}
