"""Gates on outputs they were not tuned to: the second drawing generator (busy scenes, camera pans and
zooms, slow motion), the metrics fixed for it, the three-way verdict, the chain's `on_review`, and
fitting floors on calibration families only.

The full held-out figures come from bench/gate_accuracy.py; here each fix is checked at its cause on a
few cases, and a small held-out sample must be decided without a false accept in the classes the gate
must never let through.
"""
import os
import subprocess
from functools import lru_cache
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from animenb.chain import check_on_review, gate_decision, next_step
from animenb.quality import load_quality_config
from animenb.quality import foreground as F
from animenb.quality import metrics as M
from animenb.quality import motion
from animenb.quality import poses_repeat as P
from animenb.quality import real_art as R
from animenb.quality import scenes as C
from animenb.quality.calibration import fit, fit_phase, redecide
from animenb.quality.scoring import combine
from animenb.quality.validity import (CALIBRATION, CALIBRATION_CASES, FAMILIES, HELD_OUT, HELD_OUT_CASES, Case,
                                      confusion, decision_row, run_suite)


def _flow_frames(frames):
    """The frames at flow size and their flows, as the scorers make them."""
    imgs = M.prepare(frames, 256)
    small = [M.smoothed(a) for a in M.prepare(imgs, 128)]
    return small, M.flows(small)


@lru_cache(maxsize=None)
def _frames(family: str, phase: str, mode: str, seed: int, size: int) -> tuple:
    return tuple(Case(phase, mode, seed, size, family).inputs()["frames"])


def test_held_out_families_differ_in_generator_and_never_set_anything():
    held = {c.family for c in HELD_OUT_CASES}
    calibration = {c.family for c in CALIBRATION_CASES}
    assert held and calibration and not held & calibration
    assert {FAMILIES[f].split for f in held} == {HELD_OUT} and {FAMILIES[f].split for f in calibration} == {CALIBRATION}
    # every held-out family keeps the classes that must never pass
    for family in held:
        modes = {c.mode for c in HELD_OUT_CASES if c.family == family}
        assert {"different_characters", "noisy", "blurred", "scene_cut", "vanishing_subject"} <= modes


def test_camera_pan_and_slow_walk_are_regular_motion_and_a_wobbling_subject_is_not():
    """The issue's false rejects: a still subject under a panning camera, and a slow walk, read as 0.000
    motion regularity when positions came from a border-colour mask. Relative to the camera they are smooth."""
    pan = _frames("camera", "FULL_VIDEO", "good", 1, 192)
    slow = _frames("dusk_slow", "FULL_VIDEO", "good", 1, 192)
    wobble = _frames("camera", "FULL_VIDEO", "jitter", 1, 192)
    ratio = {name: M.velocity_jitter(motion.subject_velocities(*_flow_frames(f))) for name, f in
             (("pan", pan), ("slow", slow), ("wobble", wobble))}
    assert ratio["pan"] < 0.6 and ratio["slow"] < 0.6, ratio
    assert ratio["wobble"] > 1.3, ratio


def test_camera_motion_recovers_a_pan():
    frames = C.walk(9, 128, C.random_look(0), "street", 0, pan=0.25, travel=0.0, scale=0.5)
    flow = _flow_frames(frames)[1][0]
    shift = 0.25 * 128 / 8  # the background slides left by pan / (n - 1) of the frame per step
    assert motion.camera_motion(flow)[0, 2] == pytest.approx(-shift, abs=1.0)


@pytest.mark.parametrize("kind, iou_floor, recall_floor", [("dusk", 0.5, 0.8), ("street", 0.12, 0.5)])
def test_foreground_on_a_scene_is_the_figure_not_the_background(kind, iou_floor, recall_floor):
    """On a gradient or a street the border is not one colour: "different from the border colour" took the
    whole sky or street for the subject (IoU ~0.1). Colours not seen on the border find the figure on a
    gradient; a street whose buildings have colours of their own is still only partly separated."""
    look = C.random_look(3, outline=True)
    figure = C.draw_figure(192, look, C.Pose(), scale=0.8)
    truth = np.any(np.asarray(figure) != np.asarray(C.KEY, dtype=np.uint8), axis=2)
    image = np.asarray(C.compose(figure, C.scene(kind, 192, 192, 3)))
    assert not M.plain_background(image)
    mask = M.foreground_mask(image)
    old = np.abs(image.astype(np.int16) - M.border_colour(image).round().astype(np.int16)).max(axis=2) > 30
    iou, old_iou = ((m & truth).sum() / (m | truth).sum() for m in (mask, old))
    assert iou > iou_floor and iou > old_iou and (mask & truth).sum() / truth.sum() > recall_floor, (iou, old_iou)


def _sheet_with_truth(kind: str, seed: int, size: int, scale: float) -> tuple[list, list]:
    """Eight poses of one character over one `kind` of scene (as scenes.sheet_poses draws them) and the
    figure's true pixels in each."""
    look, rng = C.random_look(seed, outline=True), np.random.default_rng(seed)
    background = C.scene(kind, size, size, seed)
    images, truths = [], []
    for pose in C.SHEET_POSES["subtle"]:
        j = rng.uniform(-1, 1, 3)
        figure = C.draw_figure(size, look, pose, (0.5 + 0.04 * j[0], 0.56 + 0.03 * j[1]), scale * (1 + 0.05 * j[2]))
        truths.append(np.any(np.asarray(figure) != np.asarray(C.KEY, dtype=np.uint8), axis=2))
        images.append(np.asarray(C.compose(figure, background)))
    return images, truths


def _iou(mask, truth) -> float:
    return float((mask & truth).sum() / (mask | truth).sum())


def test_on_a_busy_street_a_sheet_finds_its_character_by_what_moves_from_pose_to_pose():
    """One picture alone cannot tell a building of its own colour from the character (IoU 0.1-0.3 on a
    street); across the poses the character is what moves and the street stays put."""
    images, truths = _sheet_with_truth("street", 1, 192, 0.6)
    alone = np.mean([_iou(M.foreground_mask(a), t) for a, t in zip(images, truths)])
    across = np.mean([_iou(m, t) for m, t in zip(F.sheet_masks(images), truths)])
    assert across > 0.85 and alone < 0.4, (across, alone)


def test_sheet_masks_keep_each_poses_own_mask_where_the_poses_share_no_busy_background():
    plain = [M.prepare([p], 256)[0] for p in Case("CHARACTER_SHEET", "good", 1, 128).inputs()["poses"]]
    for images in (plain, [np.asarray(C.compose(C.draw_figure(128, C.random_look(0)), C.scene("street", 128, 128, k)))
                           for k in range(8)]):  # plain poses; every pose on a street of its own
        for mask, image in zip(F.sheet_masks(images), images):
            assert np.array_equal(mask, M.foreground_mask(image))


@pytest.mark.parametrize("family, mode, seed, size", [("street", "one_stranger", 1, 192),
                                                      ("camera", "different_characters", 0, 128),
                                                      ("camera", "one_stranger", 0, 128)])
def test_a_sheet_of_other_characters_on_a_street_fails_on_identity(family, mode, seed, size):
    """These passed (identity 0.8-1.0): the buildings, taken for the character, were shared by every pose."""
    report = Case("CHARACTER_SHEET", mode, seed, size, family).score()
    floor = load_quality_config(None)["phases"]["CHARACTER_SHEET"]["critical"]["identity_consistency"]
    assert report.verdict == "fail" and report.metrics["identity_consistency"] < floor, report.metrics


def test_one_similarity_explains_a_reframed_repeat_and_not_another_pose():
    """A pose taken again 5% closer leaves no blob once warped back (only resampling slivers, removed by
    the opening); a pose with other arms or facing leaves one well above the floor's blob."""
    poses = [M.prepare([p], 256)[0] for p in FAMILIES["scenes"].modes["CHARACTER_SHEET"]["good"](1, 192)["poses"]]
    again = M.prepare([C.zoomed(Image.fromarray(poses[0]), 1.05)], 256)[0]
    blobs = P.repeat_blobs([poses[0], again, poses[1]], F.sheet_masks([poses[0], again, poses[1]]))
    assert blobs[0, 1] < P.REPEAT_SCALE / 4 and blobs[0, 2] > P.REPEAT_SCALE, blobs


@pytest.mark.parametrize("family, seed, size", [("street", 1, 192), ("dusk_slow", 2, 320)])
def test_a_reframed_repeated_sheet_is_not_passed(family, seed, size):
    """These passed: the aligned crops of a reframed repeat differ where its mask took in some background. One
    shift/zoom of the whole picture explains each repeat, so the second opinion contradicts the pass; the
    verdict survives re-deciding from the stored row."""
    case = Case("CHARACTER_SHEET", "repeated_poses", seed, size, family)
    report = case.score()
    assert report.verdict != "pass" and report.details["repeat_distinctness"] < 0.5, report.metrics
    assert report.verdict == "fail" or any("pose_distinctness signals disagree" in r for r in report.review_reasons)
    row = decision_row(case, report)
    assert redecide([row], load_quality_config(None))[0]["verdict"] == report.verdict


def test_a_character_in_other_hues_is_not_typical_of_the_sheet():
    """A dark green dragon among grey-and-black penguins (SuperTux, 128 px) passed: in RGB its greens lie
    within 40 units of their greys. Brightness keeps its RGB distance, hue and saturation count twice."""
    greys = (np.array([[40.0, 40, 40], [71, 72, 72], [86, 86, 86]]), np.array([0.3, 0.4, 0.3]))
    greens = (np.array([[22.0, 25, 23], [68, 92, 52], [75, 101, 59]]), np.array([0.2, 0.4, 0.4]))
    poses = [greys] * 7 + [greens]
    assert M.typicality(poses, 40.0)[-1] == 1.0  # plain RGB: the stranger looks typical
    weighted = [(M.hue_weighted(c), w) for c, w in poses]
    assert M.typicality(weighted, 40.0)[-1] <= 0.2 and M.typicality(weighted, 40.0)[0] == 1.0
    shades = M.hue_weighted(np.array([[71.0, 72, 72], [91, 92, 92]]))
    assert np.linalg.norm(shades[0] - shades[1]) == pytest.approx(np.sqrt(3) * 20)  # brightness: as in RGB


def _config_with_margin(margin: float) -> dict:
    cfg = load_quality_config()
    for section in cfg["phases"].values():
        section["review_margin"] = margin
    return cfg


def test_a_metric_near_its_floor_asks_for_review_with_the_reason():
    metrics = {"loop_seam": 0.9, "temporal_flicker": 0.9, "motion_smoothness": 0.9, "motion_regularity": 0.53,
               "subject_consistency": 0.9, "cleanliness": 0.9, "not_blank": 1.0, "dynamic_degree": 1.0}
    cfg = _config_with_margin(0.05)
    near = combine("ANIMATION_LOOP", metrics, cfg)
    assert near.verdict == "review" and near.passed and near.failures == []
    assert near.review_reasons == ["motion_regularity 0.530 within 0.05 of floor 0.5"]
    assert near.summary()["verdict"] == "review"
    far = combine("ANIMATION_LOOP", {**metrics, "motion_regularity": 0.3}, cfg)
    assert far.verdict == "fail" and not far.passed and far.failures == ["motion_regularity 0.300 < floor 0.5"]
    # one measure far below its floor fails even when another is only close
    both = combine("ANIMATION_LOOP", {**metrics, "motion_regularity": 0.52, "loop_seam": 0.1}, cfg)
    assert both.verdict == "fail"
    clear = combine("ANIMATION_LOOP", {**metrics, "motion_regularity": 0.9}, cfg)
    assert clear.verdict == "pass" and clear.review_reasons == []
    # without a margin, or with a forced threshold, the gate only passes or fails
    assert combine("ANIMATION_LOOP", metrics, _config_with_margin(0.0)).verdict == "pass"
    assert combine("ANIMATION_LOOP", metrics, cfg, threshold=1.01).verdict == "fail"


def test_review_margin_is_validated():
    raw = load_quality_config()
    raw["phases"]["FULL_VIDEO"]["review_margin"] = -0.1
    with pytest.raises(ValueError, match="review_margin"):
        load_quality_config(raw)


@pytest.mark.parametrize("on_review, expected", [("continue", "advance"), ("retry", "retry"), ("stop", "fail")])
def test_on_review_decides_what_a_review_does_to_the_chain(on_review, expected):
    assert gate_decision(True, 1, 2, "review", on_review) == expected
    assert gate_decision(True, 1, 2, "pass", on_review) == "advance"
    assert gate_decision(False, 3, 2, "fail", on_review) == "fail"


def test_a_stopped_chain_says_it_needs_a_review():
    history = [{"phase": "CHARACTER_SHEET", "seed": 7, "score": 0.81, "threshold": 0.8, "passed": True,
                "verdict": "review"}]
    assert next_step(history, 2).action == "run" and next_step(history, 2).phase == "ANIMATION_LOOP"
    done = history + [{**history[0], "phase": p, "verdict": "pass"} for p in ("ANIMATION_LOOP", "FULL_VIDEO")]
    assert next_step(done, 2).reason.endswith("flagged for review: CHARACTER_SHEET")
    stop = next_step(history, 2, "stop")
    assert stop.action == "failed" and "needs a review" in stop.reason
    assert next_step(history, 2, "retry").attempt == 2
    with pytest.raises(ValueError, match="on_review"):
        check_on_review("ask")


def test_fitting_puts_a_floor_midway_between_good_and_broken():
    rows = ([{"phase": "ANIMATION_LOOP", "expected_pass": True, "score": 0.9, "metric.loop_seam": v}
             for v in (0.7, 0.8, 0.95)]
            + [{"phase": "ANIMATION_LOOP", "expected_pass": False, "score": 0.9, "metric.loop_seam": v}
               for v in (0.1, 0.3)])
    section = {"critical": {"loop_seam": 0.5}, "threshold": 0.8}
    floors, threshold, accuracy = fit_phase(rows, section)
    assert accuracy == 1.0 and floors["loop_seam"] == pytest.approx(0.5, abs=0.011)  # midway in (0.3, 0.7]
    assert threshold <= 0.9


@pytest.fixture(scope="module")
def sample_rows():
    """A small sample of both splits, scored once: one seed of each failure class and of good outputs."""
    keep = {"good", "different_characters", "noisy", "blurred", "scene_cut", "vanishing_subject"}
    cases = [c for c in CALIBRATION_CASES + HELD_OUT_CASES
             if c.mode in keep and c.seed == 0 and c.family in ("scenes", "street", "camera")]
    return run_suite(cases)


def test_fitted_on_calibration_the_gates_still_reject_the_never_pass_classes_held_out(sample_rows):
    config, fitted = fit([r for r in sample_rows if r["split"] == CALIBRATION], load_quality_config())
    assert fitted and all(0 <= f["threshold"] <= 1 for f in fitted.values())
    held = redecide([r for r in sample_rows if r["split"] == HELD_OUT], config)
    never = [r for r in held if not r["expected_pass"]]
    passed = sorted((r["family"], r["phase"], r["mode"]) for r in never if r["verdict"] == "pass")
    # A known gap, not yet fixed at its cause (docs/quality-gates.md): in a video on a busy street the subject's
    # colours cannot be told from the buildings', so a subject vanishing into the street still passes (a
    # sheet's poses tell them apart: foreground.sheet_masks). Anything beyond it is a regression.
    assert set(passed) <= {("street", "FULL_VIDEO", "vanishing_subject")}, passed
    assert len(never) >= 10 and confusion(held)["all"]["false_accept"] == len(passed)


# ----------------------------------------------------------------------------- real hand-drawn art
# SuperTux's sprites and backgrounds (Debian `supertux-data`, GPL-3+ / CC-BY-SA, SuperTux Devel Team; the
# package's copyright file is kept beside the unpacked art) are fetched at test time by tests/art/install.sh
# and never committed. Without them these tests skip locally and fail under CI=true.

@pytest.fixture(scope="module")
def supertux():
    if not R.available():
        proc = subprocess.run(["bash", str(Path(__file__).parent / "art" / "install.sh")], capture_output=True,
                              text=True, timeout=900)
        if proc.returncode != 0 or not R.available():
            reason = f"the SuperTux art could not be installed: {proc.stderr.strip()[-400:]}"
            if os.environ.get("CI", "").lower() == "true":
                pytest.fail(f"CI=true but {reason}", pytrace=False)
            pytest.skip(reason)
    root = R.art_root()
    assert "GPL" in (root / "copyright").read_text()  # the licence notice travels with the art
    return root


@pytest.mark.parametrize("phase, mode", [("CHARACTER_SHEET", "good"), ("ANIMATION_LOOP", "good")])
def test_real_walk_cycles_and_their_frames_are_not_rejected(supertux, phase, mode):
    report = Case(phase, mode, 0, 192, "supertux").score()
    assert report.verdict != "fail", (report.failures, report.metrics)


@pytest.mark.parametrize("phase, seed, size", [("ANIMATION_LOOP", 1, 192), ("ANIMATION_LOOP", 5, 224),
                                              ("FULL_VIDEO", 1, 192), ("FULL_VIDEO", 5, 224),
                                              ("FULL_VIDEO", 0, 128), ("FULL_VIDEO", 4, 160)])
def test_real_walk_cycles_are_regular_motion_and_their_wobble_is_not(supertux, phase, seed, size):
    """A sprite walk cycle bobs and swings its limbs back every other drawing: step to step that read as
    jitter (motion_regularity 0.0-0.36). Each stride repeats the last one, which random wobble never does.
    Small videos (128, 160 px) also need the camera read where the backdrop has texture (a smooth sky's
    few textured pixels were the sprite's feet) and the sprite's whole-pixel steps taken as rounding."""
    floor = load_quality_config(None)["phases"][phase]["critical"]["motion_regularity"]
    good = Case(phase, "good", seed, size, "supertux").score()
    wobble = Case(phase, "jitter", seed, size, "supertux").score()
    assert good.metrics["motion_regularity"] >= floor, good.details["subject_velocity"]
    assert wobble.metrics["motion_regularity"] < floor


def test_a_real_stranger_in_other_hues_fails_a_real_sheet(supertux):
    report = Case("CHARACTER_SHEET", "one_stranger", 0, 128, "supertux").score()
    assert report.verdict == "fail" and "identity_consistency" in " ".join(report.failures), report.metrics


def test_real_sprites_repeated_and_reframed_are_not_passed(supertux):
    """This passed (pose_distinctness 0.87): one zoom of the whole picture explains each repeated frame."""
    report = Case("CHARACTER_SHEET", "repeated_poses", 0, 128, "supertux").score()
    assert report.verdict != "pass" and report.details["repeat_distinctness"] < 0.5, report.metrics


@pytest.mark.parametrize("phase, mode", [("CHARACTER_SHEET", "different_characters"), ("CHARACTER_SHEET", "noisy"),
                                         ("FULL_VIDEO", "scene_cut"), ("FULL_VIDEO", "vanishing_subject"),
                                         ("FULL_VIDEO", "blurred"), ("ANIMATION_LOOP", "jitter")])
def test_real_art_broken_the_never_pass_ways_is_not_passed(supertux, phase, mode):
    report = Case(phase, mode, 0, 192, "supertux").score()
    assert report.verdict != "pass", report.metrics


def test_orchestrate_body_checks_on_review(tmp_path):
    from animenb.server.orchestrate_validation import validate_orchestrate
    from animenb.server.validation import APIError

    values, _ = validate_orchestrate({"prompt": "a", "on_review": "stop"}, tmp_path, "tiny", lambda job_id: None)
    assert values["on_review"] == "stop"
    assert validate_orchestrate({"prompt": "a"}, tmp_path, "tiny", lambda job_id: None)[0]["on_review"] == "continue"
    with pytest.raises(APIError) as err:
        validate_orchestrate({"prompt": "a", "on_review": "ask"}, tmp_path, "tiny", lambda job_id: None)
    assert err.value.status_code == 422 and err.value.field == "on_review"


def test_an_encoder_the_colours_contradict_asks_for_review():
    """With an encoder the identity is its cosine; when the colours say another character is in the sheet,
    the gate does not pass on the encoder's word alone."""
    inputs = Case("CHARACTER_SHEET", "character_switch", 0, 128).inputs()

    def blind(images):  # an encoder that cannot tell the characters apart
        return np.ones((len(images), 4))

    from animenb.quality import score_character_sheet

    report = score_character_sheet(inputs["poses"], inputs["reference"], embed=blind)
    assert report.metrics["identity_consistency"] == 1.0 and report.verdict == "review"
    assert any("signals disagree" in r for r in report.review_reasons), report.review_reasons
    same = Case("CHARACTER_SHEET", "good", 0, 128).inputs()
    agreed = score_character_sheet(same["poses"], same["reference"], embed=blind)
    assert not any("disagree" in r for r in agreed.review_reasons)
