"""Synthetic, drawn inputs for the quality metrics: a small anime-ish character (round head, hair,
big eyes, body, arms) drawn with PIL, and the runs built from it.

They exist so that every metric can be checked to rank good above bad on inputs we construct
(tests/test_quality_*.py), and so that notebooks/04_quality.ipynb has something cheap to score when
it is run with no `output_dir`. Everything is deterministic: no randomness unless a `seed` is given.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

Palette = dict[str, tuple[int, int, int]]

BACKGROUND = (236, 240, 246)

PALETTES: tuple[Palette, ...] = (
    {
        "skin": (252, 224, 206),
        "hair": (236, 92, 150),
        "eyes": (60, 110, 210),
        "outfit": (54, 64, 112),
        "accent": (250, 214, 80),
    },
    {
        "skin": (240, 200, 170),
        "hair": (40, 40, 48),
        "eyes": (200, 40, 40),
        "outfit": (196, 40, 56),
        "accent": (255, 255, 255),
    },
    {
        "skin": (255, 230, 215),
        "hair": (250, 220, 90),
        "eyes": (40, 160, 90),
        "outfit": (40, 150, 120),
        "accent": (120, 60, 20),
    },
    {
        "skin": (200, 150, 120),
        "hair": (120, 200, 250),
        "eyes": (150, 60, 200),
        "outfit": (250, 140, 40),
        "accent": (20, 20, 20),
    },
    {
        "skin": (250, 215, 190),
        "hair": (140, 80, 40),
        "eyes": (90, 60, 30),
        "outfit": (110, 170, 60),
        "accent": (230, 60, 60),
    },
    {
        "skin": (230, 190, 160),
        "hair": (170, 170, 185),
        "eyes": (240, 170, 20),
        "outfit": (90, 30, 120),
        "accent": (60, 200, 200),
    },
    {
        "skin": (255, 235, 225),
        "hair": (230, 60, 40),
        "eyes": (30, 130, 130),
        "outfit": (240, 240, 240),
        "accent": (30, 60, 200),
    },
    {
        "skin": (180, 130, 100),
        "hair": (60, 150, 70),
        "eyes": (250, 120, 160),
        "outfit": (30, 30, 40),
        "accent": (250, 250, 120),
    },
)
SHAPES = ("round", "tall", "wide", "spiky", "round", "tall", "wide", "spiky")
POSE_NAMES = (
    "front",
    "three_quarter_left",
    "side_left",
    "back",
    "three_quarter_right",
    "side_right",
    "action",
    "expression",
)


VIEWS = ("front", "three_quarter", "side", "back")


def draw_character(
    size: int = 256,
    center: tuple[float, float] = (0.5, 0.5),
    palette: Palette | None = None,
    shape: str = "round",
    pose: float = 0.0,
    scale: float = 1.0,
    background: tuple[int, int, int] = BACKGROUND,
    view: str = "front",
    arms: float | None = None,
    expression: bool = False,
) -> Image.Image:
    """Draw one character on a plain background; `center` is in fractions of `size`, `pose` in [-1, 1]
    turns the head (eyes and hair shift sideways) and swings the arms. `view` "side" shows one eye,
    "back" only hair where the face was; `arms` (degrees from hanging down) overrides the swing;
    `expression` closes the eyes into arcs and opens the mouth."""
    if view not in VIEWS:
        raise ValueError(f"`view` must be one of {', '.join(VIEWS)}, got {view!r}.")
    palette = palette or PALETTES[0]
    img = Image.new("RGB", (size, size), background)
    d = ImageDraw.Draw(img)
    u = size / 256.0 * scale
    cx, cy = center[0] * size, center[1] * size
    head_r = {"round": 34, "tall": 28, "wide": 40, "spiky": 32}.get(shape, 34) * u
    head_h = {"tall": 1.25, "wide": 0.85}.get(shape, 1.0) * head_r
    if view == "side":
        head_r *= 0.85
    hy = cy - 22 * u
    # body and arms
    bw, bh = 30 * u, 44 * u
    if view == "side":
        bw *= 0.7
    d.rounded_rectangle(
        (cx - bw, hy + head_h * 0.8, cx + bw, hy + head_h * 0.8 + bh), radius=10 * u, fill=palette["outfit"]
    )
    d.rectangle((cx - bw, hy + head_h * 0.8 + 18 * u, cx + bw, hy + head_h * 0.8 + 24 * u), fill=palette["accent"])
    for side in (-1, 1):
        angle = math.radians(arms if arms is not None else 25 + 35 * pose * side)
        x0, y0 = cx + side * bw, hy + head_h * 0.8 + 8 * u
        x1, y1 = x0 + side * 34 * u * math.sin(angle), y0 + 34 * u * math.cos(angle)
        d.line((x0, y0, x1, y1), fill=palette["outfit"], width=max(1, int(10 * u)))
        d.ellipse((x1 - 6 * u, y1 - 6 * u, x1 + 6 * u, y1 + 6 * u), fill=palette["skin"])
    # hair behind, head, hair fringe in front
    d.ellipse((cx - head_r * 1.12, hy - head_h * 1.12, cx + head_r * 1.12, hy + head_h * 1.05), fill=palette["hair"])
    if view == "back":  # only hair and a sliver of neck: no face
        d.rectangle((cx - 6 * u, hy + head_h * 0.95, cx + 6 * u, hy + head_h * 1.1), fill=palette["skin"])
        return img
    d.ellipse((cx - head_r, hy - head_h, cx + head_r, hy + head_h), fill=palette["skin"])
    shift = pose * head_r * 0.35
    fringe = [
        (cx - head_r * 1.1 + shift, hy - head_h * 0.25),
        (cx - head_r * 0.9 + shift, hy - head_h * 1.1),
        (cx + head_r * 0.9 + shift, hy - head_h * 1.1),
        (cx + head_r * 1.1 + shift, hy - head_h * 0.25),
        (cx + shift, hy - head_h * 0.55),
    ]
    d.polygon(fringe, fill=palette["hair"])
    if shape == "spiky":
        for k in range(5):
            x = cx - head_r + k * head_r / 2 + shift
            d.polygon(
                [(x - 8 * u, hy - head_h * 0.9), (x, hy - head_h * 1.55), (x + 8 * u, hy - head_h * 0.9)],
                fill=palette["hair"],
            )
    # eyes: iris, pupil, highlight (or closed arcs); mouth
    ex, ey, er = head_r * 0.42, hy + head_h * 0.1, head_r * 0.22
    sides = (1,) if view == "side" and pose >= 0 else (-1,) if view == "side" else (-1, 1)
    for side in sides:
        x = cx + side * ex + shift
        if expression:
            d.arc((x - er, ey - er, x + er, ey + er), 200, 340, fill=(20, 20, 30), width=max(1, int(3 * u)))
            continue
        d.ellipse((x - er, ey - er * 1.35, x + er, ey + er * 1.35), fill=palette["eyes"])
        d.ellipse((x - er * 0.45, ey - er * 0.5, x + er * 0.45, ey + er * 0.7), fill=(20, 20, 30))
        d.ellipse((x - er * 0.6, ey - er * 1.0, x - er * 0.05, ey - er * 0.45), fill=(255, 255, 255))
    if expression:
        d.ellipse((cx - 7 * u + shift, hy + head_h * 0.42, cx + 7 * u + shift, hy + head_h * 0.72), fill=(150, 60, 60))
    else:
        d.arc(
            (cx - 8 * u + shift, hy + head_h * 0.45, cx + 8 * u + shift, hy + head_h * 0.7),
            20,
            160,
            fill=(150, 60, 60),
            width=max(1, int(2 * u)),
        )
    return img


def loop_frames(
    n: int = 16,
    size: int = 256,
    palette: Palette | None = None,
    shape: str = "round",
    radius: float = 0.16,
    turns: float = 1.0,
) -> list[Image.Image]:
    """`n` frames of the character moving on a circular path (and swinging its arms); with `turns=1`
    frame n would equal frame 0, so played in a loop the seam is an ordinary step."""
    frames = []
    for i in range(n):
        a = 2 * math.pi * turns * i / n
        frames.append(
            draw_character(
                size, (0.5 + radius * math.cos(a), 0.5 + radius * math.sin(a)), palette, shape, pose=math.sin(a)
            )
        )
    return frames


# The eight views of a character sheet (the phase's POSES), as drawing arguments.
SHEET_VIEWS: tuple[dict, ...] = (
    {"view": "front"},
    {"view": "three_quarter", "pose": -0.5},
    {"view": "side", "pose": -1.0},
    {"view": "back"},
    {"view": "three_quarter", "pose": 0.5},
    {"view": "side", "pose": 1.0},
    {"view": "front", "pose": 0.3, "arms": 150},
    {"view": "front", "expression": True, "scale": 1.3},
)


def character_poses(
    n: int = 8, size: int = 256, palette: Palette | None = None, shape: str = "round", seed: int | None = None
) -> list[Image.Image]:
    """`n` renders of one character in the sheet's views (front, three-quarter, side, back, action,
    expression), at slightly different offsets and scales; `seed` varies those offsets and scales."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        kw = dict(SHEET_VIEWS[i % len(SHEET_VIEWS)])
        jitter = rng.uniform(-1, 1, 3) if seed is not None else np.zeros(3)
        center = (0.5 + 0.06 * jitter[0], 0.52 + 0.04 * jitter[1])
        kw["scale"] = kw.get("scale", 1.0) * (0.95 + 0.08 * jitter[2])
        out.append(draw_character(size, center, palette, shape, **kw))
    return out


def different_characters(n: int = 8, size: int = 256) -> list[Image.Image]:
    """`n` different characters: a different palette and head shape each."""
    return [
        draw_character(
            size,
            (0.5, 0.52),
            PALETTES[i % len(PALETTES)],
            SHAPES[(i * 3 + 1) % len(SHAPES)],
            pose=0.3 * ((i % 3) - 1),
            scale=0.8 + 0.1 * (i % 4),
        )
        for i in range(n)
    ]


SKIN_TONES = ((252, 224, 206), (240, 200, 170), (255, 230, 215), (200, 150, 120))


def _colour(rng: np.random.Generator, avoid: tuple = (), distance: float = 90.0) -> tuple[int, int, int]:
    """A random saturated-ish colour at least `distance` (RGB Euclidean) from each colour in `avoid`."""
    for _ in range(1000):
        c = tuple(int(v) for v in rng.integers(20, 236, 3))
        if max(c) - min(c) > 60 and all(math.dist(c, a) >= distance for a in avoid):
            return c
    raise RuntimeError("no colour far enough from the others")  # unreachable with a handful of colours to avoid


def random_character(seed: int, like: tuple[Palette, str] | None = None) -> tuple[Palette, str]:
    """A seeded random character (palette, head shape). With `like`, a *different* character drawn in
    the same style: same skin and head shape, but hair, eyes, outfit and accent far from `like`'s."""
    rng = np.random.default_rng(seed)
    if like is None:
        skin = SKIN_TONES[int(rng.integers(len(SKIN_TONES)))]
        shape = SHAPES[int(rng.integers(4))]
        taken: tuple = (skin, BACKGROUND)
    else:
        skin, shape = like[0]["skin"], like[1]
        taken = (skin, BACKGROUND) + tuple(v for k, v in like[0].items() if k != "skin")
    palette: Palette = {"skin": skin}
    for part in ("hair", "eyes", "outfit", "accent"):
        palette[part] = _colour(rng, taken)
        taken = taken + (palette[part],)
    return palette, shape


def motion_frames(
    n: int,
    size: int,
    character: tuple[Palette, str] | None = None,
    path: str = "circle",
    cycle: float = 1.0,
    amplitude: float = 1.0,
) -> list[Image.Image]:
    """`n` frames of a character moving along `path`: "circle" (round path, arms swing), "sway" (side
    to side, head turning), "bob" (up and down, arms waving), covering `cycle` of the motion's period.
    With `cycle=1` frame n would equal frame 0: played in a loop the seam is an ordinary step; 0.75
    stops short (the seam jumps back), 0.5 is a video that goes somewhere."""
    palette, shape = character or (PALETTES[0], "round")
    frames = []
    for i in range(n):
        a = 2 * math.pi * i / n * cycle
        if path == "circle":
            center, pose = (0.5 + 0.16 * amplitude * math.cos(a), 0.5 + 0.16 * amplitude * math.sin(a)), math.sin(a)
        elif path == "sway":
            center, pose = (0.5 + 0.12 * amplitude * math.sin(a), 0.52), 0.8 * math.sin(a)
        elif path == "bob":
            center, pose = (0.5, 0.52 + 0.08 * amplitude * math.sin(a)), math.cos(a)
        else:
            raise ValueError(f"`path` must be circle, sway or bob, got {path!r}.")
        frames.append(draw_character(size, center, palette, shape, pose=pose))
    return frames


def sheet_image(poses: list[Image.Image], columns: int = 4) -> Image.Image:
    """Tile poses into a grid, the way the character-sheet phase writes `sheet.png`."""
    w, h = poses[0].size
    rows = math.ceil(len(poses) / columns)
    sheet = Image.new("RGB", (columns * w, rows * h), BACKGROUND)
    for i, p in enumerate(poses):
        sheet.paste(p.convert("RGB").resize((w, h)), ((i % columns) * w, (i // columns) * h))
    return sheet


# ----------------------------------------------------------------------------- degradations


def with_flicker(frames: list[Image.Image], amplitude: int = 40) -> list[Image.Image]:
    """Alternate the brightness of every other frame by +/- `amplitude` grey levels."""
    out = []
    for i, f in enumerate(frames):
        a = np.asarray(f.convert("RGB"), dtype=np.int16) + (amplitude if i % 2 else -amplitude)
        out.append(Image.fromarray(np.clip(a, 0, 255).astype(np.uint8)))
    return out


def blurred(images: list[Image.Image], radius: float = 4.0) -> list[Image.Image]:
    return [im.filter(ImageFilter.GaussianBlur(radius)) for im in images]


def frozen(frames: list[Image.Image]) -> list[Image.Image]:
    """Every frame a copy of the first: a video that does not move."""
    return [frames[0].copy() for _ in frames]


def broken_seam(frames: list[Image.Image]) -> list[Image.Image]:
    """The second half played backwards: the loop jumps half a cycle at the seam."""
    h = len(frames) // 2
    return list(frames[:h]) + list(frames[h:])[::-1]


def shuffled(frames: list[Image.Image], seed: int = 0) -> list[Image.Image]:
    order = np.random.default_rng(seed).permutation(len(frames))
    return [frames[i] for i in order]


def blank(n: int = 8, size: int = 256, colour: tuple[int, int, int] = (0, 0, 0)) -> list[Image.Image]:
    return [Image.new("RGB", (size, size), colour) for _ in range(n)]


def with_noise(images: list[Image.Image], sigma: float = 45.0, seed: int = 0) -> list[Image.Image]:
    """Additive Gaussian noise of `sigma` grey levels, independent per pixel and channel."""
    rng = np.random.default_rng(seed)
    return [
        Image.fromarray(
            np.clip(
                np.asarray(im.convert("RGB"), dtype=np.float32) + rng.normal(0, sigma, (im.height, im.width, 3)), 0, 255
            ).astype(np.uint8)
        )
        for im in images
    ]


def hue_shifted(image: Image.Image, degrees: float) -> Image.Image:
    """Rotate the hue of every pixel by `degrees` (the outline and grey stay put)."""
    hsv = np.asarray(image.convert("RGB").convert("HSV"), dtype=np.int16).copy()
    hsv[..., 0] = (hsv[..., 0] + round(degrees / 360 * 256)) % 256
    return Image.fromarray(hsv.astype(np.uint8), "HSV").convert("RGB")


def palette_drift(frames: list[Image.Image], degrees: float = 120.0) -> list[Image.Image]:
    """The colours drift: frame t has its hue rotated by `degrees` * t / (T - 1)."""
    return [hue_shifted(f, degrees * t / max(1, len(frames) - 1)) for t, f in enumerate(frames)]


def jittered(
    n: int, size: int, character: tuple[Palette, str] | None = None, seed: int = 0, amount: float = 0.1
) -> list[Image.Image]:
    """The character jumps about at random, frame to frame, in place (±`amount` of the size) and pose."""
    palette, shape = character or (PALETTES[0], "round")
    rng = np.random.default_rng(seed)
    return [
        draw_character(
            size,
            (0.5 + amount * rng.uniform(-1, 1), 0.52 + amount * rng.uniform(-1, 1)),
            palette,
            shape,
            pose=rng.uniform(-1, 1),
        )
        for _ in range(n)
    ]


def drifting(frames: list[Image.Image], shift: float = 0.2) -> list[Image.Image]:
    """The whole picture slides sideways, frame t by `shift` * t / (T - 1) of the width (the subject
    wanders off): each step is smooth, but a loop jumps back by `shift` at its seam."""
    out = []
    for t, f in enumerate(frames):
        a = np.asarray(f.convert("RGB"))
        dx = round(shift * a.shape[1] * t / max(1, len(frames) - 1))
        moved = np.empty_like(a)
        moved[:] = np.asarray(BACKGROUND, dtype=np.uint8)
        moved[:, dx:] = a[:, : a.shape[1] - dx]
        out.append(Image.fromarray(moved))
    return out


def stuttered(frames: list[Image.Image]) -> list[Image.Image]:
    """Every other frame dropped and the previous one held: the motion moves in double steps with pauses."""
    return [frames[t - t % 2] for t in range(len(frames))]


def faded_to_black(frames: list[Image.Image], start: float = 0.5, floor: float = 0.05) -> list[Image.Image]:
    """From `start` (fraction of the clip) the frames darken linearly down to `floor` of their brightness."""
    n, first = len(frames), int(len(frames) * start)
    out = list(frames[:first])
    for t in range(first, n):
        k = 1 - (1 - floor) * (t - first + 1) / (n - first)
        out.append(Image.fromarray((np.asarray(frames[t].convert("RGB"), dtype=np.float32) * k).astype(np.uint8)))
    return out


def squashed(images: list[Image.Image], factor: float = 0.5) -> list[Image.Image]:
    """Content squeezed horizontally by `factor` and centred on the background: the wrong aspect ratio."""
    out = []
    for im in images:
        w, h = im.size
        canvas = Image.new("RGB", (w, h), BACKGROUND)
        small = im.convert("RGB").resize((max(1, round(w * factor)), h), Image.BILINEAR)
        canvas.paste(small, ((w - small.width) // 2, 0))
        out.append(canvas)
    return out


def occluded(
    images: list[Image.Image], fraction: float = 0.45, colour: tuple[int, int, int] = (90, 90, 90), every: int = 1
) -> list[Image.Image]:
    """A grey block covers the top `fraction` of every `every`-th image's centre (a head hidden behind
    an artefact): the character is partly missing."""
    out = []
    for i, im in enumerate(images):
        im = im.convert("RGB").copy()
        if i % every == 0:
            w, h = im.size
            ImageDraw.Draw(im).rectangle((w * 0.2, 0, w * 0.8, h * fraction), fill=colour)
        out.append(im)
    return out


def posterized(images: list[Image.Image], bits: int = 2) -> list[Image.Image]:
    """Colour banding: each channel quantised to `bits` bits (4 levels for 2)."""
    from PIL import ImageOps

    return [ImageOps.posterize(im.convert("RGB"), bits) for im in images]


# ----------------------------------------------------------------------------- demo runs


def make_demo_run(
    output_dir: str | Path, phase: int | str = 2, size: int = 128, frame_count: int | None = None
) -> Path:
    """Write a synthetic run directory in the layout the phase functions write (PNGs + manifest.json),
    so the quality notebook can be tried without generating anything. Returns `output_dir`."""
    from ..manifest import utc_now, versions, write_manifest
    from ..phases import get_phase

    ph = get_phase(phase)
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)

    def save(img: Image.Image, rel: str) -> str:
        (out / rel).parent.mkdir(parents=True, exist_ok=True)
        img.save(out / rel)
        return rel

    if ph.id == 1:
        poses = character_poses(8, size)
        outputs = {
            "sheet": save(sheet_image(poses), "sheet.png"),
            "poses": [save(p, f"poses/pose_{i + 1:02d}_{POSE_NAMES[i]}.png") for i, p in enumerate(poses)],
            "reference": save(poses[0], "reference.png"),
        }
    elif ph.id == 2:
        n = frame_count or 16
        frames = loop_frames(n, size)
        outputs = {
            "frames": [save(f, f"frames/frame_{i:03d}.png") for i, f in enumerate(frames)],
            "fps": 8,
            "frame_count": n,
            "duration_seconds": n / 8,
            "reference": save(sheet_image(character_poses(8, size // 2)), "reference.png"),
        }
    else:
        n = frame_count or 24
        frames = loop_frames(n, size, turns=0.5)
        outputs = {
            "source_image": save(frames[0], "source.png"),
            "frames": [save(f, f"frames/frame_{i:03d}.png") for i, f in enumerate(frames)],
            "fps": 24,
            "frame_count": n,
            "duration_seconds": n / 24,
        }
    write_manifest(
        out,
        {
            "animenb_version": versions().get("animenb", "0"),
            "created_at": utc_now(),
            "phase": {"id": ph.id, "name": ph.name},
            "parameters": {"synthetic": True},
            "seed": 0,
            "models": {"profile": "synthetic"},
            "outputs": outputs,
        },
    )
    return out
