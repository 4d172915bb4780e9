"""Phase scores and gates on synthetic inputs; config, report, run directories."""
import json

import numpy as np
import pytest
import yaml

from animenb.manifest import read_manifest, write_manifest
from animenb.quality import (QualityReport, default_config_path, load_quality_config, make_demo_run, record_quality,
                             score_animation_loop, score_character_sheet, score_full_video, score_output_dir)
from animenb.quality import synthetic as S

try:
    from quality_fixtures import (different_characters, good_loop, loop_variants, palette_embed, same_character,
                                  sheet_reference, video)
except ImportError:  # tests/ imported as a package
    from tests.quality_fixtures import (different_characters, good_loop, loop_variants, palette_embed,
                                        same_character, sheet_reference, video)


# ----------------------------------------------------------------------------- gates

@pytest.mark.parametrize("reference", [False, True])
def test_good_loop_passes_the_default_gate(reference):
    report = score_animation_loop(list(good_loop()), sheet_reference() if reference else None)
    assert report.threshold == 0.80
    assert report.passed, report.metrics
    assert report.score > 0.85
    assert ("reference_consistency" in report.metrics) is reference


@pytest.fixture(scope="module")
def good_loop_report():
    return score_animation_loop(list(good_loop()), sheet_reference())


@pytest.mark.parametrize("bad", ["broken_seam", "open_arc", "shuffled", "flicker", "blurred", "frozen", "blank"])
def test_bad_loops_fail_the_default_gate(bad, good_loop_report):
    good = good_loop_report
    report = score_animation_loop(loop_variants()[bad], sheet_reference())
    assert not report.passed, (bad, report.score, report.metrics)
    assert report.score < good.score - 0.1


def test_frozen_and_blank_score_zero_through_the_multipliers():
    frozen = score_animation_loop(loop_variants()["frozen"])
    assert frozen.metrics["dynamic_degree"] == 0.0 and frozen.multipliers["dynamic_degree"] == 0.0
    assert frozen.score == 0.0
    blank = score_animation_loop(loop_variants()["blank"])
    assert blank.multipliers["not_blank"] == 0.0 and blank.score == 0.0


def test_one_black_frame_fails_a_loop():
    frames = list(good_loop())
    frames[5] = S.blank(1, 128)[0]
    assert not score_animation_loop(frames).passed


def test_same_character_sheet_passes_and_different_characters_fail():
    good = score_character_sheet(list(same_character()), reference=same_character()[0])
    bad = score_character_sheet(list(different_characters()), reference=same_character()[0])
    assert good.passed and good.score > 0.9
    assert not bad.passed and bad.score < 0.5
    assert good.metrics["palette_consistency"] > bad.metrics["palette_consistency"]
    assert good.metrics["structure_consistency"] > bad.metrics["structure_consistency"]
    m = np.asarray(good.details["pose_similarity"])
    assert m.shape == (8, 8) and np.allclose(m, m.T) and np.allclose(np.diag(m), 1)


@pytest.mark.parametrize("bad", ["blank", "collapsed", "blurred"])
def test_degenerate_sheets_fail(bad):
    poses = {"blank": S.blank(8, 128), "collapsed": [same_character()[0]] * 8,
             "blurred": S.blurred(list(same_character()), 3)}[bad]
    report = score_character_sheet(poses)
    assert not report.passed, report.metrics
    if bad != "blurred":
        assert report.score == 0.0


def test_good_video_passes_and_frozen_flickering_shuffled_fail():
    frames = list(video())
    assert score_full_video(frames, frames[0]).passed
    for bad in (S.frozen(frames), S.with_flicker(frames), S.shuffled(frames)):
        assert not score_full_video(bad, frames[0]).passed


def test_video_source_consistency_ranks_true_source_above_another_character():
    frames = list(video())
    true = score_full_video(frames, frames[0]).metrics["source_consistency"]
    other = score_full_video(frames, different_characters()[2]).metrics["source_consistency"]
    assert true > 0.9 > 0.6 > other


def test_embedding_consistency_is_added_when_an_encoder_is_given():
    good = score_character_sheet(list(same_character()), embed=palette_embed)
    bad = score_character_sheet(list(different_characters()), embed=palette_embed)
    assert "embedding_consistency" in good.weights
    assert sum(good.weights.values()) == pytest.approx(1.0, abs=1e-5)
    assert good.metrics["embedding_consistency"] > bad.metrics["embedding_consistency"]
    loop = score_animation_loop(list(good_loop()), sheet_reference(), embed=palette_embed)
    assert "embedding_consistency" in loop.metrics and loop.passed
    assert "embedding_cosine_to_reference" in loop.details


def test_embed_must_return_one_row_per_image():
    with pytest.raises(ValueError, match="one feature row per image"):
        score_character_sheet(list(same_character()), embed=lambda ims: np.zeros((1, 4)))


# ----------------------------------------------------------------------------- thresholds and config

def test_threshold_override_forces_failure():
    report = score_animation_loop(list(good_loop()), threshold=1.01)
    assert report.threshold == 1.01 and not report.passed


@pytest.mark.parametrize("bad", [-0.1, float("nan"), "0.8", True])
def test_bad_threshold_is_rejected(bad):
    with pytest.raises(ValueError, match="`threshold`"):
        score_animation_loop(list(good_loop()), threshold=bad)


def test_config_file_loads_with_weights_per_phase():
    cfg = load_quality_config()
    assert default_config_path().name == "quality.yaml"
    for phase in ("CHARACTER_SHEET", "ANIMATION_LOOP", "FULL_VIDEO"):
        assert cfg["phases"][phase]["threshold"] == 0.80
        assert sum(cfg["phases"][phase]["weights"].values()) > 0


def test_config_threshold_and_weights_are_used(tmp_path):
    raw = yaml.safe_load(default_config_path().read_text())
    raw["phases"]["ANIMATION_LOOP"]["threshold"] = 0.99
    raw["phases"]["ANIMATION_LOOP"]["weights"] = {"loop_seam": 1.0}
    path = tmp_path / "q.yaml"
    path.write_text(yaml.safe_dump(raw))
    report = score_animation_loop(loop_variants()["broken_seam"], config=path)
    assert report.threshold == 0.99 and report.weights == {"loop_seam": 1.0}
    assert report.score == pytest.approx(report.metrics["loop_seam"], abs=1e-6)


@pytest.mark.parametrize("edit, match", [
    (lambda c: c["phases"]["FULL_VIDEO"]["weights"].update(loop_seam=1.0), "unknown metric 'loop_seam'"),
    (lambda c: c["phases"]["CHARACTER_SHEET"]["weights"].update(sharpness=-1), "weights.sharpness"),
    (lambda c: c["mappings"].update(nonsense=1), "mappings.nonsense"),
    (lambda c: c["phases"].pop("FULL_VIDEO"), "phases.FULL_VIDEO"),
    (lambda c: c["mappings"].update(embedding_low=0.99), "embedding_low"),
])
def test_config_errors_name_the_key(edit, match):
    raw = yaml.safe_load(default_config_path().read_text())
    edit(raw)
    with pytest.raises(ValueError, match=match):
        load_quality_config(raw)


def test_inputs_are_checked():
    with pytest.raises(ValueError, match="`frames`"):
        score_animation_loop(list(good_loop())[:2])
    with pytest.raises(ValueError, match="`poses`"):
        score_character_sheet("poses.png")


# ----------------------------------------------------------------------------- report and run directories

def test_report_is_frozen_and_json_safe():
    report = score_animation_loop(list(good_loop()))
    assert isinstance(report, QualityReport)
    with pytest.raises(AttributeError):
        report.score = 1.0
    d = json.loads(json.dumps(report.as_dict()))
    assert d["phase"] == "ANIMATION_LOOP" and 0 <= d["score"] <= 1
    assert len(d["details"]["adjacent_abs_diff"]) == 15
    assert all(0 <= v <= 1 for v in d["metrics"].values())


@pytest.mark.parametrize("phase", [1, 2, 3])
def test_score_output_dir_reads_the_manifest_and_records(tmp_path, phase):
    make_demo_run(tmp_path, phase, size=96)
    report = score_output_dir(tmp_path)
    assert report.phase == {1: "CHARACTER_SHEET", 2: "ANIMATION_LOOP", 3: "FULL_VIDEO"}[phase]
    assert report.passed, report.metrics
    entry = record_quality(tmp_path, report)
    manifest = read_manifest(tmp_path)
    assert manifest["quality"] == json.loads(json.dumps(entry))
    assert manifest["quality"]["score"] == report.score and manifest["quality"]["file"] == "quality.json"
    assert any(f["path"] == "quality.json" for f in manifest["files"])
    saved = json.loads((tmp_path / "quality.json").read_text())
    assert saved["score"] == report.score and "details" in saved
    record_quality(tmp_path, report)  # idempotent: one files entry
    assert sum(f["path"] == "quality.json" for f in read_manifest(tmp_path)["files"]) == 1


def test_score_output_dir_errors(tmp_path):
    with pytest.raises(FileNotFoundError):
        score_output_dir(tmp_path)
    write_manifest(tmp_path, {"phase": {"id": 2, "name": "ANIMATION_LOOP"}, "outputs": {"frames": ["missing.png"] * 3}})
    with pytest.raises(FileNotFoundError, match="missing.png"):
        score_output_dir(tmp_path)
    write_manifest(tmp_path, {"phase": {"id": 2}, "outputs": {}})
    with pytest.raises(ValueError, match="outputs.frames"):
        score_output_dir(tmp_path)
    with pytest.raises(ValueError, match="`phase`"):
        score_output_dir(tmp_path, phase=7)


def test_score_output_dir_names_an_unknown_embed_string(tmp_path):
    make_demo_run(tmp_path, 2, size=64)
    with pytest.raises(ValueError, match="`embed`"):  # not a TypeError from calling the string
        score_output_dir(tmp_path, embed="clip")
