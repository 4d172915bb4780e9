"""How the subject moves relative to the camera, and whether a clip moves at all (phases 2 and 3).

Optical flow is evidence only where the picture has texture in two directions. On a flat sky, a plain wall
or a smooth painted backdrop, Farnebäck returns about 0 whatever the camera does (the aperture problem).
Counted as votes, those pixels make a panning camera look still on some steps and panning on others, and
the subject's velocity relative to the camera then jumps from step to step. So on a busy background the
camera is read from the textured pixels of the frame's outer ring (where the background is, around a
subject that is usually central), and the subject's velocity from the textured pixels that move relative
to that camera. On a plain background there is no camera to see, and every pixel is used as before.

A clip "moves" when its subject moves over a few steps, not only from one step to the next: slow, smooth
motion (a fraction of a pixel per frame at the working size) adds up over a span, a frozen clip does not.
"""

from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np

from .metrics import farneback, flow_magnitudes, gray, plain_background

IDENTITY = np.array([[1, 0, 0], [0, 1, 0]], dtype=np.float64)


def texture(frame: np.ndarray, block: int = 5) -> np.ndarray:
    """Per pixel, the smaller eigenvalue of the grey gradients' structure tensor over a `block`² window
    (Shi & Tomasi, "Good features to track", CVPR 1994): large only where the picture varies in two
    directions, so that the flow there is determined; 0 on flat areas and small along straight edges."""
    return cv2.cornerMinEigenVal(gray(frame).astype(np.float32), block)


def outer_ring(shape: tuple[int, ...], width: float = 0.2) -> np.ndarray:
    """Boolean mask of the pixels within `width` of the shorter side from the frame's edge."""
    h, w = shape[:2]
    b = max(1, round(width * min(h, w)))
    ring = np.ones((h, w), dtype=bool)
    ring[b : h - b, b : w - b] = False
    return ring


def camera_points(textured: np.ndarray, min_share: float = 0.05) -> np.ndarray | None:
    """Where to read the camera's motion on a busy background (an Nx2 array of x, y), or None for "every
    pixel": the `textured` pixels of the `outer_ring`, when they are at least `min_share` of it. A smooth
    backdrop (a sky, a painted gradient) shows no camera motion, and its few textured pixels in the ring
    are often the subject's feet or head."""
    ring = outer_ring(textured.shape)
    ys, xs = np.nonzero(ring & textured)
    if len(xs) < min_share * ring.sum():
        return None
    return np.stack([xs, ys], axis=1)


def camera_motion(
    flow: np.ndarray, points: np.ndarray | None = None, step: int = 4, tolerance: float = 0.5
) -> np.ndarray:
    """The camera's motion in one flow field: a similarity transform (pan, zoom, roll; 2x3) fitted to the
    flow at `points` (x, y; default every `step` px) with RANSAC (Fischler & Bolles 1981) at `tolerance` px,
    so the background decides and the subject's own motion is left out as outliers."""
    if points is None:
        h, w = flow.shape[:2]
        ys, xs = np.mgrid[0:h:step, 0:w:step]
        points = np.stack([xs.ravel(), ys.ravel()], axis=1)
    src = points.astype(np.float32)
    dst = src + flow[points[:, 1], points[:, 0]].astype(np.float32)
    a, _ = cv2.estimateAffinePartial2D(src, dst, method=cv2.RANSAC, ransacReprojThreshold=tolerance)
    return IDENTITY.copy() if a is None else a


def subject_velocities(
    frames: Sequence[np.ndarray],
    flow_list: Sequence[np.ndarray],
    moving: float = 0.5,
    tolerance: float = 30.0,
    texture_floor: float = 16.0,
) -> np.ndarray:
    """Per step (flow_list[t] from frames[t]), the subject's velocity relative to the background, in
    fractions of the shorter side: the flow minus the `camera_motion`, averaged over the pixels that move
    more than `moving` px relative to it (0 when nothing does). On a plain background that is the mean.
    On a busy one only textured pixels count (a flat sky's flow says nothing) and the camera comes from
    `camera_points`, and the average is the median: the body's motion, which the limbs of a drawn walk
    (a minority of the moving pixels, redrawn every frame) do not pull about. A camera pan or zoom over a
    still subject, or a slow walk, is slow and smooth here; a subject jumping about is not, whatever the
    camera does."""
    out = []
    for frame, f in zip(frames, flow_list):
        h, w = f.shape[:2]
        # On a plain background the still background is most of the picture and votes for the camera.
        textured = None if plain_background(frame, tolerance) else texture(frame) > texture_floor
        a = camera_motion(f, None if textured is None else camera_points(textured))
        gx, gy = np.meshgrid(np.arange(w, dtype=np.float64), np.arange(h, dtype=np.float64))
        camera = np.stack([a[0, 0] * gx + a[0, 1] * gy + a[0, 2] - gx, a[1, 0] * gx + a[1, 1] * gy + a[1, 2] - gy], 2)
        residual = f - camera
        m = np.linalg.norm(residual, axis=2) > moving
        if textured is not None:
            m &= textured
        if not m.any():
            out.append(np.zeros(2))
            continue
        out.append((residual[m].mean(axis=0) if textured is None else np.median(residual[m], axis=0)) / min(h, w))
    return np.asarray(out, dtype=np.float64).reshape(len(out), 2)


def dynamic_degree(
    frames: Sequence[np.ndarray], flow_list: Sequence[np.ndarray], threshold: float = 1.0, span: int = 4
) -> tuple[float, np.ndarray]:
    """Dynamic degree: the fraction of steps that move, after VBench (Huang et al. 2024) with Farnebäck flow
    in place of RAFT. A step moves when the top-5% flow magnitude (`flow_magnitudes`, px per 256 px of the
    shorter side) exceeds `threshold` from its frame to the next, or across the run of `span` steps it
    belongs to (frames[s] -> frames[s + span]): slow motion that stays under the threshold per frame adds up
    over the run, noise and a frozen picture do not. Also returns the runs' magnitudes. 0 for a frozen clip."""
    if len(flow_list) == 0:
        return 0.0, np.zeros(0)
    moves = flow_magnitudes(flow_list) > threshold
    starts = range(0, len(flow_list), span) if span > 1 else range(0)
    runs = np.array(
        [
            flow_magnitudes([farneback(frames[s], frames[min(s + span, len(flow_list))])])[0]
            for s in starts
            if min(s + span, len(flow_list)) - s > 1
        ]
    )
    for k, magnitude in enumerate(runs):
        if magnitude > threshold:
            moves[k * span : (k + 1) * span] = True
    return float(moves.mean()), runs
