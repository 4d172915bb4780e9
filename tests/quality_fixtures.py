"""Shared synthetic inputs for tests/test_quality_*.py (built once per session, at 128 px)."""
from __future__ import annotations

from functools import lru_cache

import numpy as np

from animenb.quality import metrics as M
from animenb.quality import synthetic as S

SIZE = 128


@lru_cache(maxsize=None)
def good_loop() -> tuple:
    return tuple(S.loop_frames(16, SIZE))


@lru_cache(maxsize=None)
def loop_variants() -> dict:
    good = list(good_loop())
    return {"broken_seam": S.broken_seam(good), "open_arc": S.loop_frames(16, SIZE, turns=0.5),
            "shuffled": S.shuffled(good), "flicker": S.with_flicker(good), "blurred": S.blurred(good, 3),
            "frozen": S.frozen(good), "blank": S.blank(16, SIZE)}


@lru_cache(maxsize=None)
def same_character() -> tuple:
    return tuple(S.character_poses(8, SIZE))


@lru_cache(maxsize=None)
def different_characters() -> tuple:
    return tuple(S.different_characters(8, SIZE))


@lru_cache(maxsize=None)
def sheet_reference():
    return S.sheet_image(S.character_poses(8, SIZE // 2))


@lru_cache(maxsize=None)
def video() -> tuple:
    return tuple(S.loop_frames(24, SIZE, turns=0.5))


def arrays(images) -> list[np.ndarray]:
    return [M.as_array(im) for im in images]


def palette_embed(images) -> np.ndarray:
    """A stand-in image encoder for tests: the foreground palette histogram as the feature vector."""
    return np.stack([M.palette(M.as_array(im)) for im in images])
