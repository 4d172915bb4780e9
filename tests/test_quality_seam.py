"""A loop's wrap-around step judged by its motion (animenb/quality/seam.py): walking in place over a busy
backdrop, a loop cut short jumps back to a pose that looks like a step away, but it reverses the motion
where every step of the loop continues it."""
import cv2
import numpy as np
import pytest

from animenb.quality import metrics as M
from animenb.quality import seam
from animenb.quality.config import load_quality_config
from animenb.quality.validity import Case


def _swinging(cut: float, n: int = 16, size: int = 128) -> list[np.ndarray]:
    """A textured bar swinging left and right in place over a textured wall, one swing per loop; `cut` < 1
    stops the swing short, so the wrap-around jumps back."""
    rng = np.random.default_rng(0)
    wall = cv2.resize(rng.integers(0, 256, (size // 4, size // 4, 3), dtype=np.uint8), (size, size),
                      interpolation=cv2.INTER_NEAREST)
    bar = cv2.resize(rng.integers(0, 256, (size // 8, size // 16, 3), dtype=np.uint8), (size // 8, size // 2),
                     interpolation=cv2.INTER_NEAREST)
    frames = []
    for t in range(n):
        x = round(size / 2 + size / 8 * np.sin(2 * np.pi * cut * t / n))
        f = wall.copy()
        f[size // 4:size // 4 + bar.shape[0], x - bar.shape[1] // 2:x - bar.shape[1] // 2 + bar.shape[1]] = bar
        frames.append(f)
    return frames


def _ratio(frames):
    small = [M.smoothed(a) for a in frames]
    steps = M.flows(small) + [M.farneback(small[-1], small[0])]
    return seam.seam_motion_ratio(seam.flow_changes(seam.relative_flows(small, steps)))


def test_a_jump_back_at_the_seam_breaks_the_motion_and_a_closed_seam_does_not():
    scale = load_quality_config(None)["mappings"]["seam_motion_scale"]
    closed, cut = _ratio(_swinging(1.0)), _ratio(_swinging(0.6))
    assert closed < 1.5 * scale < 2 * scale < cut
    assert M.seam_score(closed / scale) > 0.8 > 0.5 > M.seam_score(cut / scale)


def test_nothing_moving_is_no_jump():
    still = [np.full((64, 64, 3), 128, np.uint8)] * 6
    assert _ratio(still) == 0.0


@pytest.mark.parametrize("family, mode, seed, size", [("scenes", "open_seam", 0, 128)])
def test_an_open_seam_that_looks_like_a_step_fails_on_its_motion(family, mode, seed, size):
    """Calibration's scenes open seam 0/128 passed on loop_seam (0.73) before seam_motion existed."""
    report = Case("ANIMATION_LOOP", mode, seed, size, family).score()
    assert report.metrics["loop_seam"] >= 0.5
    assert report.verdict == "fail" and any(f.startswith("seam_motion") for f in report.failures)
    good = Case("ANIMATION_LOOP", "good", seed, size, family).score()
    assert good.metrics["seam_motion"] >= 0.55 and good.verdict == "pass"


@pytest.mark.parametrize("family, seed, size", [("street", 1, 192), ("camera", 2, 320)])
def test_held_out_open_seams_walking_in_place_are_not_passed(family, seed, size):
    """Held-out (never fitted): these passed on every other metric before seam_motion existed."""
    report = Case("ANIMATION_LOOP", "open_seam", seed, size, family).score()
    assert report.verdict != "pass" and report.metrics["seam_motion"] < 0.5
