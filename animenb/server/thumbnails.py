"""Thumbnails of a job's images and videos: a PNG of at most `THUMBNAIL_SIZE` px (first frame of a video)."""
from __future__ import annotations

import os
from pathlib import Path

from . import views

THUMBNAIL_SIZE = 256


def make_thumbnail(source: Path, target: Path, size: int = THUMBNAIL_SIZE) -> None:
    from PIL import Image

    if source.suffix.lower() in views.VIDEO_SUFFIXES:
        import imageio.v2 as imageio

        reader = imageio.get_reader(str(source), format="ffmpeg")
        try:
            image = Image.fromarray(reader.get_data(0))
        finally:
            reader.close()
    else:
        with Image.open(source) as opened:  # closes the file (an animated GIF keeps it open otherwise)
            opened.seek(0)
            image = opened.convert("RGB")
    image = image.convert("RGB")
    image.thumbnail((size, size))
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    try:
        image.save(tmp, format="PNG")
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
