"""Whether one pose of a sheet is another pose's picture again, reframed: shifted, zoomed or turned a little.

A generator's near-duplicate is the same picture taken again a few percent closer or further aside. One
similarity transform (shift, scale, rotation) then takes the whole picture onto the other one, and what it
leaves is resampling noise, thin and scattered along the lines. A pose that really differs (an arm raised,
the head tilted, another facing) cannot be explained by one transform of the whole picture: it leaves one
coherent blob where the arm or the head was. So per pair of poses: ORB keypoints matched across the two
pictures, a RANSAC similarity fit (cv2.estimateAffinePartial2D), the second picture warped onto the first, and
the largest connected blob of what still differs, relative to the figure (`repeat_blobs`).

The aligned-crop difference (metrics.pose_differences) catches a picture repeated in place, and misses it
reframed on a busy background (the figure's mask changes with the background it takes in); the blob catches
it. But on the validity suite the blob also takes expression sheets (another mouth is a blob of 0.1-0.5% of
the figure) and near-identical sprite frames for repeats, so scoring.score_character_sheet uses it as a
second opinion: where it and the aligned-crop difference disagree, the sheet goes to review.
"""

from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np

# Keypoints are found on pictures brought to this longest side (small sheets enlarged: ORB needs texture).
MATCH_SIDE = 256
# A pixel still differs after the warp when a channel is off by more than this (grey levels); resampling
# a line leaves less once the 3x3 opening has removed single-pixel slivers.
CHANGE_LEVEL = 50
MIN_MATCHES = 8
# repeat distinctness = min(1, nearest pair's blob / REPEAT_SCALE), so the 0.5 floor sits at half of it. Set on
# the calibration families only (drawn, scenes): their repeated and collapsed sheets leave no blob (0), their
# good sheets at least 0.58% of the figure; the floor is the middle, 0.29%.
REPEAT_SCALE = 0.0058

_ORB = cv2.ORB_create(nfeatures=500, edgeThreshold=15, patchSize=15, fastThreshold=10)
_MATCHER = cv2.BFMatcher(cv2.NORM_HAMMING, crossCheck=True)


def _enlarged(image: np.ndarray) -> np.ndarray:
    h, w = image.shape[:2]
    f = MATCH_SIDE / max(h, w)
    if f == 1:
        return image
    return cv2.resize(image, (round(w * f), round(h * f)), interpolation=cv2.INTER_CUBIC if f > 1 else cv2.INTER_AREA)


def similarity(keys_a: tuple, keys_b: tuple) -> np.ndarray | None:
    """The 2x3 similarity taking picture b onto picture a from their (keypoints, descriptors), or None when
    too few keypoints match."""
    (ka, da), (kb, db) = keys_a, keys_b
    if da is None or db is None:
        return None
    matches = _MATCHER.match(db, da)
    if len(matches) < MIN_MATCHES:
        return None
    src = np.float32([kb[m.queryIdx].pt for m in matches])
    dst = np.float32([ka[m.trainIdx].pt for m in matches])
    transform, _ = cv2.estimateAffinePartial2D(src, dst, method=cv2.RANSAC, ransacReprojThreshold=3.0)
    return transform


def changed_blob(a: np.ndarray, b: np.ndarray, mask_a: np.ndarray, mask_b: np.ndarray, transform: np.ndarray) -> float:
    """The largest connected region where `b` warped by `transform` still differs from `a`, within either
    figure, as a share of `a`'s figure (0: one transform explains the pair)."""
    h, w = a.shape[:2]
    warped = cv2.warpAffine(b, transform, (w, h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
    inside = cv2.warpAffine(np.ones(b.shape[:2], np.uint8), transform, (w, h), flags=cv2.INTER_NEAREST) > 0
    figure = mask_a | (cv2.warpAffine(mask_b.astype(np.uint8), transform, (w, h), flags=cv2.INTER_NEAREST) > 0)
    diff = np.abs(a.astype(np.int16) - warped.astype(np.int16)).max(axis=2) > CHANGE_LEVEL
    changed = cv2.morphologyEx((diff & inside & figure).astype(np.uint8), cv2.MORPH_OPEN, np.ones((3, 3), np.uint8))
    n, _, stats, _ = cv2.connectedComponentsWithStats(changed, connectivity=8)
    return float(stats[1:, cv2.CC_STAT_AREA].max() / max(1, int(mask_a.sum()))) if n > 1 else 0.0


def repeat_blobs(images: Sequence[np.ndarray], masks: Sequence[np.ndarray]) -> np.ndarray:
    """For every pair i < j of poses (HxWx3 uint8, with their figure masks): `changed_blob` of pose j brought
    onto pose i, 1 where no transform is found (nothing in common). N x N, symmetric, 0 on the diagonal."""
    pics = [_enlarged(a) for a in images]
    figs = [
        cv2.resize(m.astype(np.uint8), (p.shape[1], p.shape[0]), interpolation=cv2.INTER_NEAREST) > 0
        for m, p in zip(masks, pics)
    ]
    keys = [_ORB.detectAndCompute(cv2.cvtColor(p, cv2.COLOR_RGB2GRAY), None) for p in pics]
    n = len(pics)
    blobs = np.zeros((n, n))
    for i in range(n):
        for j in range(i + 1, n):
            t = similarity(keys[i], keys[j]) if pics[i].shape == pics[j].shape else None
            blobs[i, j] = 1.0 if t is None else changed_blob(pics[i], pics[j], figs[i], figs[j], t)
    return blobs + blobs.T
