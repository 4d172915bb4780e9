"""Families of the gate suite drawn by the scene generator (animenb/quality/scenes.py): each family is one
style of output (line art or flat colour, a kind of background, a subject scale, a kind of motion, a kind
of sheet), with its good outputs and the same failure modes applied to them.

Which families set the floors and which only report is decided in animenb/quality/validity.py (FAMILIES).
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from PIL import Image

from . import scenes as C
from . import synthetic as S

Inputs = dict[str, object]
Modes = dict[str, dict[str, Callable[[int, int], Inputs]]]
LOOP_FRAMES, VIDEO_FRAMES = 16, 24


@dataclass(frozen=True)
class Style:
    """How one family draws: `backgrounds` (one per seed, cycled), line art or flat (`outline`), subject
    `scale`, the loop's camera `loop_pan`, the video's `travel` / `pan` / `zoom`, the walk's `swing` and
    `cycles` per video, and the sheet's pose set `sheet` (scenes.SHEET_POSES)."""
    backgrounds: tuple[str, ...]
    outline: bool | None = None
    scale: float = 1.0
    loop_pan: float = 0.0
    travel: float = 0.3
    pan: float = 0.0
    zoom: float = 1.0
    swing: float = 1.0
    cycles: float = 1.5
    sheet: str = "views"


def _look(seed: int, style: Style) -> C.Look:
    return C.random_look(seed, outline=style.outline)


def _other(seed: int, style: Style, k: int = 0) -> C.Look:
    return C.random_look(20_000 + 101 * seed + k, like=_look(seed, style))


def _background(seed: int, style: Style, shift: int = 0) -> str:
    return style.backgrounds[(seed + shift) % len(style.backgrounds)]


def _blur_radius(size: int) -> float:
    return 4.0 * size / 128


def modes(style: Style) -> Modes:
    """Good outputs and broken twins of the three phases for one `style`."""

    def poses(seed: int, size: int, look: C.Look | None = None) -> list[Image.Image]:
        return C.sheet_poses(size, look or _look(seed, style), _background(seed, style), seed, style.sheet, style.scale)

    def sheet(images: list[Image.Image], seed: int, size: int) -> Inputs:
        return {"poses": images, "reference": poses(seed, size)[0]}

    def mixed(seed: int, size: int, owners: list[int]) -> list[Image.Image]:
        sets = {k: poses(seed, size, None if k == 0 else _other(seed, style, k)) for k in set(owners)}
        return [sets[k][i] for i, k in enumerate(owners)]

    def loop(seed: int, size: int, look: C.Look | None = None, **kw) -> list[Image.Image]:
        args = dict(cycles=1, pan=style.loop_pan, swing=style.swing, scale=style.scale) | kw
        return C.walk(LOOP_FRAMES, size, look or _look(seed, style), _background(seed, style), seed, **args)

    def loop_inputs(frames: list[Image.Image], seed: int, size: int) -> Inputs:
        return {"frames": frames, "reference": S.sheet_image(poses(seed, max(32, size // 2)))}

    def video(seed: int, size: int, look: C.Look | None = None, shift: int = 0, **kw) -> list[Image.Image]:
        args = dict(cycles=style.cycles, travel=style.travel, pan=style.pan, zoom=style.zoom, swing=style.swing,
                    scale=style.scale) | kw
        return C.walk(VIDEO_FRAMES, size, look or _look(seed, style), _background(seed, style, shift), seed + shift,
                      **args)

    def video_inputs(frames: list[Image.Image], seed: int, size: int) -> Inputs:
        return {"frames": frames, "source_image": video(seed, size)[0]}

    def switched(a: list[Image.Image], b: list[Image.Image]) -> list[Image.Image]:
        return list(a[:len(a) // 2]) + list(b[len(b) // 2:])

    sheet_modes = {
        "good": lambda seed, size: sheet(poses(seed, size), seed, size),
        "good_grain": lambda seed, size: sheet(S.with_noise(poses(seed, size), 5.0, seed), seed, size),
        "different_characters": lambda seed, size: sheet(mixed(seed, size, [1, 2, 3, 4, 5, 6, 7, 8]), seed, size),
        "one_stranger": lambda seed, size: sheet(mixed(seed, size, [0, 0, 0, 0, 0, 1, 0, 0]), seed, size),
        "noisy": lambda seed, size: sheet(S.with_noise(poses(seed, size), 45, seed), seed, size),
        "blurred": lambda seed, size: sheet(S.blurred(poses(seed, size), _blur_radius(size)), seed, size),
        # the same four pictures twice, the second time reframed a little (a generator's near-duplicates)
        "repeated_poses": lambda seed, size: sheet(poses(seed, size)[:4] + [C.zoomed(p, 1.05) for p in poses(seed, size)[:4]],
                                                   seed, size),
    }
    loop_modes = {
        "good": lambda seed, size: loop_inputs(loop(seed, size), seed, size),
        "good_grain": lambda seed, size: loop_inputs(S.with_noise(loop(seed, size), 5.0, seed), seed, size),
        "open_seam": lambda seed, size: loop_inputs(loop(seed, size, cycles=0.6, pan=0.0), seed, size),
        "jitter": lambda seed, size: loop_inputs(loop(seed, size, wobble=0.08), seed, size),
        "palette_drift": lambda seed, size: loop_inputs(S.palette_drift(loop(seed, size)), seed, size),
        "noisy": lambda seed, size: loop_inputs(S.with_noise(loop(seed, size), 45, seed), seed, size),
        "blurred": lambda seed, size: loop_inputs(S.blurred(loop(seed, size), _blur_radius(size)), seed, size),
        "character_switch": lambda seed, size: loop_inputs(
            switched(loop(seed, size), loop(seed, size, _other(seed, style))), seed, size),
    }
    video_modes = {
        "good": lambda seed, size: video_inputs(video(seed, size), seed, size),
        "good_grain": lambda seed, size: video_inputs(S.with_noise(video(seed, size), 5.0, seed), seed, size),
        "frozen": lambda seed, size: video_inputs(S.frozen(video(seed, size)), seed, size),
        "scene_cut": lambda seed, size: video_inputs(
            switched(video(seed, size), video(seed, size, _other(seed, style), shift=1)), seed, size),
        "vanishing_subject": lambda seed, size: video_inputs(
            switched(video(seed, size), video(seed, size, subject=False)), seed, size),
        "noisy": lambda seed, size: video_inputs(S.with_noise(video(seed, size), 45, seed), seed, size),
        "blurred": lambda seed, size: video_inputs(S.blurred(video(seed, size), _blur_radius(size)), seed, size),
        "jitter": lambda seed, size: video_inputs(video(seed, size, wobble=0.08), seed, size),
        "palette_drift": lambda seed, size: video_inputs(S.palette_drift(video(seed, size)), seed, size),
        "source_mismatch": lambda seed, size: {"frames": video(seed, size, _other(seed, style)),
                                               "source_image": video(seed, size)[0]},
    }
    return {"CHARACTER_SHEET": sheet_modes, "ANIMATION_LOOP": loop_modes, "FULL_VIDEO": video_modes}
