"""Phase scores: combine the metrics of animenb.quality.metrics with the weights of quality.yaml.

    score = (Σ_i w_i m_i / Σ_i w_i) × Π_j min(1, g_j / floor_j),   passed = score >= threshold

m_i are the weighted metrics that could be computed for this input (no reference -> no
`reference_consistency`, no `embed` -> no `embedding_consistency`; the rest are renormalised), g_j
the validity checks (`not_blank`, `not_collapsed`, `dynamic_degree`) with their floors.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from . import metrics as M
from .config import check_threshold, load_quality_config, phase_name

Embed = Callable[[list[Image.Image]], np.ndarray]


@dataclass(frozen=True)
class QualityReport:
    """One phase's quality verdict. `metrics` are all in [0, 1]; `weights` are the renormalised
    weights actually used; `multipliers` the validity factors applied; `details` holds raw values,
    per-frame curves and (phase 1) the 8x8 pose-similarity matrices."""
    phase: str
    score: float
    threshold: float
    passed: bool
    metrics: dict[str, float]
    weights: dict[str, float]
    multipliers: dict[str, float] = field(default_factory=dict)
    details: dict[str, Any] = field(default_factory=dict)

    def summary(self) -> dict:
        """The part that goes into manifest.json under "quality"."""
        return {"phase": self.phase, "score": self.score, "passed": self.passed, "threshold": self.threshold,
                "metrics": dict(self.metrics), "weights": dict(self.weights), "multipliers": dict(self.multipliers)}

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


def combine(phase: str, metrics: dict[str, float], config: dict, threshold: float | None = None) -> QualityReport:
    """Weighted mean of the available weighted metrics times the validity multipliers."""
    section = config["phases"][phase]
    weights = {k: w for k, w in section["weights"].items() if k in metrics and w > 0}
    if not weights:
        raise ValueError(f"No weighted metric of phase {phase} was computed; got {sorted(metrics)}.")
    total = sum(weights.values())
    weights = {k: w / total for k, w in weights.items()}
    base = sum(w * metrics[k] for k, w in weights.items())
    factors = {k: min(1.0, metrics[k] / floor) for k, floor in section["multipliers"].items() if k in metrics}
    score = float(base * np.prod(list(factors.values()))) if factors else float(base)
    threshold = section["threshold"] if threshold is None else check_threshold(threshold)
    return QualityReport(phase=phase, score=round(score, 6), threshold=threshold, passed=bool(score >= threshold),
                         metrics={k: round(float(v), 6) for k, v in metrics.items()},
                         weights={k: round(w, 6) for k, w in weights.items()},
                         multipliers={k: round(v, 6) for k, v in factors.items()})


def _config(config: str | Path | dict | None) -> dict:
    return load_quality_config(config)  # validation is idempotent, so an already loaded dict is fine


def _check_images(images: Sequence, name: str, minimum: int) -> None:
    if images is None or isinstance(images, (str, bytes)) or len(images) < minimum:
        got = "None" if images is None else (repr(images) if isinstance(images, (str, bytes)) else f"{len(images)} images")
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


# ----------------------------------------------------------------------------- phase 1

def score_character_sheet(poses: Sequence[M.ImageLike], reference: M.ImageLike | None = None,
                          embed: Embed | None = None, *, threshold: float | None = None,
                          config: str | Path | dict | None = None) -> QualityReport:
    """Score a character sheet's poses (8 expected, at least 2).

    palette_consistency   mean off-diagonal Bhattacharyya coefficient of foreground colour histograms
    structure_consistency mean off-diagonal SSIM of aligned foreground crops, mapped [low, high] -> [0, 1]
    sharpness             mean per-pose Laplacian-variance score
    reference_consistency mean palette similarity of each pose to `reference` (when given)
    embedding_consistency mean off-diagonal cosine of `embed` features, mapped [low, high] -> [0, 1]
    not_blank             worst pose's contrast score (multiplier)
    not_collapsed         min(1, mean pairwise |pose_i - pose_j| / floor) (multiplier)
    """
    _check_images(poses, "poses", 2)
    cfg = _config(config)
    mp = cfg["mappings"]
    imgs = M.prepare(poses, cfg["work_size"])
    same = M.prepare(poses, cfg["work_size"], size=(imgs[0].shape[1], imgs[0].shape[0]))
    tol, bins = mp["foreground_tolerance"], mp["palette_bins"]

    palettes = [M.palette(a, tol, bins) for a in imgs]
    palette_m = M.similarity_matrix(palettes, M.bhattacharyya)
    crops = [M.aligned_crop(a, mp["structure_crop"], tol) for a in imgs]
    ssim_m = M.similarity_matrix(crops, M.ssim)
    structure_m = _mapped(ssim_m, mp["structure_low"], mp["structure_high"])
    sharp = [M.sharpness(a, mp["sharpness_scale"]) for a in imgs]
    blank = [M.not_blank(a, mp["blank_std_floor"]) for a in imgs]
    mad_m = M.similarity_matrix(same, M.mean_abs_diff)
    np.fill_diagonal(mad_m, 0.0)
    mean_mad = M.mean_off_diagonal(mad_m) if len(imgs) > 1 else 0.0

    metrics = {"palette_consistency": M.mean_off_diagonal(palette_m),
               "structure_consistency": M.mean_off_diagonal(structure_m),
               "sharpness": float(np.mean(sharp)), "not_blank": float(min(blank)),
               "not_collapsed": float(min(1.0, mean_mad / mp["collapse_mad_floor"]))}
    details: dict[str, Any] = {"palette_matrix": palette_m, "ssim_matrix": ssim_m, "structure_matrix": structure_m,
                               "sharpness_per_pose": sharp, "not_blank_per_pose": blank,
                               "mean_pairwise_abs_diff": mean_mad,
                               "laplacian_variance_per_pose": [M.laplacian_variance(a) for a in imgs]}
    w = cfg["phases"]["CHARACTER_SHEET"]["weights"]
    parts = [(w.get("palette_consistency", 0), palette_m), (w.get("structure_consistency", 0), structure_m)]
    if reference is not None:
        ref = M.prepare([reference], cfg["work_size"])[0]
        ref_sims = [M.bhattacharyya(p, M.palette(ref, tol, bins)) for p in palettes]
        metrics["reference_consistency"] = float(np.mean(ref_sims))
        details["reference_similarity_per_pose"] = ref_sims
    if embed is not None:
        feats = _embed(embed, list(poses) + ([reference] if reference is not None else []))
        cos = M.cosine_matrix(feats)
        pose_cos = cos[:len(poses), :len(poses)]
        metrics["embedding_consistency"] = M.map_linear(M.mean_off_diagonal(pose_cos), mp["embedding_low"], mp["embedding_high"])
        details["embedding_cosine_matrix"] = pose_cos
        parts.append((w.get("embedding_consistency", 0), _mapped(pose_cos, mp["embedding_low"], mp["embedding_high"])))
    total = sum(p[0] for p in parts) or 1.0
    details["pose_similarity"] = sum(p[0] * p[1] for p in parts) / total
    report = combine("CHARACTER_SHEET", metrics, cfg, threshold)
    return _with_details(report, details)


def _with_details(report: QualityReport, details: dict) -> QualityReport:
    return replace(report, details=details)


# ----------------------------------------------------------------------------- phases 2 and 3

def _temporal(frames: Sequence[M.ImageLike], cfg: dict, embed: Embed | None,
              extra: M.ImageLike | None) -> tuple:
    """Metrics shared by loops and videos; `extra` (reference or source) is embedded with the frames."""
    mp = cfg["mappings"]
    imgs = M.prepare(frames, cfg["work_size"])
    size = (imgs[0].shape[1], imgs[0].shape[0])
    imgs = M.prepare(frames, cfg["work_size"], size=size)
    small = M.prepare(imgs, cfg["flow_size"])
    flow_list = M.flows(small)
    tol, bins = mp["foreground_tolerance"], mp["palette_bins"]
    palettes = [M.palette(a, tol, bins) for a in imgs]
    subject, subject_curve = M.subject_consistency(palettes, M.bhattacharyya)
    sharp = [M.sharpness(a, mp["sharpness_scale"]) for a in imgs]
    blank = [M.not_blank(a, mp["blank_std_floor"]) for a in imgs]
    warp_err = M.warping_errors(small, flow_list)
    diffs = M.adjacent_diffs(imgs)
    metrics = {"temporal_flicker": M.temporal_flicker(imgs, mp["flicker_low"]),
               "motion_smoothness": float(np.clip(1 - warp_err.mean() / mp["smoothness_scale"], 0, 1)),
               "subject_consistency": subject, "dynamic_degree": M.dynamic_degree(flow_list, mp["dynamic_threshold"]),
               "sharpness": float(np.mean(sharp)), "not_blank": float(min(blank))}
    details: dict[str, Any] = {"frame_count": len(imgs), "adjacent_abs_diff": diffs, "warping_error": warp_err,
                               "flow_magnitude": M.flow_magnitudes(flow_list), "subject_consistency_curve": subject_curve,
                               "sharpness_per_frame": sharp, "not_blank_per_frame": blank,
                               "vbench_temporal_flickering": M.vbench_temporal_flickering(imgs)}
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


def score_animation_loop(frames: Sequence[M.ImageLike], reference: M.ImageLike | None = None,
                         embed: Embed | None = None, *, threshold: float | None = None,
                         config: str | Path | dict | None = None) -> QualityReport:
    """Score a loop (16 frames expected, at least 3): loop_seam, temporal_flicker, motion_smoothness,
    subject_consistency, sharpness, reference_consistency (palette vs `reference`, e.g. the sheet),
    embedding_consistency (with `embed`), and the multipliers not_blank and dynamic_degree."""
    _check_images(frames, "frames", 3)
    cfg = _config(config)
    mp = cfg["mappings"]
    metrics, details, imgs, palettes, small, warp_err = _temporal(frames, cfg, embed, reference)
    metrics["loop_seam"] = M.loop_seam(imgs, mp["seam_tolerance"], small, warp_err)
    details["loop_seam_ratio"] = M.loop_seam_ratio(imgs, small, warp_err)
    details["seam_warping_error"] = float(M.warping_errors([small[-1], small[0]])[0])
    details["seam_abs_diff"] = M.mean_abs_diff(imgs[-1], imgs[0])
    if reference is not None:
        ref = M.prepare([reference], cfg["work_size"])[0]
        ref_pal = M.palette(ref, mp["foreground_tolerance"], mp["palette_bins"])
        sims = [M.bhattacharyya(p, ref_pal) for p in palettes]
        metrics["reference_consistency"] = float(np.mean(sims))
        details["reference_similarity_per_frame"] = sims
    return _with_details(combine("ANIMATION_LOOP", metrics, cfg, threshold), details)


def score_full_video(frames: Sequence[M.ImageLike], source_image: M.ImageLike | None,
                     embed: Embed | None = None, *, threshold: float | None = None,
                     config: str | Path | dict | None = None) -> QualityReport:
    """Score a video's frames (at least 3): temporal_flicker, motion_smoothness, subject_consistency,
    sharpness, source_consistency = mean palette similarity of the frames to `source_image` ×
    mapped SSIM(first frame, source) (both must hold), embedding_consistency (with `embed`), and the multipliers
    not_blank and dynamic_degree (a frozen video scores 0)."""
    _check_images(frames, "frames", 3)
    cfg = _config(config)
    mp = cfg["mappings"]
    metrics, details, imgs, palettes, _, _ = _temporal(frames, cfg, embed, source_image)
    if source_image is not None:
        h, w = imgs[0].shape[:2]
        src = M.prepare([source_image], cfg["work_size"], size=(w, h))[0]
        src_pal = M.palette(src, mp["foreground_tolerance"], mp["palette_bins"])
        sims = [M.bhattacharyya(p, src_pal) for p in palettes]
        first_ssim = M.ssim(imgs[0], src)
        metrics["source_consistency"] = float(np.mean(sims) * M.map_linear(first_ssim, mp["structure_low"],
                                                                            mp["structure_high"]))
        details["source_similarity_per_frame"] = sims
        details["first_frame_ssim_to_source"] = first_ssim
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


def score_output_dir(output_dir: str | Path, phase: int | str | None = None, *, threshold: float | None = None,
                     embed: Embed | str | None = None, config: str | Path | dict | None = None) -> QualityReport:
    """Score a run directory from its manifest.json (phase from the manifest unless given).

    `embed="auto"` uses the run's own image encoder (see `run_embedder`) when there is one.
    """
    from ..manifest import read_manifest

    root = Path(output_dir)
    manifest = read_manifest(root)
    if embed == "auto":
        embed = run_embedder(manifest)
    if phase is None:
        phase = (manifest.get("phase") or {}).get("id") or (manifest.get("phase") or {}).get("name")
        if phase is None:
            raise ValueError(f"`phase` is not given and {root / 'manifest.json'} has no phase.")
    name = phase_name(phase)
    outputs = manifest.get("outputs") or {}
    key = "poses" if name == "CHARACTER_SHEET" else "frames"
    paths = outputs.get(key)
    if not paths:
        raise ValueError(f"{root / 'manifest.json'} has no outputs.{key} to score for phase {name}.")
    images = [_open(root, p) for p in paths]
    if name == "CHARACTER_SHEET":
        return score_character_sheet(images, _open(root, outputs.get("reference")), embed,
                                     threshold=threshold, config=config)
    if name == "ANIMATION_LOOP":
        return score_animation_loop(images, _open(root, outputs.get("reference")), embed,
                                    threshold=threshold, config=config)
    return score_full_video(images, _open(root, outputs.get("source_image")), embed, threshold=threshold, config=config)
