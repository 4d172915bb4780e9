"""OpenPose skeletons for character sheets: the 8 built-in views, drawn at any size, or the user's own.

A skeleton is 18 body keypoints in OpenPose's COCO order (`KEYPOINTS`), each an (x, y) in a unit
square or None when hidden (a back view has no nose or eyes). `draw_skeleton` renders them the way
OpenPose's body estimator does (controlnet_aux `draw_bodypose`): limbs as ellipses in the 17 limb
colours blended at 60% over black, joints as dots in the 18 joint colours, stick width 4 px at
512 px. That is the picture an OpenPose ControlNet (`lllyasviel/control_v11p_sd15_openpose`) was
trained on, so the built-in views need no detector and no download.

Left and right are the character's own: OpenPose colours them differently, which is how a ControlNet
tells a front view (the character's right arm on the image's left) from a back view (on its right).
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image

Point = tuple[float, float] | None
Skeleton = tuple[Point, ...]

KEYPOINTS = (
    "nose",
    "neck",
    "r_shoulder",
    "r_elbow",
    "r_wrist",
    "l_shoulder",
    "l_elbow",
    "l_wrist",
    "r_hip",
    "r_knee",
    "r_ankle",
    "l_hip",
    "l_knee",
    "l_ankle",
    "r_eye",
    "l_eye",
    "r_ear",
    "l_ear",
)
# OpenPose's limb pairs (0-based keypoint indices) in drawing order, and its 18 colours (RGB).
LIMBS = (
    (1, 2),
    (1, 5),
    (2, 3),
    (3, 4),
    (5, 6),
    (6, 7),
    (1, 8),
    (8, 9),
    (9, 10),
    (1, 11),
    (11, 12),
    (12, 13),
    (1, 0),
    (0, 14),
    (14, 16),
    (0, 15),
    (15, 17),
)
COLOURS = (
    (255, 0, 0),
    (255, 85, 0),
    (255, 170, 0),
    (255, 255, 0),
    (170, 255, 0),
    (85, 255, 0),
    (0, 255, 0),
    (0, 255, 85),
    (0, 255, 170),
    (0, 255, 255),
    (0, 170, 255),
    (0, 85, 255),
    (0, 0, 255),
    (85, 0, 255),
    (170, 0, 255),
    (255, 0, 255),
    (255, 0, 170),
    (255, 0, 85),
)
REFERENCE_SIZE = 512  # OpenPose's stick width (4 px) and joint radius (4 px) are for images this size
POSE_IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp")


def _skeleton(**points: tuple[float, float]) -> Skeleton:
    unknown = set(points) - set(KEYPOINTS)
    if unknown:
        raise ValueError(f"unknown keypoints {sorted(unknown)}")
    return tuple(points.get(name) for name in KEYPOINTS)


def mirrored(skeleton: Skeleton, swap_sides: bool = True) -> Skeleton:
    """The skeleton flipped left-right. With `swap_sides` the character turns round its vertical axis
    (a left profile becomes a right profile); without, it is seen from behind (a front becomes a back)."""
    flipped = [None if p is None else (1.0 - p[0], p[1]) for p in skeleton]
    if not swap_sides:
        return tuple(flipped)
    by_name = dict(zip(KEYPOINTS, flipped))
    swap = {"r_": "l_", "l_": "r_"}
    return tuple(by_name[swap[name[:2]] + name[2:] if name[:2] in swap else name] for name in KEYPOINTS)


# Full body, standing, feet at 89% of the frame's height (room for hair and shoes).
FRONT = _skeleton(
    nose=(0.50, 0.17),
    neck=(0.50, 0.25),
    r_eye=(0.48, 0.155),
    l_eye=(0.52, 0.155),
    r_ear=(0.46, 0.165),
    l_ear=(0.54, 0.165),
    r_shoulder=(0.41, 0.26),
    r_elbow=(0.38, 0.40),
    r_wrist=(0.37, 0.52),
    l_shoulder=(0.59, 0.26),
    l_elbow=(0.62, 0.40),
    l_wrist=(0.63, 0.52),
    r_hip=(0.45, 0.53),
    r_knee=(0.45, 0.71),
    r_ankle=(0.45, 0.89),
    l_hip=(0.55, 0.53),
    l_knee=(0.55, 0.71),
    l_ankle=(0.55, 0.89),
)
# Seen from behind: the character's right side on the image's right, no face, only the ears.
BACK = tuple(
    None if name in ("nose", "r_eye", "l_eye") else p for name, p in zip(KEYPOINTS, mirrored(FRONT, swap_sides=False))
)
# The character's left side, facing the image's left: one eye and one ear, limbs nearly overlapping,
# a short stride so the legs read as a profile.
LEFT = _skeleton(
    nose=(0.45, 0.17),
    neck=(0.50, 0.25),
    l_eye=(0.47, 0.155),
    l_ear=(0.52, 0.165),
    l_shoulder=(0.49, 0.265),
    l_elbow=(0.48, 0.40),
    l_wrist=(0.47, 0.52),
    r_shoulder=(0.52, 0.26),
    r_elbow=(0.54, 0.40),
    r_wrist=(0.55, 0.51),
    l_hip=(0.49, 0.53),
    l_knee=(0.46, 0.71),
    l_ankle=(0.44, 0.89),
    r_hip=(0.52, 0.53),
    r_knee=(0.54, 0.71),
    r_ankle=(0.56, 0.89),
)
RIGHT = mirrored(LEFT)
# Turned ~45 degrees to the image's left, weight on one leg, a hand raised: the sheet's dynamic view.
THREE_QUARTER = _skeleton(
    nose=(0.47, 0.17),
    neck=(0.50, 0.25),
    r_eye=(0.455, 0.155),
    l_eye=(0.49, 0.155),
    l_ear=(0.535, 0.165),
    r_shoulder=(0.43, 0.265),
    r_elbow=(0.38, 0.37),
    r_wrist=(0.41, 0.47),
    l_shoulder=(0.56, 0.255),
    l_elbow=(0.61, 0.37),
    l_wrist=(0.64, 0.27),
    r_hip=(0.46, 0.53),
    r_knee=(0.42, 0.70),
    r_ankle=(0.40, 0.88),
    l_hip=(0.54, 0.53),
    l_knee=(0.56, 0.71),
    l_ankle=(0.58, 0.89),
)
# Upper-body shots (head to waist): the expression is in the face, the gesture in the arms, so the
# three skeletons differ where a ControlNet can see it.
_HEAD = dict(
    r_eye=(0.46, 0.27),
    l_eye=(0.54, 0.27),
    r_ear=(0.42, 0.29),
    l_ear=(0.58, 0.29),
    neck=(0.50, 0.47),
    r_shoulder=(0.33, 0.51),
    l_shoulder=(0.67, 0.51),
)
SMILE = _skeleton(
    nose=(0.50, 0.31), **_HEAD, r_elbow=(0.29, 0.80), r_wrist=(0.45, 0.93), l_elbow=(0.71, 0.80), l_wrist=(0.55, 0.93)
)  # hands together in front
ANGRY = _skeleton(
    nose=(0.50, 0.33), **_HEAD, r_elbow=(0.18, 0.72), r_wrist=(0.30, 0.93), l_elbow=(0.82, 0.72), l_wrist=(0.70, 0.93)
)  # fists on the hips, elbows out
SURPRISED = _skeleton(
    nose=(0.50, 0.29), **_HEAD, r_elbow=(0.24, 0.66), r_wrist=(0.36, 0.36), l_elbow=(0.76, 0.66), l_wrist=(0.64, 0.36)
)  # hands up by the face

# Keyed like animenb.phases.character_sheet.POSES.
SKELETONS: dict[str, Skeleton] = {
    "front": FRONT,
    "back": BACK,
    "left": LEFT,
    "right": RIGHT,
    "three_quarter": THREE_QUARTER,
    "smile": SMILE,
    "angry": ANGRY,
    "surprised": SURPRISED,
}


def _placed(point: tuple[float, float], width: int, height: int) -> tuple[float, float]:
    """Unit-square coordinates in a `width` x `height` frame: the square is centred and scaled to the
    shorter side, so a portrait frame keeps the figure's proportions (and a full body fits)."""
    side = min(width, height)
    return (width - side) / 2 + point[0] * side, (height - side) / 2 + point[1] * side


def draw_skeleton(skeleton: Skeleton, width: int, height: int) -> Image.Image:
    """`skeleton` in OpenPose's colours on black, `width` x `height` px (RGB)."""
    import cv2

    if len(skeleton) != len(KEYPOINTS):
        raise ValueError(f"`skeleton` must have {len(KEYPOINTS)} keypoints, got {len(skeleton)}.")
    scale = min(width, height) / REFERENCE_SIZE
    stick, radius = max(1.0, 4 * scale), max(1, round(4 * scale))
    points = [None if p is None else _placed(p, width, height) for p in skeleton]
    canvas = np.zeros((height, width, 3), np.uint8)
    for (a, b), colour in zip(LIMBS, COLOURS):
        start, end = points[a], points[b]
        if start is None or end is None:
            continue
        (xa, ya), (xb, yb) = start, end
        length = float(np.hypot(xa - xb, ya - yb))
        angle = float(np.degrees(np.arctan2(ya - yb, xa - xb)))
        polygon = cv2.ellipse2Poly(
            (round((xa + xb) / 2), round((ya + yb) / 2)),
            (max(1, round(length / 2)), max(1, round(stick))),
            round(angle),
            0,
            360,
            1,
        )
        limb = canvas.copy()
        cv2.fillConvexPoly(limb, polygon, colour)
        canvas = cv2.addWeighted(canvas, 0.4, limb, 0.6, 0)  # OpenPose's 60% limb blend
    for point, colour in zip(points, COLOURS):
        if point is not None:
            cv2.circle(canvas, (round(point[0]), round(point[1])), radius, colour, thickness=-1)
    return Image.fromarray(canvas)


def builtin_skeletons(keys: Sequence[str], width: int, height: int) -> list[Image.Image]:
    """The built-in skeletons for pose `keys` (see SKELETONS), drawn at `width` x `height`."""
    unknown = [key for key in keys if key not in SKELETONS]
    if unknown:
        raise ValueError(f"no built-in skeleton for poses {unknown}; built-in: {', '.join(SKELETONS)}.")
    return [draw_skeleton(SKELETONS[key], width, height) for key in keys]


def pose_image_paths(source: str | Path | Sequence, count: int, name: str = "pose_images") -> list:
    """The `count` pose images `source` names: a folder (its images in name order) or a sequence of
    paths / PIL images. ValueError (naming `name`) for anything else."""
    items: list
    if isinstance(source, (str, Path)):
        folder = Path(source).expanduser()
        if not folder.is_dir():
            raise ValueError(
                f"`{name}` must be a folder of {count} pose images or a list of {count} images, "
                f"got {str(source)!r} (not a folder)."
            )
        items = sorted(p for p in folder.iterdir() if p.suffix.lower() in POSE_IMAGE_SUFFIXES)
    else:
        items = list(source)
    if len(items) != count:
        raise ValueError(f"`{name}` must hold exactly {count} images (one per pose, in sheet order), got {len(items)}.")
    for item in items:
        if isinstance(item, Image.Image):
            continue
        path = Path(item).expanduser()
        if path.suffix.lower() not in POSE_IMAGE_SUFFIXES or not path.is_file():
            raise ValueError(f"`{name}`: {str(item)!r} is not an image file ({', '.join(POSE_IMAGE_SUFFIXES)}).")
    return items


def load_pose_images(source: str | Path | Sequence, count: int, width: int, height: int) -> list[Image.Image]:
    """The user's pose images (already OpenPose renders, e.g. from an editor or a detector), as RGB at
    `width` x `height`: the size the ControlNet conditions on."""
    images = []
    for item in pose_image_paths(source, count):
        if isinstance(item, Image.Image):
            image = item.convert("RGB")
        else:
            with Image.open(Path(item).expanduser()) as opened:
                image = opened.convert("RGB")
        images.append(image if image.size == (width, height) else image.resize((width, height), Image.LANCZOS))
    return images
