"""A second, independent drawing generator for the gate suite: line-art or flat characters with a body,
legs and two-tone hair, walking over scenes (gradients, textured walls, busy streets) under a camera
that can pan and zoom.

It exists so that the gates can be *tested on outputs they were not tuned to*: the validity suite fits
its floors on some of these families and reports on others (animenb/quality/validity.py, FAMILIES).
Nothing here shares code with animenb/quality/synthetic.py's character on purpose: a different generator
is what makes a held-out family held out. Deterministic: every random choice comes from a `seed`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

KEY = (1, 254, 3)  # chroma key the figure is drawn on; never a palette colour (see `_colour`)
BUILDS = ("chibi", "slim", "broad")
BACKGROUNDS = ("gradient", "wall", "street", "dusk")


@dataclass(frozen=True)
class Look:
    """One character: colours, build and whether it is drawn with dark outlines (line art)."""

    skin: tuple[int, int, int]
    hair: tuple[int, int, int]
    hair_tips: tuple[int, int, int]  # two-tone hair: the lower part of the hair
    eyes: tuple[int, int, int]
    top: tuple[int, int, int]
    bottom: tuple[int, int, int]
    build: str = "slim"
    outline: bool = True


@dataclass(frozen=True)
class Pose:
    """What changes between drawings of one character: walk phase (radians; legs and arms swing),
    `arms` (degrees from hanging; overrides the swing), `facing` (-1 left .. 1 right), head `tilt`
    (-1..1), `mouth` ("smile", "open", "flat") and `eyes_closed`."""

    walk: float = 0.0
    swing: float = 1.0
    arms: tuple[float, float] | None = None
    facing: float = 0.0
    tilt: float = 0.0
    mouth: str = "smile"
    eyes_closed: bool = False


SKINS = ((250, 222, 200), (236, 196, 160), (205, 160, 125), (255, 234, 222))


def _colour(rng: np.random.Generator, avoid: tuple, distance: float = 85.0) -> tuple[int, int, int]:
    for _ in range(2000):
        c = tuple(int(v) for v in rng.integers(25, 235, 3))
        if max(c) - min(c) > 50 and all(math.dist(c, a) >= distance for a in avoid) and math.dist(c, KEY) > 60:
            return c
    raise RuntimeError("no colour far enough from the others")  # unreachable with a handful to avoid


def random_look(seed: int, like: Look | None = None, outline: bool | None = None) -> Look:
    """A seeded character; with `like`, a *different* character in the same style (same skin, build and
    line style, every other colour far from `like`'s)."""
    rng = np.random.default_rng(seed)
    if like is None:
        skin, build = SKINS[int(rng.integers(len(SKINS)))], BUILDS[int(rng.integers(len(BUILDS)))]
        line = bool(rng.integers(2)) if outline is None else outline
        taken: tuple = (skin,)
    else:
        skin, build, line = like.skin, like.build, like.outline
        taken = (skin, like.hair, like.hair_tips, like.eyes, like.top, like.bottom)
    colours = []
    for _ in range(5):
        colours.append(_colour(rng, taken))
        taken = taken + (colours[-1],)
    hair, eyes, top, bottom = colours[0], colours[1], colours[2], colours[3]
    tips = tuple(int(v) for v in np.clip(np.asarray(hair) * 0.55 + np.asarray(colours[4]) * 0.45, 0, 255))
    return Look(skin, hair, tips, eyes, top, bottom, build, line)


def draw_figure(
    size: int, look: Look, pose: Pose = Pose(), center: tuple[float, float] = (0.5, 0.55), scale: float = 1.0
) -> Image.Image:
    """The figure on the chroma `KEY` (compose it over a scene with `compose`); `center` is the hips'
    position in fractions of `size`, `scale` 1 makes the figure about 70% of the frame tall."""
    img = Image.new("RGB", (size, size), KEY)
    d = ImageDraw.Draw(img)
    u = size / 256.0 * scale
    line = (28, 24, 30) if look.outline else None
    lw = max(1, round(2 * u)) if look.outline else 0
    head = {"chibi": 42, "slim": 27, "broad": 31}[look.build] * u
    torso_h = {"chibi": 38, "slim": 58, "broad": 52}[look.build] * u
    torso_w = {"chibi": 22, "slim": 18, "broad": 28}[look.build] * u
    leg = {"chibi": 30, "slim": 58, "broad": 48}[look.build] * u
    hx, hy = center[0] * size, center[1] * size
    bob = 2.5 * u * abs(math.sin(pose.walk)) * pose.swing
    sy = hy - torso_h - bob  # shoulders
    # legs (behind the torso), walk swing
    for side in (-1, 1):
        a = math.radians(28 * pose.swing * math.sin(pose.walk) * side)
        x0 = hx + side * torso_w * 0.45
        x1, y1 = x0 + leg * math.sin(a), hy - bob + leg * math.cos(a)
        d.line((x0, hy - bob, x1, y1), fill=line or look.bottom, width=max(1, round(11 * u)) + 2 * lw)
        d.line((x0, hy - bob, x1, y1), fill=look.bottom, width=max(1, round(11 * u)))
        d.ellipse((x1 - 8 * u, y1 - 4 * u, x1 + 8 * u, y1 + 4 * u), fill=(40, 36, 44))
    # torso: a trapezoid, skirt-like at the hips
    d.polygon(
        [
            (hx - torso_w, sy),
            (hx + torso_w, sy),
            (hx + torso_w * 1.25, hy - bob + 4 * u),
            (hx - torso_w * 1.25, hy - bob + 4 * u),
        ],
        fill=look.top,
        outline=line,
        width=lw,
    )
    # arms
    for k, side in enumerate((-1, 1)):
        deg = pose.arms[k] if pose.arms is not None else 15 - 30 * pose.swing * math.sin(pose.walk) * side
        a = math.radians(deg)
        x0, y0 = hx + side * torso_w, sy + 5 * u
        x1, y1 = x0 + side * 40 * u * math.sin(a), y0 + 40 * u * math.cos(a)
        d.line((x0, y0, x1, y1), fill=line or look.top, width=max(1, round(8 * u)) + 2 * lw)
        d.line((x0, y0, x1, y1), fill=look.top, width=max(1, round(8 * u)))
        d.ellipse((x1 - 5 * u, y1 - 5 * u, x1 + 5 * u, y1 + 5 * u), fill=look.skin, outline=line, width=lw)
    # head: hair behind (two-tone: tips below), face, fringe
    cx = hx + pose.tilt * 9 * u
    cy = sy - head * 0.95
    d.ellipse(
        (cx - head * 1.15, cy - head * 1.15, cx + head * 1.15, cy + head * 1.25), fill=look.hair, outline=line, width=lw
    )
    d.rectangle((cx - head * 1.15, cy + head * 0.55, cx + head * 1.15, cy + head * 1.25), fill=look.hair_tips)
    d.ellipse((cx - head, cy - head, cx + head, cy + head), fill=look.skin, outline=line, width=lw)
    f = pose.facing * head * 0.3
    d.chord(
        (cx - head * 1.05 + f, cy - head * 1.1, cx + head * 1.05 + f, cy + head * 0.1),
        180,
        360,
        fill=look.hair,
        outline=line,
        width=lw,
    )
    # face: eyes follow `facing` (one eye hidden when turned far), mouth
    er, ey = head * 0.2, cy + head * 0.2
    for side in (-1, 1):
        if abs(pose.facing) > 0.7 and side == -int(math.copysign(1, pose.facing)):
            continue
        x = cx + side * head * 0.42 + f
        if pose.eyes_closed:
            d.line((x - er, ey, x + er, ey), fill=(30, 24, 30), width=max(1, round(2 * u)))
            continue
        d.ellipse((x - er, ey - er * 1.4, x + er, ey + er * 1.4), fill=look.eyes, outline=line, width=lw)
        d.ellipse((x - er * 0.5, ey - er * 1.1, x, ey - er * 0.5), fill=(255, 255, 255))
    mx, my = cx + f, cy + head * 0.62
    if pose.mouth == "open":
        d.ellipse((mx - 6 * u, my - 4 * u, mx + 6 * u, my + 6 * u), fill=(140, 50, 60))
    elif pose.mouth == "flat":
        d.line((mx - 6 * u, my, mx + 6 * u, my), fill=(140, 50, 60), width=max(1, round(2 * u)))
    else:
        d.arc((mx - 7 * u, my - 5 * u, mx + 7 * u, my + 4 * u), 20, 160, fill=(140, 50, 60), width=max(1, round(2 * u)))
    return img


def scene(kind: str, width: int, height: int, seed: int, period: int | None = None) -> Image.Image:
    """A background of `kind`: "gradient" (sky to ground), "dusk" (dark orange gradient with a low sun),
    "wall" (textured plaster), "street" (buildings with windows, a pavement, a lamp post every block).
    With `period` (px) the picture repeats horizontally every `period` pixels, so a camera panning by
    exactly `period` over a loop comes back to where it started."""
    if kind not in BACKGROUNDS:
        raise ValueError(f"`kind` must be one of {', '.join(BACKGROUNDS)}, got {kind!r}.")
    rng = np.random.default_rng(seed)
    tile_w = period or width
    y = np.linspace(0, 1, height)[:, None, None]
    if kind in ("gradient", "dusk"):
        top, bottom = ((150, 195, 240), (215, 235, 200)) if kind == "gradient" else ((60, 40, 90), (235, 140, 70))
        a = (np.asarray(top) * (1 - y) + np.asarray(bottom) * y) * np.ones((1, tile_w, 1))
        img = Image.fromarray(a.astype(np.uint8))
        if kind == "dusk":
            r = height * 0.12
            ImageDraw.Draw(img).ellipse(
                (tile_w * 0.7 - r, height * 0.62 - r, tile_w * 0.7 + r, height * 0.62 + r), fill=(250, 200, 120)
            )
    elif kind == "wall":
        base = np.asarray(rng.integers(140, 220, 3), dtype=np.float32)
        noise = rng.normal(0, 1, (height // 4 + 2, tile_w // 4 + 2))
        noise = (
            np.asarray(
                Image.fromarray(((noise - noise.min()) / np.ptp(noise) * 255).astype(np.uint8)).resize(
                    (tile_w, height), Image.BICUBIC
                ),
                dtype=np.float32,
            )
            / 255
            - 0.5
        )
        img = Image.fromarray(np.clip(base + 50 * noise[..., None], 0, 255).astype(np.uint8))
    else:
        img = Image.new("RGB", (tile_w, height), (170, 200, 235))
        d = ImageDraw.Draw(img)
        x = 0
        while x < tile_w:
            bw = int(rng.integers(tile_w // 6, tile_w // 3))
            top = int(height * rng.uniform(0.05, 0.4))
            colour = tuple(int(v) for v in rng.integers(60, 230, 3))
            d.rectangle((x, top, min(tile_w, x + bw), height), fill=colour)
            win = tuple(int(v) for v in rng.integers(30, 250, 3))
            for wy in range(top + height // 20, int(height * 0.75), max(4, height // 12)):
                for wx in range(x + bw // 8, x + bw - bw // 8, max(4, bw // 4)):
                    d.rectangle((wx, wy, wx + max(2, bw // 8), wy + max(2, height // 25)), fill=win)
            d.rectangle((x + bw - max(2, width // 80), int(height * 0.35), x + bw, height), fill=(50, 50, 60))
            x += bw
        d.rectangle((0, int(height * 0.82), tile_w, height), fill=(120, 118, 125))
        d.line((0, int(height * 0.82), tile_w, int(height * 0.82)), fill=(240, 240, 240), width=max(1, height // 60))
    if period is None:
        return img.resize((width, height)) if img.size != (width, height) else img
    reps = math.ceil(width / period) + 1
    out = Image.new("RGB", (period * reps, height))
    for k in range(reps):
        out.paste(img, (k * period, 0))
    return out


def compose(figure: Image.Image, background: Image.Image, offset: int = 0) -> Image.Image:
    """The figure (drawn on `KEY`) over the part of `background` that starts `offset` px from its left."""
    w, h = figure.size
    bg = background.crop((offset, 0, offset + w, h)) if background.size != (w, h) or offset else background.copy()
    a = np.asarray(figure)
    out = np.asarray(bg.convert("RGB")).copy()
    mask = np.any(a != np.asarray(KEY, dtype=np.uint8), axis=2)
    out[mask] = a[mask]
    return Image.fromarray(out)


def zoomed(image: Image.Image, factor: float) -> Image.Image:
    """The centre 1/`factor` of the picture enlarged to the full size: a camera zooming in."""
    w, h = image.size
    cw, ch = w / factor, h / factor
    box = ((w - cw) / 2, (h - ch) / 2, (w + cw) / 2, (h + ch) / 2)
    return image.resize((w, h), Image.BICUBIC, box=box)


def walk(
    n: int,
    size: int,
    look: Look,
    background: str,
    seed: int,
    *,
    cycles: float = 1.0,
    travel: float = 0.0,
    pan: float = 0.0,
    zoom: float = 1.0,
    swing: float = 1.0,
    scale: float = 1.0,
    y: float = 0.55,
    subject: bool = True,
    wobble: float = 0.0,
) -> list[Image.Image]:
    """`n` frames of `look` walking `cycles` walk cycles while moving `travel` of the frame to the right,
    the camera panning `pan` of the frame to the right (the background slides left) and zooming to
    `zoom` by the last frame. A loop (cycles a whole number, travel 0) with a pan repeats its background
    every pan distance, so it stays seamless. `subject=False` films the same shot with nobody in it;
    `wobble` makes the subject jump about at random by up to that fraction of the frame (jitter)."""
    period = round(pan * size) if pan and travel == 0 and float(cycles).is_integer() else None
    bg = scene(background, size if period else size + round(abs(pan) * size) + 2, size, seed, period or None)
    jumps = np.random.default_rng(seed).uniform(-wobble, wobble, (n, 2))
    frames = []
    for t in range(n):
        k = t / n if period else t / max(1, n - 1)
        figure = (
            draw_figure(
                size,
                look,
                Pose(walk=2 * math.pi * cycles * k, swing=swing),
                (0.5 + travel * (k - 0.5) + jumps[t, 0], y + jumps[t, 1]),
                scale,
            )
            if subject
            else Image.new("RGB", (size, size), KEY)
        )
        frame = compose(figure, bg, round(pan * size * k))
        frames.append(zoomed(frame, 1 + (zoom - 1) * k) if zoom != 1 else frame)
    return frames


# The eight drawings of a held-out sheet: "subtle" poses differ only by arms, tilt, facing and mouth;
# "views" turn the figure more strongly; "expressions" keep the body and change the face.
SHEET_POSES: dict[str, tuple[Pose, ...]] = {
    "subtle": (
        Pose(),
        Pose(arms=(60, 10)),
        Pose(arms=(10, 60)),
        Pose(facing=-0.5),
        Pose(facing=0.5),
        Pose(tilt=-1, mouth="open"),
        Pose(tilt=1, arms=(150, 15)),
        Pose(walk=0.8),
    ),
    "views": (
        Pose(),
        Pose(facing=-1),
        Pose(facing=1),
        Pose(facing=-0.5, walk=0.6),
        Pose(facing=0.5, walk=-0.6),
        Pose(arms=(160, 160)),
        Pose(arms=(90, 90), mouth="open"),
        Pose(walk=1.2, facing=1, tilt=0.5),
    ),
    "expressions": (
        Pose(),
        Pose(mouth="open"),
        Pose(mouth="flat"),
        Pose(eyes_closed=True),
        Pose(eyes_closed=True, mouth="open"),
        Pose(tilt=-0.6, mouth="flat"),
        Pose(tilt=0.6),
        Pose(facing=0.3, eyes_closed=True, mouth="flat"),
    ),
}


def sheet_poses(
    size: int, look: Look, background: str, seed: int, kind: str = "subtle", scale: float = 1.0
) -> list[Image.Image]:
    """Eight drawings of `look` (`SHEET_POSES[kind]`) over one background, each at a slightly different
    place and size (seeded), as a generator's sheet would give them."""
    rng = np.random.default_rng(seed)
    bg = scene(background, size, size, seed)
    out = []
    for pose in SHEET_POSES[kind]:
        j = rng.uniform(-1, 1, 3)
        out.append(
            compose(
                draw_figure(size, look, pose, (0.5 + 0.04 * j[0], 0.56 + 0.03 * j[1]), scale * (1 + 0.05 * j[2])), bg
            )
        )
    return out


def vanishing(frames: list[Image.Image], background: list[Image.Image], start: float = 0.5) -> list[Image.Image]:
    """From `start` (fraction of the clip) on, the subject is gone: only its background remains."""
    first = int(len(frames) * start)
    return list(frames[:first]) + list(background[first:])
