"""Files written so that a reader (the gallery, a download, a crash) sees the old file or the new one, never part.

Every writer goes through `atomic_path`: the data is written under a hidden temporary name in the
target's own directory (same filesystem, so the rename is atomic) and renamed over the target when
the block succeeds; on an error the temporary file is deleted and the target is left as it was.
The temporary name keeps the target's suffix, so writers that infer the format from the name
(Pillow, ffmpeg) still do, and `is_partial` tells such a name from a finished file.
"""

from __future__ import annotations

import json
import os
import secrets
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

_PARTIAL = ".tmp"  # between the target's name and its suffix: .<name>.<random>.tmp<suffix>


@contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """Yield a temporary path beside `path` (its folder created); rename it to `path` when the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _create_beside(path)
    try:
        yield Path(tmp)
        os.replace(tmp, path)
    finally:
        Path(tmp).unlink(missing_ok=True)


def _create_beside(path: Path) -> Path:
    """A new empty file .<name>.<random>.tmp<suffix> beside `path`, with a plain file's permissions (the
    umask's, where `tempfile.mkstemp` would make it owner-only)."""
    while True:
        tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}{_PARTIAL}{path.suffix}")
        try:
            os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
            return tmp
        except FileExistsError:
            continue


def write_bytes(path: Path, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def write_text(path: Path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_json(path: Path, data: dict) -> None:
    """`data` as indented JSON; values JSON cannot hold (paths, dates) are written as their `str`."""
    write_text(path, json.dumps(data, indent=2, sort_keys=False, default=str))


def is_partial(name: str) -> bool:
    """Whether a file name is an `atomic_path` temporary (a write in progress, or left by a killed process)."""
    return name.startswith(".") and _PARTIAL in Path(name).suffixes
