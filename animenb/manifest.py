"""`manifest.json`: the provenance record every run writes into its output directory.

Shape (phase functions write it; scoring (animenb.quality.record_quality) adds "quality"; the job runner adds "job"):

    {"animenb_version", "created_at", "phase": {"id", "name"},
     "parameters": {...validated inputs...}, "seed", "models": {"profile", "label", ...},
     "backend": {...}, "versions": {...}, "timings": {"load_seconds", "generate_seconds", ...},
     "outputs": {phase-specific names -> relative paths, fps, frame_count, duration_seconds},
     "files": [{"path", "kind", "media_type", "bytes", "sha256"}],
     "quality": {"score", "passed", "threshold", "metrics": {...}}}
"""

from __future__ import annotations

import functools
import hashlib
import json
import mimetypes
import platform
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path

from .atomic import write_json

MANIFEST_NAME = "manifest.json"
_VERSIONED = ("animenb", "torch", "diffusers", "transformers", "papermill", "pillow", "numpy")


@functools.lru_cache(maxsize=1)
def _installed_versions() -> tuple[tuple[str, str], ...]:
    """Looked up once per process: importlib.metadata scans site-packages (~10 ms a call)."""
    found = {"python": platform.python_version()}
    for name in _VERSIONED:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    return tuple(found.items())


def versions() -> dict[str, str]:
    return dict(_installed_versions())


def utc_now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds")


def file_entry(root: Path, path: Path, kind: str) -> dict:
    data = Path(path).read_bytes()
    rel = Path(path).resolve().relative_to(Path(root).resolve()).as_posix()
    return {
        "path": rel,
        "kind": kind,
        "media_type": mimetypes.guess_type(rel)[0] or "application/octet-stream",
        "bytes": len(data),
        "sha256": hashlib.sha256(data).hexdigest(),
    }


def read_manifest(output_dir: str | Path) -> dict:
    path = Path(output_dir) / MANIFEST_NAME
    if not path.is_file():
        raise FileNotFoundError(f"No {MANIFEST_NAME} in {output_dir}: is it a run's output directory?")
    return json.loads(path.read_text())


def write_manifest(output_dir: str | Path, manifest: dict) -> Path:
    path = Path(output_dir) / MANIFEST_NAME
    write_json(path, manifest)
    return path


def update_manifest(output_dir: str | Path, **fields) -> dict:
    """Merge top-level `fields` into an existing manifest (atomically)."""
    manifest = read_manifest(output_dir)
    manifest.update(fields)
    write_manifest(output_dir, manifest)
    return manifest
