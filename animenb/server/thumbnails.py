"""Thumbnails of a job's images and videos: a PNG of at most `THUMBNAIL_SIZE` px (first frame of a video).

Made once per file however many requests ask at the same time (`SingleFlight`: one ffmpeg for 20
concurrent first requests), each written atomically (`animenb.atomic`).
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Awaitable, Callable

from ..atomic import atomic_path
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
    with atomic_path(target) as tmp:
        image.save(tmp, format="PNG")


class SingleFlight:
    """One run of `make()` per key at a time: callers that ask while it runs await the same result."""

    def __init__(self):
        self._running: dict[object, asyncio.Future] = {}

    async def run(self, key: object, make: Callable[[], Awaitable[None]]) -> None:
        running = self._running.get(key)
        if running is None:
            running = self._running[key] = asyncio.ensure_future(make())
            running.add_done_callback(lambda _: self._running.pop(key, None))
        await asyncio.shield(running)  # one caller going away does not cancel it for the others
