"""Families of the gate suite drawn by the scene generator (animenb/quality/scenes.py): each family is one
style of output (line art or flat colour, a kind of background, a subject scale, a kind of motion, a kind
of sheet), with its good outputs and the same failure modes applied to them.

Which families set the floors and which only report is decided in animenb/quality/validity.py (FAMILIES).
A family is a `Drawer` (how to draw a sheet, a loop and a video of character `who` of a seed); `modes`
turns any drawer into the same good outputs and failure modes, so every generator is broken the same ways.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

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


class Drawer(Protocol):
    """What a family draws. `who` 0 is the seed's character, k > 0 the k-th different one in the same style."""

    def poses(self, seed: int, size: int, who: int = 0) -> list[Image.Image]: ...

    def loop(self, seed: int, size: int, who: int = 0, *, cut: float = 1.0, wobble: float = 0.0) -> list[Image.Image]:
        """A loop; `cut` < 1 stops the cycle short (an open seam), `wobble` makes the subject jump about."""

    def video(
        self, seed: int, size: int, who: int = 0, *, shift: int = 0, wobble: float = 0.0, subject: bool = True
    ) -> list[Image.Image]:
        """A video; `shift` another background, `subject=False` the same shot with nobody in it."""


@dataclass(frozen=True)
class SceneDrawer:
    """Characters of animenb/quality/scenes.py drawn in one `Style`."""

    style: Style

    def _look(self, seed: int, who: int) -> C.Look:
        own = C.random_look(seed, outline=self.style.outline)
        return own if who == 0 else C.random_look(20_000 + 101 * seed + who, like=own)

    def _background(self, seed: int, shift: int = 0) -> str:
        return self.style.backgrounds[(seed + shift) % len(self.style.backgrounds)]

    def poses(self, seed: int, size: int, who: int = 0) -> list[Image.Image]:
        st = self.style
        return C.sheet_poses(size, self._look(seed, who), self._background(seed), seed, st.sheet, st.scale)

    def loop(self, seed: int, size: int, who: int = 0, *, cut: float = 1.0, wobble: float = 0.0) -> list[Image.Image]:
        st = self.style
        return C.walk(
            LOOP_FRAMES,
            size,
            self._look(seed, who),
            self._background(seed),
            seed,
            cycles=cut,
            pan=st.loop_pan if cut == 1 else 0.0,
            swing=st.swing,
            scale=st.scale,
            wobble=wobble,
        )

    def video(
        self, seed: int, size: int, who: int = 0, *, shift: int = 0, wobble: float = 0.0, subject: bool = True
    ) -> list[Image.Image]:
        st = self.style
        return C.walk(
            VIDEO_FRAMES,
            size,
            self._look(seed, who),
            self._background(seed, shift),
            seed + shift,
            cycles=st.cycles,
            travel=st.travel,
            pan=st.pan,
            zoom=st.zoom,
            swing=st.swing,
            scale=st.scale,
            wobble=wobble,
            subject=subject,
        )


def _blur_radius(size: int) -> float:
    return 4.0 * size / 128


def modes(d: Drawer) -> Modes:
    """Good outputs and broken twins of the three phases, drawn by `d`."""

    def sheet(images: list[Image.Image], seed: int, size: int) -> Inputs:
        return {"poses": images, "reference": d.poses(seed, size)[0]}

    def mixed(seed: int, size: int, owners: list[int]) -> list[Image.Image]:
        sets = {k: d.poses(seed, size, k) for k in set(owners)}
        return [sets[k][i] for i, k in enumerate(owners)]

    def loop_inputs(frames: list[Image.Image], seed: int, size: int) -> Inputs:
        return {"frames": frames, "reference": S.sheet_image(d.poses(seed, max(32, size // 2)))}

    def video_inputs(frames: list[Image.Image], seed: int, size: int) -> Inputs:
        return {"frames": frames, "source_image": d.video(seed, size)[0]}

    def switched(a: list[Image.Image], b: list[Image.Image]) -> list[Image.Image]:
        return list(a[: len(a) // 2]) + list(b[len(b) // 2 :])

    sheet_modes = {
        "good": lambda seed, size: sheet(d.poses(seed, size), seed, size),
        "good_grain": lambda seed, size: sheet(S.with_noise(d.poses(seed, size), 5.0, seed), seed, size),
        "different_characters": lambda seed, size: sheet(mixed(seed, size, [1, 2, 3, 4, 5, 6, 7, 8]), seed, size),
        "one_stranger": lambda seed, size: sheet(mixed(seed, size, [0, 0, 0, 0, 0, 1, 0, 0]), seed, size),
        "noisy": lambda seed, size: sheet(S.with_noise(d.poses(seed, size), 45, seed), seed, size),
        "blurred": lambda seed, size: sheet(S.blurred(d.poses(seed, size), _blur_radius(size)), seed, size),
        # the same four pictures twice, the second time reframed a little (a generator's near-duplicates)
        "repeated_poses": lambda seed, size: sheet(
            d.poses(seed, size)[:4] + [C.zoomed(p, 1.05) for p in d.poses(seed, size)[:4]], seed, size
        ),
    }
    loop_modes = {
        "good": lambda seed, size: loop_inputs(d.loop(seed, size), seed, size),
        "good_grain": lambda seed, size: loop_inputs(S.with_noise(d.loop(seed, size), 5.0, seed), seed, size),
        "open_seam": lambda seed, size: loop_inputs(d.loop(seed, size, cut=0.6), seed, size),
        "jitter": lambda seed, size: loop_inputs(d.loop(seed, size, wobble=0.08), seed, size),
        "palette_drift": lambda seed, size: loop_inputs(S.palette_drift(d.loop(seed, size)), seed, size),
        "noisy": lambda seed, size: loop_inputs(S.with_noise(d.loop(seed, size), 45, seed), seed, size),
        "blurred": lambda seed, size: loop_inputs(S.blurred(d.loop(seed, size), _blur_radius(size)), seed, size),
        "character_switch": lambda seed, size: loop_inputs(
            switched(d.loop(seed, size), d.loop(seed, size, 1)), seed, size
        ),
    }
    video_modes = {
        "good": lambda seed, size: video_inputs(d.video(seed, size), seed, size),
        "good_grain": lambda seed, size: video_inputs(S.with_noise(d.video(seed, size), 5.0, seed), seed, size),
        "frozen": lambda seed, size: video_inputs(S.frozen(d.video(seed, size)), seed, size),
        "scene_cut": lambda seed, size: video_inputs(
            switched(d.video(seed, size), d.video(seed, size, 1, shift=1)), seed, size
        ),
        "vanishing_subject": lambda seed, size: video_inputs(
            switched(d.video(seed, size), d.video(seed, size, subject=False)), seed, size
        ),
        "noisy": lambda seed, size: video_inputs(S.with_noise(d.video(seed, size), 45, seed), seed, size),
        "blurred": lambda seed, size: video_inputs(S.blurred(d.video(seed, size), _blur_radius(size)), seed, size),
        "jitter": lambda seed, size: video_inputs(d.video(seed, size, wobble=0.08), seed, size),
        "palette_drift": lambda seed, size: video_inputs(S.palette_drift(d.video(seed, size)), seed, size),
        "source_mismatch": lambda seed, size: {
            "frames": d.video(seed, size, 1),
            "source_image": d.video(seed, size)[0],
        },
    }
    return {"CHARACTER_SHEET": sheet_modes, "ANIMATION_LOOP": loop_modes, "FULL_VIDEO": video_modes}
