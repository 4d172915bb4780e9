"""Did each pose follow its skeleton? A pose-aware metric for pose-controlled character sheets.

`pose_distinctness` asks whether the 8 poses differ; this asks whether pose k took the shape of the
OpenPose skeleton k it was given (animenb.poses) more than the shape of any other skeleton. It needs
no pose detector: both sides become a blurred body-density map at one working size,

    D(pose)     = G_sigma * foreground_mask(pose)            (the character's silhouette)
    D(skeleton) = G_sigma * [max channel of skeleton > 40]    (limbs and joints on black)
    C[k, j]     = Pearson correlation of D(pose k) and D(skeleton j)

and sigma (a fraction of the working size) widens the 4 px sticks to a body's width. Two skeletons
whose own maps correlate above `twin` (a front and a back view, seen as silhouettes) cannot be told
apart this way, so pose k is only compared with skeletons distinguishable from skeleton k:

    margin_k       = C[k, k] - max_{j : S[k, j] < twin} C[k, j]      (S: skeleton vs skeleton)
    pose_following = fraction of poses with margin_k > 0

1.0: every pose looks like its own skeleton; a model that ignores the control (eight front views)
follows only the poses whose skeletons look like a front view.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from . import metrics as M

WORK_SIZE = 96  # px, long side: silhouettes, not details
SIGMA = 0.05  # of the working size: a 4 px stick blurred to about a limb's width
TWIN = 0.9  # skeleton maps this similar are the same silhouette
SKELETON_LEVEL = 40  # a skeleton pixel: any channel above this on the black background


def _density(mask: np.ndarray, sigma_px: float) -> np.ndarray:
    import cv2

    return cv2.GaussianBlur(mask.astype(np.float32), (0, 0), sigma_px)


def _correlation(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.ravel() - a.mean(), b.ravel() - b.mean()
    norm = float(np.linalg.norm(a) * np.linalg.norm(b))
    return float(a @ b / norm) if norm > 0 else 0.0


def pose_following(
    poses: Sequence[M.ImageLike],
    skeletons: Sequence[M.ImageLike],
    *,
    tolerance: float = 30.0,
    work_size: int = WORK_SIZE,
    sigma: float = SIGMA,
    twin: float = TWIN,
) -> tuple[float, dict]:
    """(pose_following in [0, 1], details) for `poses` generated from `skeletons` (same order, same count).

    details: `pose_skeleton_correlation` (C), `skeleton_similarity` (S), `margin_per_pose`,
    `followed_per_pose`. `tolerance` is the foreground tolerance of M.foreground_mask.
    """
    if len(poses) != len(skeletons) or len(poses) < 2:
        raise ValueError(
            f"`skeletons` must hold one image per pose (at least 2), got {len(skeletons)} for {len(poses)} poses."
        )
    size = M.prepare(poses[:1], work_size)[0].shape[1::-1]  # (w, h) of the first pose at the working size
    sigma_px = sigma * max(size)
    pose_maps = [_density(M.foreground_mask(a, tolerance), sigma_px) for a in M.prepare(poses, work_size, size=size)]
    skeleton_maps = [
        _density(a.max(axis=2) > SKELETON_LEVEL, sigma_px) for a in M.prepare(skeletons, work_size, size=size)
    ]
    n = len(poses)
    corr = np.array([[_correlation(p, s) for s in skeleton_maps] for p in pose_maps])
    same = M.similarity_matrix(skeleton_maps, _correlation)
    margins = []
    for k in range(n):
        others = [j for j in range(n) if j != k and same[k, j] < twin]
        margins.append(float(corr[k, k] - max(corr[k, j] for j in others)) if others else float(corr[k, k]))
    followed = [m > 0 for m in margins]
    details = {
        "pose_skeleton_correlation": corr,
        "skeleton_similarity": same,
        "margin_per_pose": margins,
        "followed_per_pose": followed,
    }
    return float(np.mean(followed)), details
