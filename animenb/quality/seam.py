"""Whether a loop's wrap-around step continues its motion (phase 2).

A loop cut short (an open seam) jumps back at the wrap-around step. Where the subject walks in place over a
busy or smooth backdrop, that jump can look like an ordinary step in appearance: a pose a little further
along, which the flow can follow, with the subject still where it was. What gives it away is the motion:
every other step continues the one before (the limbs keep swinging the way they went), the seam's step does
not. So the seam is judged by how much the flow changes there, against how much it changes at the loop's
own steps: a seamless loop's wrap-around is one of its steps.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from .metrics import plain_background
from .motion import camera_flow, camera_motion, camera_points, texture


def relative_flows(
    frames: Sequence[np.ndarray], flow_list: Sequence[np.ndarray], tolerance: float = 30.0, texture_floor: float = 16.0
) -> np.ndarray:
    """The flows (T x H x W x 2, px) minus the `camera_motion`, read from the textured outer ring
    (`camera_points`) when the loop's background is not plain, from every pixel when it is."""
    busy = not all(plain_background(f, tolerance) for f in frames)
    relative = []
    for frame, f in zip(frames, flow_list):
        points = camera_points(texture(frame) > texture_floor) if busy else None
        relative.append(f - camera_flow(camera_motion(f, points), f.shape))
    return np.stack(relative)


def flow_changes(relative: np.ndarray, moving: float = 0.5) -> np.ndarray:
    """Per step t of a loop (`relative_flows` R, step t from frame t to t+1, the last one wrapping to frame
    0), how much the flow breaks from its neighbours': the mean of ``|R_t - (R_{t-1} + R_{t+1}) / 2|`` (px)
    over the pixels that move more than `moving` px in any of the three. Motion that keeps its course, fast
    or slow, changes little; a jump back reverses it. 0 where nothing moves."""
    r = np.asarray(relative, dtype=np.float64)
    moves = np.linalg.norm(r, axis=3) > moving
    n = len(r)
    out = np.zeros(n)
    for t in range(n):
        mask = moves[t - 1] | moves[t] | moves[(t + 1) % n]
        if mask.any():
            out[t] = np.linalg.norm(r[t] - (r[t - 1] + r[(t + 1) % n]) / 2, axis=2)[mask].mean()
    return out


def seam_motion_ratio(changes: np.ndarray, floor: float = 1e-3) -> float:
    """The seam's `flow_changes` (the last step) against the median of the loop's other steps: about 1 for a
    seamless loop, several times more where the loop jumps back."""
    c = np.asarray(changes, dtype=np.float64)
    return float(c[-1] / max(float(np.median(c[:-1])), floor))
