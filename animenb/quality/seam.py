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


def flow_changes(
    frames: Sequence[np.ndarray],
    flow_list: Sequence[np.ndarray],
    moving: float = 0.5,
    tolerance: float = 30.0,
    texture_floor: float = 16.0,
) -> np.ndarray:
    """Per step t of a loop (flow_list[t]: frames[t] -> frames[t+1], the last one wrapping to frames[0]), how
    much the flow relative to the camera breaks from its neighbours': the mean of
    ``|R_t - (R_{t-1} + R_{t+1}) / 2|`` (px) over the pixels that move more than `moving` px in any of the
    three, R the flow minus `camera_motion` (read from the textured ring, `camera_points`, when the loop's
    background is not plain). Motion that keeps its course, fast or slow, changes little; a jump back
    reverses it. 0 where nothing moves."""
    busy = not all(plain_background(f, tolerance) for f in frames)
    relative = []
    for frame, f in zip(frames, flow_list):
        points = camera_points(texture(frame) > texture_floor) if busy else None
        relative.append(f - camera_flow(camera_motion(f, points), f.shape))
    r = np.stack(relative)
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
