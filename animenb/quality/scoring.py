"""Phase scores and gate decisions: the metrics of animenb.quality.metrics, combined as quality.yaml says.

    score   = (Σ_i w_i m_i / Σ_i w_i) × Π_j min(1, g_j / floor_j)
    verdict = "fail"   when score < threshold - margin or some c_k < floor_k - margin
              "review" when the score or some c_k lies within `review_margin` of its threshold / floor
              "pass"   otherwise
    passed  = verdict != "fail"    (the chain may go on; a review is flagged, see chain.policy on_review)

m_i are the weighted metrics that could be computed for this input (no reference -> no
`reference_consistency`, no `embed` -> no `embedding_consistency`; the rest are renormalised), g_j
the validity multipliers (`not_blank`, `not_collapsed`, `dynamic_degree`) with their floors, c_k the
phase's critical properties (e.g. one identity across the poses, a closed seam, a clean picture).
A threshold given by the caller (orchestrator, notebook) scales the floors by threshold / configured
threshold, so that one number still sets the whole gate's strictness.
The weighted mean ranks outputs; the critical floors make the decision: a phase that fails the one
property it exists for fails its gate however well it does on the others. `failures` says why a gate
failed, `review_reasons` why it asks for a person: a measure this close to its floor is within the
metrics' own error on outputs they were not fitted to, so the gate does not pretend to know.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from . import metrics as M
from . import motion
from .config import check_threshold, load_quality_config, phase_name
from .foreground import sheet_masks
from .pose_following import pose_following
from .poses_repeat import REPEAT_SCALE, repeat_blobs

Embed = Callable[[list[Image.Image]], np.ndarray]
PASS, REVIEW, FAIL = "pass", "review", "fail"
VERDICTS = (PASS, REVIEW, FAIL)


@dataclass(frozen=True)
class QualityReport:
    """One phase's quality verdict. `metrics` are all in [0, 1]; `weights` are the renormalised
    weights actually used; `multipliers` the validity factors applied; `critical` the floors of the
    critical properties that were checked; `failures` one line per reason the gate failed (empty when
    it passed); `details` holds raw values, per-frame curves and (phase 1) the 8x8 pose-similarity
    matrices."""

    phase: str
    score: float
    threshold: float
    passed: bool
    metrics: dict[str, float]
    weights: dict[str, float]
    multipliers: dict[str, float] = field(default_factory=dict)
    critical: dict[str, float] = field(default_factory=dict)
    failures: list[str] = field(default_factory=list)
    details: dict[str, Any] = field(default_factory=dict)
    verdict: str = ""
    review_reasons: list[str] = field(default_factory=list)
    second_opinions: dict[str, float] = field(default_factory=dict)  # other measures of critical metrics

    def __post_init__(self):
        if not self.verdict:  # reports built without a verdict (older callers): the boolean decides
            object.__setattr__(self, "verdict", PASS if self.passed else FAIL)

    def summary(self) -> dict:
        """The part that goes into manifest.json under "quality"."""
        return {
            "phase": self.phase,
            "score": self.score,
            "passed": self.passed,
            "verdict": self.verdict,
            "review_reasons": list(self.review_reasons),
            "threshold": self.threshold,
            "failures": list(self.failures),
            "metrics": dict(self.metrics),
            "weights": dict(self.weights),
            "multipliers": dict(self.multipliers),
            "critical": dict(self.critical),
        }

    def as_dict(self) -> dict:
        """JSON-safe: numpy arrays become lists, numpy scalars plain numbers."""
        return _jsonable({**self.summary(), "details": self.details})


def _jsonable(x: Any) -> Any:
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if isinstance(x, np.ndarray):
        return _jsonable(x.tolist())
    if isinstance(x, np.generic):
        return x.item()
    if isinstance(x, float) and not np.isfinite(x):
        return None
    return x


def combine(
    phase: str,
    metrics: dict[str, float],
    config: dict,
    threshold: float | None = None,
    second_opinions: dict[str, float] | None = None,
) -> QualityReport:
    """Weighted mean of the available weighted metrics times the validity multipliers; the gate also
    needs every available critical metric at or above its floor. A `threshold` other than the
    configured one scales the floors by threshold / configured threshold. `second_opinions` are other
    measures of a critical property (identity from colours beside an encoder's): a pass they contradict
    becomes a review."""
    section = config["phases"][phase]
    weights = {k: w for k, w in section["weights"].items() if k in metrics and w > 0}
    if not weights:
        raise ValueError(f"No weighted metric of phase {phase} was computed; got {sorted(metrics)}.")
    total = sum(weights.values())
    weights = {k: w / total for k, w in weights.items()}
    base = sum(w * metrics[k] for k, w in weights.items())
    factors = {k: min(1.0, metrics[k] / floor) for k, floor in section["multipliers"].items() if k in metrics}
    score = round(float(base * np.prod(list(factors.values()))) if factors else float(base), 6)
    configured = section["threshold"]
    threshold = configured if threshold is None else check_threshold(threshold)
    # One number sets the gate's strictness: an overridden threshold moves the critical floors with it
    # (0 accepts everything, above the configured value every floor rises too).
    scale = threshold / configured if configured > 0 else 1.0
    critical = {k: round(floor * scale, 6) for k, floor in section["critical"].items() if k in metrics}
    margin = section["review_margin"]
    checks = [("score", score, threshold)] + [(k, metrics[k], floor) for k, floor in critical.items()]
    failures = [f"{k} {value:.3f} < floor {floor:g}" for k, value, floor in checks[1:] if value < floor]
    if score < threshold:
        failures.insert(0, f"score {score:.3f} < threshold {threshold:g}")
    # Within the margin of a floor (either side) the gate asks for a person instead of deciding; a measure
    # further below its floor still fails, whatever else is close. A threshold of 0 or above 1 is forced.
    reviews = (
        [
            f"{k} {v:.3f} within {margin:g} of {'threshold' if k == 'score' else 'floor'} {f:g}"
            for k, v, f in checks
            if abs(v - f) <= margin
        ]
        if 0 < threshold <= 1 and margin > 0
        else []
    )
    for k, other in (second_opinions or {}).items():
        floor = critical.get(k)
        if floor is not None and 0 < threshold <= 1 and (other >= floor) != (metrics[k] >= floor):
            reviews.append(f"{k} signals disagree: {metrics[k]:.3f} vs {other:.3f} (floor {floor:g})")
    if any(v < f - margin for _, v, f in checks) or (failures and not reviews):
        verdict = FAIL
    elif reviews:
        verdict = REVIEW
    else:
        verdict = PASS
    return QualityReport(
        phase=phase,
        score=score,
        threshold=threshold,
        passed=verdict != FAIL,
        metrics={k: round(float(v), 6) for k, v in metrics.items()},
        weights={k: round(w, 6) for k, w in weights.items()},
        multipliers={k: round(v, 6) for k, v in factors.items()},
        critical=critical,
        failures=failures if verdict == FAIL else [],
        verdict=verdict,
        review_reasons=reviews if verdict == REVIEW else [],
        second_opinions={k: round(float(v), 6) for k, v in (second_opinions or {}).items()},
    )


def _config(config: str | Path | dict | None) -> dict:
    return load_quality_config(config)  # validation is idempotent, so an already loaded dict is fine


def _check_images(images: Sequence, name: str, minimum: int) -> None:
    if images is None or isinstance(images, (str, bytes)) or len(images) < minimum:
        got = (
            "None"
            if images is None
            else (repr(images) if isinstance(images, (str, bytes)) else f"{len(images)} images")
        )
        raise ValueError(f"`{name}` must be a list of at least {minimum} PIL images or HxWx3 uint8 arrays, got {got}.")


def _pil(images: Sequence[M.ImageLike]) -> list[Image.Image]:
    return [im.convert("RGB") if isinstance(im, Image.Image) else Image.fromarray(M.as_array(im)) for im in images]


def _embed(embed: Embed, images: Sequence[M.ImageLike]) -> np.ndarray:
    feats = np.asarray(embed(_pil(images)), dtype=np.float64)
    if feats.ndim < 2 or feats.shape[0] != len(images):
        raise ValueError(f"`embed` must return one feature row per image ({len(images)}), got shape {feats.shape}.")
    return feats.reshape(len(images), -1)


def _mapped(matrix: np.ndarray, low: float, high: float) -> np.ndarray:
    out = np.clip((matrix - low) / (high - low), 0.0, 1.0)
    np.fill_diagonal(out, 1.0)
    return out


def _clean(images: Sequence[M.ImageLike], work: list[np.ndarray], mp: dict) -> tuple[list[float], list[float], dict]:
    """Per image: sharpness (blur effect at the working size) and noise_free (noise level at the native
    size, where downscaling has not averaged it away), both mapped to [0, 1]."""
    sigma = [M.noise_sigma(M.as_array(im)) for im in images]
    blur = [M.blur_effect(a) for a in work]
    sharp = [M.map_linear(b, mp["blur_high"], mp["blur_low"]) for b in blur]
    quiet = [M.map_linear(s, mp["noise_high"], mp["noise_low"]) for s in sigma]
    return sharp, quiet, {"blur_effect_per_image": blur, "noise_sigma_per_image": sigma}


def _identity_matrix(bands: list, distance: float) -> np.ndarray:
    return M.similarity_matrix(bands, lambda a, b: M.identity_similarity(a, b, distance))


# ----------------------------------------------------------------------------- phase 1


def score_character_sheet(
    poses: Sequence[M.ImageLike],
    reference: M.ImageLike | None = None,
    embed: Embed | None = None,
    *,
    threshold: float | None = None,
    config: str | Path | dict | None = None,
    skeletons: Sequence[M.ImageLike] | None = None,
) -> QualityReport:
    """Score a character sheet's poses (8 expected, at least 2).

    identity_consistency  critical: one character. Without an encoder, the smaller of ``min_i median_{j≠i} S_ij``
                          (M.outlier_identity) of the colour-structure matrix S (M.identity_similarity of
                          M.colour_bands) and the least typical pose's M.typicality (no pose brings colours of its
                          own), mapped [identity_low, identity_high] -> [0, 1]. With `embed`, the encoder decides
                          (CLIP-I as the primary signal): M.outlier_identity of the cosine matrix mapped
                          [embedding_low, embedding_high]
    pose_distinctness     critical: ``min(1, min_{i<j} MAD(crop_i, crop_j) / distinct_scale)`` over aligned
                          foreground crops: no pose is a repeat of another. Second opinion (a pass it
                          contradicts becomes a review): ``min(1, min_{i<j} blob_ij / REPEAT_SCALE)``, the
                          largest blob one similarity transform of the whole picture leaves between two poses
                          (animenb.quality.poses_repeat): a reframed repeat leaves none
    cleanliness           critical: the worst pose's min(sharpness, noise_free)
    palette_consistency   mean off-diagonal Bhattacharyya coefficient of foreground colour histograms
    structure_consistency mean off-diagonal SSIM of aligned foreground crops, mapped [low, high] -> [0, 1]
    sharpness, noise_free means over poses: blur effect mapped [blur_high, blur_low] -> [0, 1], noise
                          sigma mapped [noise_high, noise_low] -> [0, 1] (informational)
    reference_consistency mean palette similarity of each pose to `reference` (when given)
    embedding_consistency mean off-diagonal cosine of `embed` features, mapped [low, high] -> [0, 1]
    not_blank             worst pose's contrast score (multiplier)
    not_collapsed         min(1, mean pairwise |pose_i - pose_j| / floor) (multiplier)
    pose_following        with `skeletons` (the OpenPose images the poses were given): the fraction of poses
                          whose silhouette matches their own skeleton best (animenb.quality.pose_following;
                          informational)
    """
    _check_images(poses, "poses", 2)
    cfg = _config(config)
    mp = cfg["mappings"]
    imgs = M.prepare(poses, cfg["work_size"])
    same = M.prepare(poses, cfg["work_size"], size=(imgs[0].shape[1], imgs[0].shape[0]))
    tol, bins = mp["foreground_tolerance"], mp["palette_bins"]

    masks = sheet_masks(imgs, tol)  # across the poses: on a busy scene, what moves from pose to pose
    palettes = [M.palette(a, tol, bins, m) for a, m in zip(imgs, masks)]
    palette_m = M.similarity_matrix(palettes, M.bhattacharyya)
    crops = [M.aligned_crop(a, mp["structure_crop"], tol) for a in imgs]
    ssim_m = M.similarity_matrix(crops, M.ssim)
    structure_m = _mapped(ssim_m, mp["structure_low"], mp["structure_high"])
    bands = [M.colour_bands(a, int(mp["identity_bands"]), tol, mask=m) for a, m in zip(imgs, masks)]
    colour_identity_m = _identity_matrix(bands, mp["identity_distance"])
    pose_diff = M.pose_differences(crops)
    # a second opinion on pose_distinctness: can one shift/zoom of the whole picture explain a pose from another?
    repeat_m = repeat_blobs(imgs, masks)
    repeat_distinct = float(min(1.0, repeat_m[np.triu_indices(len(imgs), 1)].min() / REPEAT_SCALE))
    sharp, quiet, clean_details = _clean(poses, imgs, mp)
    blank = [M.not_blank(a, mp["blank_std_floor"]) for a in imgs]
    mad_m = M.similarity_matrix(same, M.mean_abs_diff)
    np.fill_diagonal(mad_m, 0.0)
    mean_mad = M.mean_off_diagonal(mad_m) if len(imgs) > 1 else 0.0
    nearest_pose = float(pose_diff[np.triu_indices(len(imgs), 1)].min())

    identity_m, identity_source = colour_identity_m, "colour"
    metrics = {
        "palette_consistency": M.mean_off_diagonal(palette_m),
        "structure_consistency": M.mean_off_diagonal(structure_m),
        "pose_distinctness": min(1.0, nearest_pose / mp["distinct_scale"]),
        "cleanliness": float(min(min(s, q) for s, q in zip(sharp, quiet))),
        "sharpness": float(np.mean(sharp)),
        "noise_free": float(np.mean(quiet)),
        "not_blank": float(min(blank)),
        "not_collapsed": float(min(1.0, mean_mad / mp["collapse_mad_floor"])),
    }
    details: dict[str, Any] = {
        "palette_matrix": palette_m,
        "ssim_matrix": ssim_m,
        "structure_matrix": structure_m,
        "colour_identity_matrix": colour_identity_m,
        "pose_difference_matrix": pose_diff,
        "sharpness_per_pose": sharp,
        "noise_free_per_pose": quiet,
        **clean_details,
        "not_blank_per_pose": blank,
        "mean_pairwise_abs_diff": mean_mad,
        "repeat_blob_matrix": repeat_m,
        "repeat_distinctness": repeat_distinct,
    }
    w = cfg["phases"]["CHARACTER_SHEET"]["weights"]
    parts = [
        (w.get("palette_consistency", 0), palette_m),
        (w.get("structure_consistency", 0), structure_m),
        (w.get("identity_consistency", 0), _mapped(colour_identity_m, mp["identity_low"], mp["identity_high"])),
    ]
    if reference is not None:
        ref = M.prepare([reference], cfg["work_size"])[0]
        ref_sims = [M.bhattacharyya(p, M.palette(ref, tol, bins)) for p in palettes]
        metrics["reference_consistency"] = float(np.mean(ref_sims))
        details["reference_similarity_per_pose"] = ref_sims
    if embed is not None:
        feats = _embed(embed, list(poses) + ([reference] if reference is not None else []))
        cos = M.cosine_matrix(feats)
        pose_cos = cos[: len(poses), : len(poses)]
        metrics["embedding_consistency"] = M.map_linear(
            M.mean_off_diagonal(pose_cos), mp["embedding_low"], mp["embedding_high"]
        )
        details["embedding_cosine_matrix"] = pose_cos
        embed_m = _mapped(pose_cos, mp["embedding_low"], mp["embedding_high"])
        parts.append((w.get("embedding_consistency", 0), embed_m))
        identity_m, identity_source = embed_m, "embedding"
    # hue counts twice: a character whose colours are another's in other hues is not "typical" of them
    typical = M.typicality(
        [(M.hue_weighted(c), w) for c, w in (M.dominant_colours(a[m]) for a, m in zip(imgs, masks))],
        mp["identity_distance"],
    )
    details["typicality_per_pose"] = typical
    colour_identity = M.map_linear(
        min(M.outlier_identity(colour_identity_m), float(typical.min())), mp["identity_low"], mp["identity_high"]
    )
    second_opinions = {"pose_distinctness": repeat_distinct}
    if identity_source == "colour":
        metrics["identity_consistency"] = colour_identity
    else:  # the encoder decides, already mapped to [0, 1]; the colours are a second opinion
        metrics["identity_consistency"] = M.outlier_identity(identity_m)
        second_opinions["identity_consistency"] = colour_identity
        details["colour_identity_consistency"] = colour_identity
    details["identity_source"] = identity_source
    total = sum(p[0] for p in parts) or 1.0
    details["pose_similarity"] = sum(p[0] * p[1] for p in parts) / total
    if skeletons is not None:
        metrics["pose_following"], following = pose_following(poses, skeletons, tolerance=tol)
        details.update(following)
    report = combine("CHARACTER_SHEET", metrics, cfg, threshold, second_opinions)
    return _with_details(report, details)


def _with_details(report: QualityReport, details: dict) -> QualityReport:
    return replace(report, details=details)


# ----------------------------------------------------------------------------- phases 2 and 3


def _temporal(
    frames: Sequence[M.ImageLike], cfg: dict, embed: Embed | None, extra: M.ImageLike | None, cyclic: bool
) -> tuple:
    """Metrics shared by loops and videos; `extra` (reference or source) is embedded with the frames;
    `cyclic` (a loop) counts the wrap-around step in motion regularity."""
    mp = cfg["mappings"]
    imgs = M.prepare(frames, cfg["work_size"])
    size = (imgs[0].shape[1], imgs[0].shape[0])
    imgs = M.prepare(frames, cfg["work_size"], size=size)
    # Flow and warping error on lightly smoothed frames: a render's grain is not motion error.
    small = [M.smoothed(a) for a in M.prepare(imgs, cfg["flow_size"])]
    flow_list = M.flows(small)
    tol, bins = mp["foreground_tolerance"], mp["palette_bins"]
    masks = [M.foreground_mask(a, tol) for a in imgs]
    palettes = [M.palette(a, tol, bins, m) for a, m in zip(imgs, masks)]
    bands = [M.colour_bands(a, int(mp["identity_bands"]), tol, mask=m) for a, m in zip(imgs, masks)]
    distance = mp["identity_distance"]
    subject_raw, subject_curve = M.subject_consistency(bands, lambda a, b: M.identity_similarity(a, b, distance))
    sharp, quiet, clean_details = _clean(frames, imgs, mp)
    clean = [min(s, q) for s, q in zip(sharp, quiet)]
    blank = [M.not_blank(a, mp["blank_std_floor"]) for a in imgs]
    warp_err = M.warping_errors(small, flow_list)
    diffs = M.adjacent_diffs(imgs)
    path = M.trajectory(imgs, tol, masks)
    # Regularity on the subject's motion relative to the background (camera pans and zooms removed),
    # against the motion's own speed, or against its own cycle (a walk repeats each stride); a loop's
    # wrap-around step counts as a step.
    velocities = motion.subject_velocities(
        small,
        flow_list + ([M.farneback(small[-1], small[0])] if cyclic else []),
        tolerance=tol,
        texture_floor=mp["texture_floor"],
    )
    dynamic, span_magnitudes = motion.dynamic_degree(small, flow_list, mp["dynamic_threshold"], int(mp["dynamic_span"]))
    # Velocities are in fractions of the shorter side: one pixel of the source is the grid's own rounding.
    resolution = 1.0 / min(M.as_array(frames[0]).shape[:2])
    jitter = M.motion_jitter(
        velocities,
        cyclic=cyclic,
        min_speed=mp["jitter_min_speed"],
        cycle_gain=mp["jitter_cycle_gain"],
        resolution=resolution,
    )
    metrics = {
        "temporal_flicker": M.temporal_flicker(imgs, mp["flicker_low"]),
        "motion_smoothness": float(np.clip(1 - warp_err.mean() / mp["smoothness_scale"], 0, 1)),
        "motion_regularity": M.map_linear(jitter, mp["jitter_high"], mp["jitter_low"]),
        "subject_consistency": M.map_linear(float(np.min(subject_curve)), mp["identity_low"], mp["identity_high"]),
        "dynamic_degree": dynamic,
        "cleanliness": float(np.quantile(clean, mp["frame_quantile"])),
        "sharpness": float(np.mean(sharp)),
        "noise_free": float(np.mean(quiet)),
        "not_blank": float(min(blank)),
    }
    details: dict[str, Any] = {
        "frame_count": len(imgs),
        "adjacent_abs_diff": diffs,
        "warping_error": warp_err,
        "flow_magnitude": M.flow_magnitudes(flow_list),
        "span_flow_magnitude": span_magnitudes,
        "subject_consistency_curve": subject_curve,
        "subject_consistency_mean": subject_raw,
        "trajectory": path,
        "subject_velocity": velocities,
        "jitter_ratio": jitter,
        "plain_background": all(M.plain_background(a, tol) for a in imgs),
        "sharpness_per_frame": sharp,
        "noise_free_per_frame": quiet,
        **clean_details,
        "not_blank_per_frame": blank,
        "vbench_temporal_flickering": M.vbench_temporal_flickering(imgs),
    }
    if embed is not None:
        feats = _embed(embed, list(frames) + ([extra] if extra is not None else []))
        cos = M.cosine_matrix(feats)
        n = len(frames)
        emb_subject, emb_curve = M.subject_consistency(list(range(n)), lambda i, j: cos[i, j])
        value = emb_subject if extra is None else (emb_subject + float(cos[:n, n].mean())) / 2
        metrics["embedding_consistency"] = M.map_linear(value, mp["embedding_low"], mp["embedding_high"])
        details["embedding_subject_curve"] = emb_curve
        if extra is not None:
            details["embedding_cosine_to_reference"] = cos[:n, n]
    return metrics, details, imgs, palettes, small, warp_err


def score_animation_loop(
    frames: Sequence[M.ImageLike],
    reference: M.ImageLike | None = None,
    embed: Embed | None = None,
    *,
    threshold: float | None = None,
    config: str | Path | dict | None = None,
) -> QualityReport:
    """Score a loop (16 frames expected, at least 3).

    loop_seam            critical: the wrap-around step looks like any other step, in appearance and in where
                         the subject is (M.loop_seam with the subject's trajectory)
    motion_smoothness    critical: ``clip(1 - mean flow warping error / smoothness_scale, 0, 1)``
    motion_regularity    critical: M.motion_jitter of the subject's velocity relative to the background
                         (wrapping around), mapped [jitter_high, jitter_low] -> [0, 1]: no jumps, no
                         stop-and-go; a drawn cycle (a walk) is judged against its own repeat
    subject_consistency  critical: the worst frame's VBench term ``(S(f_t, f_{t-1}) + S(f_t, f_0)) / 2`` with
                         S = M.identity_similarity, mapped [identity_low, identity_high] -> [0, 1]
    cleanliness          critical: the `frame_quantile` (lower quartile) of per-frame min(sharpness, noise_free)
    temporal_flicker, reference_consistency (palette vs `reference`, e.g. the sheet), embedding_consistency
    (with `embed`), and the multipliers not_blank and dynamic_degree."""
    _check_images(frames, "frames", 3)
    cfg = _config(config)
    mp = cfg["mappings"]
    metrics, details, imgs, palettes, small, warp_err = _temporal(frames, cfg, embed, reference, cyclic=True)
    # Where the subject is says how big the seam should be only when the background lets us find it.
    path = details["trajectory"] if details["plain_background"] else None
    min_speed = mp["jitter_min_speed"]
    metrics["loop_seam"] = M.loop_seam(imgs, mp["seam_tolerance"], small, warp_err, path, min_speed)
    details["loop_seam_ratio"] = M.loop_seam_ratio(imgs, small, warp_err, path, min_speed)
    details["seam_warping_error"] = float(M.warping_errors([small[-1], small[0]])[0])
    details["seam_abs_diff"] = M.mean_abs_diff(imgs[-1], imgs[0])
    if reference is not None:
        ref = M.prepare([reference], cfg["work_size"])[0]
        ref_pal = M.palette(ref, mp["foreground_tolerance"], mp["palette_bins"])
        sims = [M.bhattacharyya(p, ref_pal) for p in palettes]
        metrics["reference_consistency"] = float(np.mean(sims))
        details["reference_similarity_per_frame"] = sims
    return _with_details(combine("ANIMATION_LOOP", metrics, cfg, threshold), details)


def score_full_video(
    frames: Sequence[M.ImageLike],
    source_image: M.ImageLike | None,
    embed: Embed | None = None,
    *,
    threshold: float | None = None,
    config: str | Path | dict | None = None,
) -> QualityReport:
    """Score a video's frames (at least 3).

    dynamic_degree       critical (and multiplier): the share of steps that move, from frame to frame or over a
                         run of `dynamic_span` steps (motion.dynamic_degree); a frozen video scores 0
    subject_consistency, motion_smoothness, motion_regularity, cleanliness: critical, as for loops (no wrap)
    source_consistency   critical: mean palette similarity of the frames to `source_image` × mapped
                         SSIM(first frame, source) × mapped foreground IoU(first frame, source) (all must hold:
                         same colours, same picture, same silhouette in the same place)
    temporal_flicker, embedding_consistency (with `embed`), and the multiplier not_blank."""
    _check_images(frames, "frames", 3)
    cfg = _config(config)
    mp = cfg["mappings"]
    metrics, details, imgs, palettes, _, _ = _temporal(frames, cfg, embed, source_image, cyclic=False)
    if source_image is not None:
        h, w = imgs[0].shape[:2]
        src = M.prepare([source_image], cfg["work_size"], size=(w, h))[0]
        src_pal = M.palette(src, mp["foreground_tolerance"], mp["palette_bins"])
        sims = [M.bhattacharyya(p, src_pal) for p in palettes]
        first_ssim = M.ssim(imgs[0], src)
        first_iou = M.mask_iou(imgs[0], src, mp["foreground_tolerance"])
        metrics["source_consistency"] = float(
            np.mean(sims)
            * M.map_linear(first_ssim, mp["structure_low"], mp["structure_high"])
            * M.map_linear(first_iou, mp["iou_low"], mp["iou_high"])
        )
        details["source_similarity_per_frame"] = sims
        details["first_frame_ssim_to_source"] = first_ssim
        details["first_frame_foreground_iou_to_source"] = first_iou
    return _with_details(combine("FULL_VIDEO", metrics, cfg, threshold), details)


# ----------------------------------------------------------------------------- run directories


def _open(root: Path, rel: str | None) -> Image.Image | None:
    if not rel:
        return None
    path = root / rel
    if not path.is_file():
        raise FileNotFoundError(f"The manifest names {rel!r} but {path} does not exist.")
    with Image.open(path) as im:
        return im.convert("RGB")


def run_embedder(manifest: dict) -> Embed | None:
    """The image encoder of the run's own models, for `embed="auto"`: the IP-Adapter CLIP encoder of a
    diffusers run's profile (cached with its pipeline), None for other backends or unknown profiles."""
    backend = manifest.get("backend") or {}
    models = backend.get("models") or {}
    profile = models.get("path") or models.get("profile")  # the YAML path also finds ad-hoc profiles
    if backend.get("backend") != "diffusers" or not profile:
        return None
    from ..models import image_embedder
    from ..profiles import load_profile

    try:
        loaded = load_profile(profile)
    except ValueError:
        return None
    return image_embedder(loaded)


def score_output_dir(
    output_dir: str | Path,
    phase: int | str | None = None,
    *,
    threshold: float | None = None,
    embed: Embed | str | None = None,
    config: str | Path | dict | None = None,
) -> QualityReport:
    """Score a run directory from its manifest.json (phase from the manifest unless given).

    `embed="auto"` uses the run's own image encoder (see `run_embedder`) when there is one.
    """
    from ..manifest import MANIFEST_NAME, read_manifest

    root = Path(output_dir)
    manifest = read_manifest(root)
    if embed == "auto":
        embed = run_embedder(manifest)
    if phase is None:
        phase = (manifest.get("phase") or {}).get("id") or (manifest.get("phase") or {}).get("name")
        if phase is None:
            raise ValueError(f"`phase` is not given and {root / MANIFEST_NAME} has no phase.")
    name = phase_name(phase)
    outputs = manifest.get("outputs") or {}
    key = "poses" if name == "CHARACTER_SHEET" else "frames"
    paths = outputs.get(key)
    if not paths:
        raise ValueError(f"{root / MANIFEST_NAME} has no outputs.{key} to score for phase {name}.")
    images = [_open(root, p) for p in paths]
    if name == "CHARACTER_SHEET":
        skeletons = [_open(root, p) for p in outputs.get("pose_skeletons") or []] or None
        return score_character_sheet(
            images,
            _open(root, outputs.get("reference")),
            embed,
            threshold=threshold,
            config=config,
            skeletons=skeletons,
        )
    if name == "ANIMATION_LOOP":
        return score_animation_loop(
            images, _open(root, outputs.get("reference")), embed, threshold=threshold, config=config
        )
    return score_full_video(images, _open(root, outputs.get("source_image")), embed, threshold=threshold, config=config)
