"""The subject's motion relative to the camera on busy backgrounds, and dynamic degree over spans
(animenb/quality/motion.py): each fix checked at its cause, on constructed frames and on the held-out
cases it was made for."""
import cv2
import numpy as np
import pytest

from animenb.quality import metrics as M
from animenb.quality import motion
from animenb.quality.config import load_quality_config
from animenb.quality.validity import Case


def _texture(h, w, seed):
    """Blocky random texture (a street's windows and bricks): flow is determined everywhere on it."""
    rng = np.random.default_rng(seed)
    blocks = rng.integers(0, 256, (h // 4, w // 4, 3), dtype=np.uint8)
    return cv2.resize(blocks, (w, h), interpolation=cv2.INTER_NEAREST)


def _panned_street(n=8, size=128, pan=2.0):
    """A flat sky over a textured street that the camera pans across by `pan` px per step, and a large
    textured figure that the camera follows (still in the frame)."""
    street = _texture(size, size + round(pan * n) + 8, 0)
    figure = _texture(size // 2, size // 4, 1)
    frames = []
    for t in range(n):
        f = np.ascontiguousarray(street[:, round(pan * t):round(pan * t) + size])
        f[:size // 2] = (150, 190, 230)  # the sky: flat, so its flow is 0 whatever the camera does
        f[size // 4:size // 4 + size // 2, 3 * size // 8:3 * size // 8 + size // 4] = figure
        frames.append(M.smoothed(f))
    return frames


def test_a_flat_sky_does_not_vote_for_a_still_camera():
    frames = _panned_street()
    flows = M.flows(frames)
    textured = motion.texture(frames[0]) > 16
    # every pixel voting: the sky and the followed figure (flow 0) outvote the street, the camera looks still
    assert abs(motion.camera_motion(flows[0])[0, 2]) < 0.5
    # the textured pixels of the outer ring see the pan
    assert motion.camera_motion(flows[0], motion.camera_points(textured))[0, 2] == pytest.approx(-2.0, abs=0.3)
    # relative to the street the figure moves steadily with the camera: no jitter
    velocities = motion.subject_velocities(frames, flows)
    assert velocities[:, 0] * 128 == pytest.approx(2.0, abs=0.3)
    assert M.velocity_jitter(velocities) < 0.2


def test_a_smooth_backdrop_shows_no_camera():
    """A sky with a few textured pixels (the subject's feet) in the ring: too few to read a camera from."""
    textured = np.zeros((128, 128), bool)
    textured[110:118, 50:70] = True
    assert motion.camera_points(textured) is None
    textured[:, :20] = True
    assert len(motion.camera_points(textured)) == 20 * 128 + 8 * 20  # a textured side: the camera shows


def _slow_square(n=17, size=128, speed=0.2):
    """A textured square sliding `speed` px per step: under the per-step threshold (0.5 px at 128 px)."""
    base = np.full((size, size, 3), 200, np.uint8)
    base[40:80, 40:80] = _texture(40, 40, 2)
    return [M.smoothed(cv2.warpAffine(base, np.float32([[1, 0, speed * t], [0, 1, 0]]), (size, size),
                                      borderMode=cv2.BORDER_REPLICATE)) for t in range(n)]


def test_slow_motion_moves_over_a_span_and_a_frozen_clip_does_not():
    slow = _slow_square()
    flows = M.flows(slow)
    assert (M.flow_magnitudes(flows) < 1.0).all()  # step by step it reads as still
    assert motion.dynamic_degree(slow, flows, span=1)[0] == 0.0
    assert motion.dynamic_degree(slow, flows)[0] == 1.0
    frozen = [slow[0]] * len(slow)
    assert motion.dynamic_degree(frozen, M.flows(frozen))[0] == 0.0
    # half the clip slides, then it holds: the held half does not move
    half = slow[:9] + [slow[8]] * 8
    assert motion.dynamic_degree(half, M.flows(half))[0] == pytest.approx(0.5)


def test_slow_dusk_video_moves():
    """The held-out false reject: a figure walking a quarter stride across a 320 px video read as frozen
    (dynamic_degree 0.22, under its 0.5 floor)."""
    report = Case("FULL_VIDEO", "good", 3, 320, "dusk_slow").score()
    assert report.metrics["dynamic_degree"] == 1.0
    assert Case("FULL_VIDEO", "frozen", 2, 320, "dusk_slow").score().metrics["dynamic_degree"] == 0.0


@pytest.mark.parametrize("seed, size", [(0, 128), (3, 320)])
def test_a_walk_the_camera_follows_down_a_busy_street_is_regular(seed, size):
    """The held-out false rejects: on a street the camera fit flipped between the pan (the buildings) and
    a still camera (the flat sky and the followed figure), so the figure's velocity jumped every step."""
    floor = load_quality_config(None)["phases"]["FULL_VIDEO"]["critical"]["motion_regularity"]
    good = Case("FULL_VIDEO", "good", seed, size, "street").score()
    wobble = Case("FULL_VIDEO", "jitter", seed, size, "street").score()
    assert good.metrics["motion_regularity"] >= floor, good.details["subject_velocity"]
    assert wobble.metrics["motion_regularity"] < floor
