"""Real hand-drawn art for the gate suite: SuperTux's character sprites (their own walk cycles and
action frames) over its painted level backgrounds, as a held-out family (animenb/quality/validity.py).

The art is Debian's `supertux-data` (GPL-3+ / CC-BY-SA; its copyright file is kept next to it), unpacked
at test time by tests/art/install.sh into ~/.cache/animenb/art/supertux (ANIMENB_ART overrides the path);
nothing of it is committed. Real walk cycles make the good loops and videos, a character's frames make
its sheet, and `families.modes` breaks them the same ways as the drawn families.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
from PIL import Image

from .families import LOOP_FRAMES, VIDEO_FRAMES

# Per character: its folder under creatures/, its walk cycle's frames, and eight frames for a sheet.
CHARACTERS: dict[str, tuple[str, tuple[str, ...], tuple[str, ...]]] = {
    "tux": (
        "tux/big",
        tuple(f"walk-{i}" for i in range(8)),
        ("stand-0", "walk-0", "walk-3", "jump-0", "duck-0", "kick-0", "skid-0", "buttjump-2"),
    ),
    "nolok": (
        "nolok",
        tuple(f"walk-{i}" for i in range(5)),
        ("walk-0", "walk-1", "walk-2", "walk-3", "walk-4", "jump-0", "jump-2", "throw-1"),
    ),
    "snowman": (
        "snowman",
        tuple(f"smwalk{i}" for i in range(1, 11)),
        ("smwalk1", "smwalk3", "smwalk5", "smwalk7", "smwalk9", "melting-0", "melting-2", "melting-3"),
    ),
    "kirby": ("kirby", tuple(f"walk-{i}" for i in range(8)), tuple(f"walk-{i}" for i in range(8))),
}
BACKGROUNDS = (
    "cloud_mountains/cloud-mountains-background.png",
    "BlueRock_Forest/blue-middle.jpg",
    "ice_cave/cave2.jpg",
    "christmas/intro.jpg",
)


def art_root() -> Path:
    """Where tests/art/install.sh unpacked the art (ANIMENB_ART, else ~/.cache/animenb/art/supertux)."""
    default = Path(os.environ.get("ANIMENB_HOME", Path.home() / ".cache" / "animenb")) / "art" / "supertux"
    return Path(os.environ.get("ANIMENB_ART", default))


def available() -> bool:
    return (art_root() / ".installed").is_file()


@lru_cache(maxsize=64)
def _sprite(character: str, frame: str) -> Image.Image:
    folder = CHARACTERS[character][0]
    path = art_root() / "creatures" / folder / f"{frame}.png"
    if not path.is_file():
        raise FileNotFoundError(f"No SuperTux art at {path}: run `bash tests/art/install.sh` first.")
    with Image.open(path) as im:
        return im.convert("RGBA")


@lru_cache(maxsize=8)
def _background(name: str) -> Image.Image:
    path = art_root() / "background" / name
    if not path.is_file():
        raise FileNotFoundError(f"No SuperTux art at {path}: run `bash tests/art/install.sh` first.")
    with Image.open(path) as im:
        sky = Image.new("RGBA", im.size, (150, 190, 230, 255))
        return Image.alpha_composite(sky, im.convert("RGBA")).convert("RGB")


def shot(
    size: int,
    sprite: Image.Image | None,
    background: str,
    pan: float = 0.0,
    x: float = 0.5,
    height: float = 0.55,
    ground: float = 0.85,
) -> Image.Image:
    """One frame: the painted `background` scaled to the frame's height, seen from `pan` (0..1 of the part
    wider than the frame), and `sprite` scaled to `height` of the frame standing at `x` on `ground`."""
    bg = _background(background)
    scale = size / bg.height
    bg = bg.resize((max(size, round(bg.width * scale)), size), Image.BICUBIC)
    left = round(pan * (bg.width - size))
    frame = bg.crop((left, 0, left + size, size))
    if sprite is not None:
        k = height * size / sprite.height
        s = sprite.resize((max(1, round(sprite.width * k)), max(1, round(sprite.height * k))), Image.NEAREST)
        frame.paste(s, (round(x * size - s.width / 2), round(ground * size - s.height)), s)
    return frame


@dataclass(frozen=True)
class SpriteDrawer:
    """SuperTux characters walking over painted backgrounds: loops walk in place over a still scene,
    videos walk on while the camera pans (as the game scrolls)."""

    height: float = 0.55

    def _character(self, seed: int, who: int) -> str:
        names = tuple(CHARACTERS)
        return names[(seed + who) % len(names)]

    def _background(self, seed: int, shift: int = 0) -> str:
        return BACKGROUNDS[(seed + shift) % len(BACKGROUNDS)]

    def poses(self, seed: int, size: int, who: int = 0) -> list[Image.Image]:
        name = self._character(seed, who)
        rng = np.random.default_rng(seed)
        return [
            shot(
                size,
                _sprite(name, f),
                self._background(seed),
                pan=0.3,
                x=0.5 + 0.04 * rng.uniform(-1, 1),
                height=self.height * (1 + 0.05 * rng.uniform(-1, 1)),
            )
            for f in CHARACTERS[name][2]
        ]

    def loop(self, seed: int, size: int, who: int = 0, *, cut: float = 1.0, wobble: float = 0.0) -> list[Image.Image]:
        name = self._character(seed, who)
        cycle = CHARACTERS[name][1]
        jumps = np.random.default_rng(seed).uniform(-wobble, wobble, (LOOP_FRAMES, 2))
        # Two strides in 16 frames; `cut` < 1 stops short, so the wrap-around jumps back.
        return [
            shot(
                size,
                _sprite(name, cycle[int(2 * len(cycle) * cut * t / LOOP_FRAMES) % len(cycle)]),
                self._background(seed),
                pan=0.3,
                x=0.5 + jumps[t, 0],
                ground=0.85 + jumps[t, 1],
                height=self.height,
            )
            for t in range(LOOP_FRAMES)
        ]

    def video(
        self, seed: int, size: int, who: int = 0, *, shift: int = 0, wobble: float = 0.0, subject: bool = True
    ) -> list[Image.Image]:
        name = self._character(seed, who)
        cycle = CHARACTERS[name][1]
        jumps = np.random.default_rng(seed).uniform(-wobble, wobble, (VIDEO_FRAMES, 2))
        return [
            shot(
                size,
                _sprite(name, cycle[t % len(cycle)]) if subject else None,
                self._background(seed, shift),
                pan=0.2 + 0.25 * t / (VIDEO_FRAMES - 1),
                x=0.45 + 0.1 * t / (VIDEO_FRAMES - 1) + jumps[t, 0],
                ground=0.85 + jumps[t, 1],
                height=self.height,
            )
            for t in range(VIDEO_FRAMES)
        ]
