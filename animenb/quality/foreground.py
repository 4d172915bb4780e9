"""The character's region in every pose of a sheet, found across the poses rather than in each one alone.

One picture on a busy background (a street, a painted scene) cannot say which colours are the subject's:
a building that does not reach the border brings colours of its own, just as the character does
(metrics.foreground_mask keeps it, and drops the character's colours that resemble the border's). A sheet
has eight pictures of one scene in which the character is drawn again each time, in another pose and a
little elsewhere: what changes from pose to pose is the character. So a colour is the character's when a
fair share of its pixels differ from the poses' consensus (the per-pixel median), and the scene's when it
stays put. A building keeps all but the thin strip the character uncovers; a sleeve or a face moves
with the arm or the head, and where it does not (the torso's middle) it is still one of the colours that
move elsewhere.

This holds only when the poses share their background pixel for pixel (one scene, a still camera). Where
they do not (each pose a new picture), or where each pose is plain (the border colour finds the figure
exactly), each pose's own `foreground_mask` is used.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from . import metrics as M

# A colour is the character's when at least this share of its pixels, over all poses, differ from the
# consensus. Chosen on the calibration scenes only (gradients and walls, six good sheets), the middle of the
# best run: mean foreground IoU 0.95 at 0.05, 1.0 at 0.10-0.15, 0.92 at 0.20, 0.58 at 0.25 (the still
# middle of the torso is lost).
MOVING_SHARE = 0.125
# The poses share a background when none differs from the consensus on more than this share of its pixels:
# on the calibration scenes a pose differs on at most 15% (its character, and where the others stand); a
# pose drawn on a street of its own differs on 37-49%, on another kind of scene on 45-87%.
SHARED_LIMIT = 0.35


def changed_pixels(images: Sequence[np.ndarray], tolerance: float = 30.0) -> np.ndarray:
    """Per image, the pixels whose max-channel distance to the images' per-pixel median exceeds
    `tolerance` (N x H x W booleans): where that image is not what most of them show."""
    stack = np.stack([np.asarray(a, dtype=np.int16) for a in images])
    consensus = np.median(stack, axis=0)
    return np.abs(stack - consensus).max(axis=3) > tolerance


def moving_colours(
    images: Sequence[np.ndarray], changed: np.ndarray, share: float = MOVING_SHARE, step: int = 16
) -> list[np.ndarray]:
    """Per image, the pixels whose colour (RGB cells of `step` levels) is one that moves: at least `share`
    of that colour's pixels, over all images, are `changed`."""
    cells = 256 // step
    q = np.stack([np.asarray(a, dtype=np.int32) // step for a in images])
    index = (q[..., 0] * cells + q[..., 1]) * cells + q[..., 2]
    total = np.bincount(index.ravel(), minlength=cells**3)
    moved = np.bincount(index[changed], minlength=cells**3)
    moving = moved >= np.maximum(1.0, share * total)
    return [moving[i] for i in index]


def sheet_masks(
    images: Sequence[np.ndarray], tolerance: float = 30.0, share: float = MOVING_SHARE, min_fraction: float = 0.005
) -> list[np.ndarray]:
    """The character's mask in each pose of a sheet (HxWx3 uint8 arrays): the colours that move from pose
    to pose (`moving_colours`) when the poses share one busy background, else each pose's own
    `metrics.foreground_mask`. A pose whose mask would be under `min_fraction` of it keeps its own."""
    own = [M.foreground_mask(a, tolerance) for a in images]
    shapes = {np.shape(a) for a in images}
    if len(images) < 3 or len(shapes) > 1 or all(M.plain_background(a, tolerance) for a in images):
        return own
    changed = changed_pixels(images, tolerance)
    if changed.mean(axis=(1, 2)).max() > SHARED_LIMIT:
        return own
    masks = moving_colours(images, changed, share)
    return [m if m.mean() >= min_fraction else o for m, o in zip(masks, own)]
