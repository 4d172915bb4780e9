"""Validity: each metric ranks a good input above a bad one that the test constructs."""
import numpy as np
import pytest
from PIL import Image

from animenb.quality import metrics as M
from animenb.quality import motion
from animenb.quality import synthetic as S

try:
    from quality_fixtures import arrays, different_characters, good_loop, loop_variants, same_character
except ImportError:  # tests/ imported as a package
    from tests.quality_fixtures import arrays, different_characters, good_loop, loop_variants, same_character


def frames(name):
    return arrays(good_loop() if name == "good" else loop_variants()[name])


def small(images):
    return M.prepare(images, 128)


@pytest.mark.parametrize("bad", ["broken_seam", "open_arc"])
def test_loop_seam_ranks_closed_loop_above_a_jump(bad):
    good, worse = frames("good"), frames(bad)
    assert M.loop_seam_ratio(good, small(good)) < 1.5
    assert M.loop_seam_ratio(worse, small(worse)) > 3.0
    assert M.loop_seam(good, 1.0, small(good)) > 0.9 > 0.2 > M.loop_seam(worse, 1.0, small(worse))


def test_loop_seam_raw_mad_ratio_alone_still_ranks():
    assert M.loop_seam_ratio(frames("good")) < 1.2 < 1.8 < M.loop_seam_ratio(frames("broken_seam"))


def test_temporal_flicker_ranks_steady_above_flickering():
    good, bad = frames("good"), frames("flicker")
    assert M.vbench_temporal_flickering(good) > M.vbench_temporal_flickering(bad)
    assert M.temporal_flicker(good) > 0.7 > 0.1 > M.temporal_flicker(bad)
    assert M.temporal_flicker(frames("frozen")) == 1.0


def test_vbench_raw_value_is_near_one_for_everything_hence_the_mapping():
    raw = [M.vbench_temporal_flickering(frames(n)) for n in ("good", "shuffled", "flicker")]
    assert all(r > 0.7 for r in raw)
    assert M.temporal_flicker(frames("good"), low=0.8) == pytest.approx((raw[0] - 0.8) / 0.2)


@pytest.mark.parametrize("bad", ["shuffled", "flicker"])
def test_motion_smoothness_ranks_smooth_above_shuffled_and_flicker(bad):
    good, worse = small(frames("good")), small(frames(bad))
    assert M.warping_errors(good).mean() * 3 < M.warping_errors(worse).mean()
    assert M.motion_smoothness(good, scale=0.05) > 0.8 > 0.3 > M.motion_smoothness(worse, scale=0.05)


def test_warp_follows_the_flow():
    a = np.zeros((32, 32, 3), np.uint8)
    a[10:20, 10:20] = 255
    b = np.roll(a, 3, axis=1)
    flow = np.zeros((32, 32, 2), np.float32)
    flow[..., 0] = 3.0
    assert M.mean_abs_diff(M.warp(b, flow), a) == 0


def test_dynamic_degree_ranks_moving_above_frozen():
    good = small(frames("good"))
    frozen = small(frames("frozen"))
    half = good[:8] + [good[8]] * 8
    dd = [motion.dynamic_degree(x, M.flows(x))[0] for x in (good, half, frozen)]
    assert dd[0] == 1.0 and dd[2] == 0.0
    assert 0.4 < dd[1] < 0.6


def test_rounding_to_the_source_pixel_grid_is_not_jitter():
    """A sprite pasted at whole pixels, moving half a pixel a frame, steps 0, 1, 0, 1 px: a hold-and-jump by
    the grid's own rounding. Changes within one source pixel do not count; a jump of a few pixels still does."""
    rounding = np.array([[t % 2, 0.0] for t in range(16)]) / 128  # 0, 1, 0, 1 px at 128 px
    assert M.velocity_jitter(rounding) > 0.7
    assert M.velocity_jitter(rounding, resolution=1 / 128) == 0.0
    assert M.motion_jitter(rounding, resolution=1 / 128) == 0.0
    assert M.motion_jitter(4 * rounding, resolution=1 / 128) > 1.4  # hold and jump by 4 px: stutter


def test_blur_effect_separates_crisp_from_blurred_and_ignores_noise():
    crisp, soft = frames("good")[0], frames("blurred")[0]
    noisy = M.as_array(S.with_noise([S.loop_frames(1, 128)[0]], 45)[0])
    assert M.blur_effect(crisp) < 0.3 < 0.6 < M.blur_effect(soft)
    assert M.blur_effect(noisy) < 0.3  # noise reads as sharp: that is noise_sigma's job
    assert M.blur_effect(np.full((32, 32, 3), 90, np.uint8)) == 1.0  # nothing sharp at all


@pytest.mark.parametrize("sigma", [5.0, 15.0, 45.0])
def test_noise_sigma_estimates_added_noise_and_reads_line_art_as_clean(sigma):
    drawing = S.loop_frames(1, 256)[0]
    assert M.noise_sigma(M.as_array(drawing)) < 1.0
    grey_sigma = sigma * float(np.linalg.norm([0.299, 0.587, 0.114]))  # per-channel noise, seen in grey
    flat = Image.new("RGB", (256, 256), (128, 128, 128))
    estimate = M.noise_sigma(M.as_array(S.with_noise([flat], sigma)[0]))
    assert estimate == pytest.approx(grey_sigma, rel=0.15)
    on_drawing = M.noise_sigma(M.as_array(S.with_noise([drawing], sigma)[0]))
    assert 0.6 * grey_sigma < on_drawing < 1.1 * grey_sigma  # the light background clips at 255


def test_identity_similarity_tells_another_pose_from_another_character():
    me = S.random_character(5)
    other = S.random_character(6, like=me)
    poses = [M.as_array(p) for p in S.character_poses(8, 128, *me, seed=5)]
    strangers = [M.as_array(p) for p in S.character_poses(8, 128, *other, seed=5)]
    bands = [M.colour_bands(a) for a in poses + strangers]
    same = [M.identity_similarity(bands[0], bands[j]) for j in range(1, 8)]  # front vs side, back, action...
    diff = [M.identity_similarity(bands[i], bands[8 + i]) for i in range(8)]  # same view, other character
    assert min(same) > 0.9 and max(diff) < 0.4
    sim = M.similarity_matrix(bands[:7] + bands[8:9], M.identity_similarity)
    assert M.outlier_identity(sim) < 0.4 < 0.9 < M.outlier_identity(sim[:7, :7])


def test_jitter_ratio_separates_a_smooth_path_from_jumps_and_stutter():
    circle = M.trajectory([M.as_array(f) for f in S.loop_frames(16, 128)])
    jumps = M.trajectory([M.as_array(f) for f in S.jittered(16, 128, seed=1)])
    stutter = M.trajectory([M.as_array(f) for f in S.stuttered(S.loop_frames(16, 128))])
    assert M.jitter_ratio(circle, cyclic=True) < 0.6
    assert M.jitter_ratio(jumps, cyclic=True) > 1.4 and M.jitter_ratio(stutter, cyclic=True) > 1.4
    still = np.tile([0.5, 0.5, 0.2, 0.3], (16, 1)) + np.linspace(0, 1e-4, 16)[:, None]
    assert M.jitter_ratio(still) < 0.01  # a still subject's rounding is not jitter


def test_motion_jitter_takes_a_repeating_cycle_for_motion_but_not_a_two_step_stutter():
    """A walk drawn in a few drawings bobs and swings back every other step: step to step it changes velocity
    as much as random jumps do, but it repeats one stride later. Hold-and-jump repeats every 2 steps."""
    stride = np.array([[0.02, 0.01], [0.01, -0.02], [-0.02, 0.0], [0.0, 0.02], [0.01, -0.01]])
    walk = np.tile(stride, (4, 1))  # a 5-step cycle seen 4 times
    stutter = np.tile([[0.0, 0.0], [0.04, 0.0]], (10, 1))  # straight motion, every other frame held
    jumps = np.random.default_rng(0).uniform(-0.05, 0.05, (20, 2))
    assert M.velocity_jitter(walk, cyclic=True) > 1.4
    assert M.cycle_jitter(walk, cyclic=True) == (pytest.approx(0.0), 5)
    assert M.motion_jitter(walk, cyclic=True) < 0.01
    assert M.motion_jitter(stutter, cyclic=True) == M.velocity_jitter(stutter, cyclic=True) > 1.4
    assert M.motion_jitter(jumps) == M.velocity_jitter(jumps) > 1.0 and M.cycle_jitter(jumps)[0] > 1.0
    assert M.cycle_jitter(walk[:5]) == (float("inf"), 0)  # too short to see a cycle twice


def test_mask_iou_sees_a_squeezed_silhouette():
    frame = S.loop_frames(1, 128)[0]
    a, squeezed = M.as_array(frame), M.as_array(S.squashed([frame])[0])
    assert M.mask_iou(a, a) == 1.0 and M.mask_iou(a, squeezed) < 0.6


def test_not_blank_ranks_drawing_above_constant_images():
    assert M.not_blank(frames("good")[0]) == 1.0
    for colour in ((0, 0, 0), (255, 255, 255), (120, 30, 200)):
        assert M.not_blank(np.full((64, 64, 3), colour, np.uint8)) == 0.0


def test_palette_similarity_ranks_same_character_above_different_characters():
    same = [M.palette(a) for a in arrays(same_character())]
    diff = [M.palette(a) for a in arrays(different_characters())]
    s = M.mean_off_diagonal(M.similarity_matrix(same, M.bhattacharyya))
    d = M.mean_off_diagonal(M.similarity_matrix(diff, M.bhattacharyya))
    assert s > 0.95 and d < 0.3


def test_foreground_mask_finds_the_character_and_falls_back_on_blank():
    img = frames("good")[0]
    mask = M.foreground_mask(img)
    assert 0.05 < mask.mean() < 0.5
    assert M.foreground_mask(np.full((32, 32, 3), 7, np.uint8)).all()


def test_structure_ssim_of_aligned_crops_ranks_same_character_above_different():
    same = [M.aligned_crop(a, 32) for a in arrays(same_character())]
    diff = [M.aligned_crop(a, 32) for a in arrays(different_characters())]
    assert M.mean_off_diagonal(M.similarity_matrix(same, M.ssim)) > \
        M.mean_off_diagonal(M.similarity_matrix(diff, M.ssim)) + 0.1


def test_ssim_matches_known_values():
    rng = np.random.default_rng(0)
    a = np.repeat(np.tile(np.linspace(0, 255, 64), (64, 1))[:, :, None], 3, axis=2).astype(np.uint8)
    assert M.ssim(a, a) == pytest.approx(1.0)
    noisy = np.clip(a.astype(int) + rng.normal(0, 40, a.shape[:2])[:, :, None], 0, 255).astype(np.uint8)
    assert M.ssim(a, noisy) < 0.5
    # two flat images: only the luminance term remains, (2 mu_a mu_b + C1) / (mu_a^2 + mu_b^2 + C1)
    c1 = (0.01 * 255) ** 2
    flat_a, flat_b = np.full((32, 32, 3), 100, np.uint8), np.full((32, 32, 3), 150, np.uint8)
    assert M.ssim(flat_a, flat_b) == pytest.approx((2 * 100 * 150 + c1) / (100 ** 2 + 150 ** 2 + c1), rel=1e-6)
    with pytest.raises(ValueError, match="one size"):
        M.ssim(a, a[:32])


def test_subject_consistency_ranks_one_character_above_a_character_swap():
    good = arrays(good_loop())
    swapped = good[:8] + arrays(S.loop_frames(16, 128, palette=S.PALETTES[3])[8:])
    sc = [M.subject_consistency([M.palette(a) for a in x], M.bhattacharyya)[0] for x in (good, swapped)]
    assert sc[0] > 0.95 > 0.8 > sc[1]


def test_cosine_matrix_is_clip_i_style():
    f = np.array([[1.0, 0.0], [2.0, 0.0], [0.0, 3.0]])
    m = M.cosine_matrix(f)
    assert m[0, 1] == pytest.approx(1.0) and m[0, 2] == pytest.approx(0.0)


def test_inputs_accept_pil_and_arrays_and_reject_other_dtypes():
    img = good_loop()[0]
    assert np.array_equal(M.as_array(img), M.as_array(np.asarray(img)))
    assert M.as_array(Image.new("L", (4, 4))).shape == (4, 4, 3)
    with pytest.raises(ValueError, match="uint8"):
        M.as_array(np.zeros((4, 4, 3), np.float32))
    with pytest.raises(ValueError, match="HxWx3"):
        M.as_array(np.zeros((4, 4, 2), np.uint8))


def test_downscale_never_enlarges():
    a = np.zeros((512, 256, 3), np.uint8)
    assert M.downscale(a, 256).shape == (256, 128, 3)
    assert M.downscale(a, 1024) is a
