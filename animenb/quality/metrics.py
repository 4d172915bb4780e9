"""Quality metrics that need no downloaded weights: small pure functions on RGB uint8 arrays.

Each *raw* measure is documented with its formula and a reference; the functions that return a
score in [0, 1] say which mapping they use (the mapping constants live in parameters/quality.yaml,
section `mappings`, and are passed in as keyword arguments here).

Images are HxWx3 uint8 arrays (``as_array`` accepts PIL images too). The phase scorers downscale to
the working size (`work_size`, 256 px by default) before calling these, so that flow and SSIM stay
cheap at 512 px and the pixel-scale constants mean the same thing at every resolution.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import cv2
import numpy as np
from PIL import Image

ImageLike = Image.Image | np.ndarray
EPS = 1e-8


# ----------------------------------------------------------------------------- preparation


def as_array(image: ImageLike) -> np.ndarray:
    """PIL image or HxWx3 / HxW uint8 array -> HxWx3 uint8 RGB array."""
    if isinstance(image, Image.Image):
        return np.asarray(image.convert("RGB"))
    a = np.asarray(image)
    if a.dtype != np.uint8:
        raise ValueError(f"`image` arrays must be uint8, got dtype {a.dtype}.")
    if a.ndim == 2:
        return np.repeat(a[:, :, None], 3, axis=2)
    if a.ndim == 3 and a.shape[2] == 4:
        return a[:, :, :3]
    if a.ndim != 3 or a.shape[2] != 3:
        raise ValueError(f"`image` must be HxWx3 (or HxW) uint8, got shape {a.shape}.")
    return a


def downscale(image: np.ndarray, work_size: int) -> np.ndarray:
    """Shrink (never enlarge) so the longer side is at most `work_size`, with area interpolation."""
    h, w = image.shape[:2]
    s = work_size / max(h, w)
    if s >= 1:
        return image
    return cv2.resize(image, (max(1, round(w * s)), max(1, round(h * s))), interpolation=cv2.INTER_AREA)


def prepare(images: Sequence[ImageLike], work_size: int = 256, size: tuple[int, int] | None = None) -> list[np.ndarray]:
    """Convert to RGB arrays at the working size; with `size` (w, h) resize all to that exact size."""
    out = []
    for im in images:
        a = downscale(as_array(im), work_size)
        if size is not None and (a.shape[1], a.shape[0]) != tuple(size):
            a = cv2.resize(a, tuple(size), interpolation=cv2.INTER_AREA)
        out.append(a)
    return out


def smoothed(image: np.ndarray, sigma: float = 1.0) -> np.ndarray:
    """Gaussian blur of `sigma` px: removes pixel noise (grain) before flow and warping error."""
    return cv2.GaussianBlur(image, (0, 0), sigma)


def gray(image: np.ndarray) -> np.ndarray:
    return cv2.cvtColor(image, cv2.COLOR_RGB2GRAY)


def map_linear(value: float, low: float, high: float) -> float:
    """Linear map of `value` from [low, high] to [0, 1], clipped."""
    return float(np.clip((value - low) / (high - low), 0.0, 1.0))


# ----------------------------------------------------------------------------- single images


def not_blank(image: np.ndarray, std_floor: float = 12.0) -> float:
    """Not-blank score: ``min(1, std(grey) / std_floor)``; a constant image (black NSFW-filter frames,
    an empty canvas) scores 0, anything with `std_floor` grey levels of contrast scores 1."""
    return float(min(1.0, gray(image).astype(np.float32).std() / std_floor))


def border_colour(image: np.ndarray, width: int = 2) -> np.ndarray:
    """Median colour of a `width`-pixel frame around the image: the background estimate."""
    return np.median(border_pixels(image, width), axis=0)


def border_pixels(image: np.ndarray, width: int = 2) -> np.ndarray:
    """The pixels of a `width`-pixel frame around the image, as an Nx3 array."""
    return np.concatenate(
        [
            image[:width].reshape(-1, 3),
            image[-width:].reshape(-1, 3),
            image[:, :width].reshape(-1, 3),
            image[:, -width:].reshape(-1, 3),
        ]
    )


def plain_background(image: np.ndarray, tolerance: float = 30.0, share: float = 0.75) -> bool:
    """Whether the picture's border is (mostly) one colour: at least `share` of the border pixels within
    `tolerance` (max channel) of its median. Only then does "different from the border colour" find the
    subject, and only then are foreground centroids trustworthy positions."""
    b = border_pixels(image).astype(np.int16)
    return bool((np.abs(b - np.median(b, axis=0).round().astype(np.int16)).max(axis=1) <= tolerance).mean() >= share)


def scene_colours(image: np.ndarray, tolerance: float = 30.0, cell: int = 8, min_share: float = 0.004) -> np.ndarray:
    """A boolean RGB lookup table (256/`cell` cells a side): True for colours within `tolerance` (max
    channel, to the cell) of a colour that covers at least `min_share` of the border: the scene's colours."""
    n = 256 // cell
    q = border_pixels(image).astype(np.int32) // cell
    counts = np.bincount((q[:, 0] * n + q[:, 1]) * n + q[:, 2], minlength=n**3).reshape(n, n, n)
    seen = (counts >= max(1, min_share * len(q))).astype(np.uint8)
    r = int(np.ceil(tolerance / cell))
    kernel = np.ones((2 * r + 1, 2 * r + 1), np.uint8)  # max-channel distance: a cube, dilated axis by axis
    seen = np.stack([cv2.dilate(seen[i], kernel) for i in range(n)])
    seen = np.stack(
        [cv2.dilate(np.ascontiguousarray(seen[:, :, k]), np.ones((2 * r + 1, 1), np.uint8)) for k in range(n)], axis=2
    )
    return seen.astype(bool)


def foreground_mask(image: np.ndarray, tolerance: float = 30.0, min_fraction: float = 0.005) -> np.ndarray:
    """The character region. On a plain background (`plain_background`): pixels whose max channel distance
    to the border colour exceeds `tolerance`. On a busy one (a street, a painted scene): pixels whose colour
    is not one of the scene's colours seen on the border (`scene_colours`): the subject is what brings
    colours of its own. Falls back to the whole image when under `min_fraction` of it is foreground, so the
    metrics degrade to whole-image versions rather than fail."""
    if plain_background(image, tolerance):
        dist = np.abs(image.astype(np.int16) - border_colour(image).round().astype(np.int16)).max(axis=2)
        mask = dist > tolerance
    else:
        q = image.astype(np.int32) // 8
        mask = ~scene_colours(image, tolerance)[q[..., 0], q[..., 1], q[..., 2]]
    if mask.mean() < min_fraction:
        return np.ones(mask.shape, dtype=bool)
    return mask


def colour_histogram(image: np.ndarray, mask: np.ndarray | None = None, bins: int = 8) -> np.ndarray:
    """Normalised 3-D RGB histogram (`bins`³ cells) of the pixels in `mask`: the palette."""
    if mask is None:
        mask = np.ones(image.shape[:2], dtype=bool)
    q = (image[mask].astype(np.int32) * bins) // 256
    idx = (q[:, 0] * bins + q[:, 1]) * bins + q[:, 2]
    h = np.bincount(idx, minlength=bins**3).astype(np.float64)
    return h / max(h.sum(), EPS)


def palette(image: np.ndarray, tolerance: float = 30.0, bins: int = 8, mask: np.ndarray | None = None) -> np.ndarray:
    """Colour histogram of the foreground (character) region (`mask`, when already computed)."""
    return colour_histogram(image, foreground_mask(image, tolerance) if mask is None else mask, bins)


def bhattacharyya(p: np.ndarray, q: np.ndarray) -> float:
    """Bhattacharyya coefficient ``BC(p, q) = Σ sqrt(p_i q_i)`` of two normalised histograms, in
    [0, 1]; 1 for identical palettes, 0 for disjoint ones (Bhattacharyya 1943; Comaniciu et al. 2003)."""
    return float(np.sqrt(p * q).sum())


def similarity_matrix(items: Sequence, sim: Callable[[object, object], float]) -> np.ndarray:
    """Symmetric NxN matrix of ``sim(items[i], items[j])`` with 1 on the diagonal."""
    n = len(items)
    m = np.eye(n)
    for i in range(n):
        for j in range(i + 1, n):
            m[i, j] = m[j, i] = sim(items[i], items[j])
    return m


def mean_off_diagonal(m: np.ndarray) -> float:
    n = m.shape[0]
    return float((m.sum() - np.trace(m)) / (n * (n - 1))) if n > 1 else 1.0


def ssim(a: np.ndarray, b: np.ndarray) -> float:
    """Mean structural similarity of two images' grey levels (same size), Gaussian window σ = 1.5:

    ``SSIM = ((2 μa μb + C1)(2 σab + C2)) / ((μa² + μb² + C1)(σa² + σb² + C2))``, C1 = (0.01·255)²,
    C2 = (0.03·255)², averaged over the image. Wang, Bovik, Sheikh, Simoncelli, "Image quality
    assessment: from error visibility to structural similarity", IEEE TIP 13(4), 2004.
    """
    x = (gray(a) if a.ndim == 3 else a).astype(np.float64)
    y = (gray(b) if b.ndim == 3 else b).astype(np.float64)
    if x.shape != y.shape:
        raise ValueError(f"`ssim` needs images of one size, got {x.shape} and {y.shape}.")
    c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2

    def blur(z: np.ndarray) -> np.ndarray:
        return cv2.GaussianBlur(z, (11, 11), 1.5, borderType=cv2.BORDER_REFLECT)

    mx, my = blur(x), blur(y)
    sxx, syy, sxy = blur(x * x) - mx * mx, blur(y * y) - my * my, blur(x * y) - mx * my
    s = ((2 * mx * my + c1) * (2 * sxy + c2)) / ((mx * mx + my * my + c1) * (sxx + syy + c2))
    return float(s.mean())


def aligned_crop(image: np.ndarray, size: int = 64, tolerance: float = 30.0) -> np.ndarray:
    """The foreground's bounding box, padded to a square with the border colour and resized to
    `size`², so poses drawn at different offsets and scales become comparable for SSIM."""
    mask = foreground_mask(image, tolerance)
    ys, xs = np.nonzero(mask)
    y0, y1, x0, x1 = ys.min(), ys.max() + 1, xs.min(), xs.max() + 1
    crop = image[y0:y1, x0:x1]
    side = max(crop.shape[:2])
    canvas = np.empty((side, side, 3), dtype=np.uint8)
    canvas[:] = border_colour(image).astype(np.uint8)
    oy, ox = (side - crop.shape[0]) // 2, (side - crop.shape[1]) // 2
    canvas[oy : oy + crop.shape[0], ox : ox + crop.shape[1]] = crop
    return cv2.resize(canvas, (size, size), interpolation=cv2.INTER_AREA)


def mean_abs_diff(a: np.ndarray, b: np.ndarray) -> float:
    """Mean absolute difference of two same-size uint8 images, in grey levels (0..255)."""
    return float(np.abs(a.astype(np.int16) - b.astype(np.int16)).mean())


def cosine_matrix(features: np.ndarray) -> np.ndarray:
    """Pairwise cosine similarity of row vectors (CLIP-I uses it on image-encoder embeddings:
    Ruiz et al., "DreamBooth", CVPR 2023)."""
    f = np.asarray(features, dtype=np.float64).reshape(len(features), -1)
    f = f / np.maximum(np.linalg.norm(f, axis=1, keepdims=True), EPS)
    return f @ f.T


# ----------------------------------------------------------------------------- sequences


def adjacent_diffs(frames: Sequence[np.ndarray]) -> np.ndarray:
    """``d_t = mean |f_{t+1} - f_t|`` for t = 0..T-2, in grey levels."""
    return np.array([mean_abs_diff(frames[t], frames[t + 1]) for t in range(len(frames) - 1)])


def vbench_temporal_flickering(frames: Sequence[np.ndarray]) -> float:
    """VBench temporal flickering, raw: ``(255 - mean_t d_t) / 255`` with d_t the mean absolute
    difference of adjacent frames (Huang et al., "VBench", CVPR 2024). Near 1 for almost any video."""
    return float((255.0 - adjacent_diffs(frames).mean()) / 255.0)


def temporal_flicker(frames: Sequence[np.ndarray], low: float = 0.85) -> float:
    """Temporal-flicker score: the VBench value mapped linearly from [low, 1] to [0, 1], i.e.
    ``clip(1 - mean_t d_t / (255 (1 - low)), 0, 1)``: 0 once adjacent frames differ by
    255·(1 - low) grey levels on average (38 for low = 0.85)."""
    return map_linear(vbench_temporal_flickering(frames), low, 1.0)


def loop_seam_ratio(
    frames: Sequence[np.ndarray],
    flow_frames: Sequence[np.ndarray] | None = None,
    step_errors: np.ndarray | None = None,
    path: np.ndarray | None = None,
    min_speed: float = 0.01,
) -> float:
    """Loop seam, raw: how the wrap-around step f_{T-1} -> f_0 compares with an ordinary step (no
    standard metric exists, see FACTS.md). 1 for a seamless loop, >> 1 for a jump.

    ``r_mad = MAD(f_{T-1}, f_0) / median_t d_t`` (mean absolute differences); it saturates once the
    subject no longer overlaps itself, so when `flow_frames` (the frames at flow size) are given the
    appearance ratio is ``sqrt(r_mad · r_warp)`` with ``r_warp = E_seam / max(median_t E_t, 0.002)``, E the
    flow warping error (``warping_errors``; pass `step_errors` to reuse them): a step the flow can follow
    leaves little residual, a jump leaves it all. Appearance saturates when every step is large (a small
    subject moving fast), so with `path` (the subject's `trajectory`) the result is the larger of it and
    ``r_path = |p_0 - p_{T-1}| / max((|p_1 - p_0| + |p_{T-1} - p_{T-2}|) / 2, min_speed)``: where the subject
    is, against the steps on either side of the seam (motion that eases in and out changes speed
    smoothly, so the seam's neighbours, not the median step, say how big it should be).
    Returns 1 when the frames do not move at all.
    """
    d = adjacent_diffs(frames)
    med = float(np.median(d))
    seam = mean_abs_diff(frames[-1], frames[0])
    if med < 0.05:
        return 1.0 if seam < 0.05 else float("inf")
    r = seam / med
    if flow_frames is not None:
        errors = warping_errors(flow_frames) if step_errors is None else np.asarray(step_errors)
        seam_err = warping_errors([flow_frames[-1], flow_frames[0]])[0]
        r = float(np.sqrt(r * seam_err / max(float(np.median(errors)), 0.002)))
    if path is not None:
        p = np.asarray(path, dtype=np.float64)
        neighbours = (np.linalg.norm(p[1] - p[0]) + np.linalg.norm(p[-1] - p[-2])) / 2
        r = max(r, float(np.linalg.norm(p[0] - p[-1]) / max(float(neighbours), min_speed)))
    return float(r)


def loop_seam(
    frames: Sequence[np.ndarray],
    tolerance: float = 1.0,
    flow_frames: Sequence[np.ndarray] | None = None,
    step_errors: np.ndarray | None = None,
    path: np.ndarray | None = None,
    min_speed: float = 0.01,
) -> float:
    """Loop-seam score: ``1 / (1 + (max(r, 1) - 1)² / tolerance²)`` with r = ``loop_seam_ratio``:
    1 when the seam is no bigger than a median step, 0.5 at r = 1 + tolerance, 0.2 at 1 + 2·tolerance.
    A seam smaller than a step (a held last frame) is not penalised here."""
    r = loop_seam_ratio(frames, flow_frames, step_errors, path, min_speed)
    if not np.isfinite(r):
        return 0.0
    return float(1.0 / (1.0 + (max(r, 1.0) - 1.0) ** 2 / tolerance**2))


def farneback(prev: np.ndarray, nxt: np.ndarray) -> np.ndarray:
    """Dense optical flow prev -> next (HxWx2, pixels), OpenCV Farnebäck (Farnebäck, "Two-frame motion
    estimation based on polynomial expansion", SCIA 2003) with OpenCV's documented example settings."""
    return cv2.calcOpticalFlowFarneback(gray(prev), gray(nxt), None, 0.5, 4, 15, 3, 5, 1.2, 0)


def warp(image: np.ndarray, flow: np.ndarray) -> np.ndarray:
    """Backward warp: ``out(x) = image(x + flow(x))`` (bilinear, border replicated)."""
    h, w = flow.shape[:2]
    gx, gy = np.meshgrid(np.arange(w, dtype=np.float32), np.arange(h, dtype=np.float32))
    return cv2.remap(image, gx + flow[..., 0], gy + flow[..., 1], cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)


def flows(frames: Sequence[np.ndarray]) -> list[np.ndarray]:
    """Farnebäck flow for each adjacent pair (t -> t+1)."""
    return [farneback(frames[t], frames[t + 1]) for t in range(len(frames) - 1)]


def warping_errors(frames: Sequence[np.ndarray], flow_list: Sequence[np.ndarray] | None = None) -> np.ndarray:
    """Flow warping error per pair: ``E_t = mean |f_t - warp(f_{t+1}, F_{t→t+1})| / 255`` (Lai et al.,
    "Learning blind video temporal consistency", ECCV 2018, without the occlusion mask). What the
    flow cannot explain (flicker, jumps, things popping in) stays in the residual."""
    flow_list = flows(frames) if flow_list is None else flow_list
    return np.array(
        [
            np.abs(frames[t].astype(np.float32) - warp(frames[t + 1], f).astype(np.float32)).mean() / 255.0
            for t, f in enumerate(flow_list)
        ]
    )


def motion_smoothness(
    frames: Sequence[np.ndarray], flow_list: Sequence[np.ndarray] | None = None, scale: float = 0.04
) -> float:
    """Motion-smoothness score: ``clip(1 - mean_t E_t / scale, 0, 1)`` with E_t the flow warping error;
    0 once the unexplained residual averages `scale`·255 grey levels (10 for 0.04)."""
    return float(np.clip(1.0 - warping_errors(frames, flow_list).mean() / scale, 0.0, 1.0))


def flow_magnitudes(flow_list: Sequence[np.ndarray], top: float = 0.05) -> np.ndarray:
    """Per pair, the mean of the top `top` fraction of flow magnitudes, in pixels per 256 px of the
    shorter side (VBench's dynamic degree uses the top 5% of RAFT magnitudes)."""
    out = []
    for f in flow_list:
        mag = np.sqrt((f.astype(np.float32) ** 2).sum(axis=2)).ravel() * (256.0 / min(f.shape[:2]))
        k = max(1, int(len(mag) * top))
        out.append(float(np.partition(mag, len(mag) - k)[-k:].mean()))
    return np.array(out)


def subject_consistency(features: Sequence, sim: Callable[[object, object], float]) -> tuple[float, np.ndarray]:
    """VBench subject consistency with any feature similarity `sim`:
    ``mean_{t>=1} (sim(f_t, f_{t-1}) + sim(f_t, f_0)) / 2`` (Huang et al. 2024; VBench uses DINO
    features and cosine, we use foreground palettes and Bhattacharyya unless an encoder is given).
    Returns the score and the per-frame curve (frame 0 counts as 1)."""
    curve = [1.0] + [
        (sim(features[t], features[t - 1]) + sim(features[t], features[0])) / 2 for t in range(1, len(features))
    ]
    return float(np.mean(curve[1:])) if len(features) > 1 else 1.0, np.array(curve)


# ----------------------------------------------------------------------------- clean image: noise and blur

_NOISE_KERNEL = np.array([[1, -2, 1], [-2, 4, -2], [1, -2, 1]], dtype=np.float32)


def noise_sigma(image: np.ndarray) -> float:
    """Noise level, raw, in grey levels: ``σ = 1.4826 · median|I ∗ N| / 6`` with N Immerkær's 3x3
    kernel [[1,-2,1],[-2,4,-2],[1,-2,1]] (J. Immerkær, "Fast noise variance estimation", CVIU 64(2),
    1996), made robust with the median absolute response (Donoho & Johnstone 1994, as scikit-image's
    `estimate_sigma`). N cancels flat areas and linear shading, so a clean drawing's median response is
    ~0 while white noise of σ gives |response| of median 0.6745·6σ; edges are a minority of pixels and
    do not move the median. Measured on the grey image, so independent noise of σ per RGB channel reads
    as ≈ 0.67σ. Run at native resolution: downscaling averages noise away."""
    g = gray(image).astype(np.float32)
    if min(g.shape) < 3:
        return 0.0
    response = cv2.filter2D(g, cv2.CV_32F, _NOISE_KERNEL, borderType=cv2.BORDER_REFLECT)[1:-1, 1:-1]
    return float(1.4826 * np.median(np.abs(response)) / 6.0)


def blur_effect(image: np.ndarray, h_size: int = 9) -> float:
    """Blur, raw, in [0, 1] (0 sharp, 1 blurred): Crété-Roffet et al., "The blur effect: perception and
    estimation with a new no-reference perceptual blur metric", SPIE 6492, 2007. The grey image F is
    re-blurred with a 1 x `h_size` box filter B along each axis; ``D_F = |∂F|``, ``D_B = |∂B|``,
    ``V = max(0, D_F - D_B)``, ``b = (ΣD_F - ΣV) / ΣD_F``, and the larger of the two axes is returned.
    A sharp edge loses most of its variation to the re-blur (b ≈ 1 / h_size), an already blurred one
    little (b → 1). It is a ratio, so it does not depend on how much the image contains, and unlike the
    Laplacian variance it does not read noise as detail (noise is measured by `noise_sigma`)."""
    f = gray(image).astype(np.float32)
    values = []
    for axis in (0, 1):
        kernel = (h_size, 1) if axis == 1 else (1, h_size)  # cv2 sizes are (width, height)
        b = cv2.blur(f, kernel, borderType=cv2.BORDER_REFLECT)
        d_f = np.abs(np.diff(f, axis=axis))
        d_b = np.abs(np.diff(b, axis=axis))
        s_f = float(d_f.sum())
        if s_f < EPS:
            values.append(1.0)  # no variation at all: nothing sharp in it
            continue
        values.append((s_f - float(np.maximum(0.0, d_f - d_b).sum())) / s_f)
    return float(max(values))


# ----------------------------------------------------------------------------- identity: colour structure


def foreground_box(mask: np.ndarray, low: float = 2.0, high: float = 98.0) -> tuple[int, int, int, int]:
    """(y0, y1, x0, x1) of the mask's pixels between the `low` and `high` coordinate percentiles: a
    bounding box that a few stray pixels cannot stretch."""
    ys, xs = np.nonzero(mask)
    y0, y1 = np.percentile(ys, [low, high])
    x0, x1 = np.percentile(xs, [low, high])
    return int(y0), int(y1) + 1, int(x0), int(x1) + 1


def dominant_colours(pixels: np.ndarray, step: int = 16, min_weight: float = 0.02) -> tuple[np.ndarray, np.ndarray]:
    """The colours that make up a region: pixels grouped in RGB cells of `step` levels, cells holding at
    least `min_weight` of the pixels kept, each as (mean colour, share). Anti-aliased edge blends and
    noise fall below `min_weight` and are ignored."""
    if len(pixels) == 0:
        return np.zeros((0, 3)), np.zeros(0)
    q = pixels.astype(np.int32) // step
    cells = 256 // step
    idx = (q[:, 0] * cells + q[:, 1]) * cells + q[:, 2]
    counts = np.bincount(idx, minlength=cells**3)
    keep = np.nonzero(counts >= max(1.0, min_weight * len(pixels)))[0]
    if len(keep) == 0:
        return np.zeros((0, 3)), np.zeros(0)
    sums = np.stack(
        [np.bincount(idx, weights=pixels[:, c].astype(np.float64), minlength=cells**3)[keep] for c in range(3)], axis=1
    )
    colours = sums / counts[keep, None]
    weights = counts[keep] / counts[keep].sum()
    return colours, weights


def colour_bands(
    image: np.ndarray,
    bands: int = 3,
    tolerance: float = 30.0,
    step: int = 16,
    min_weight: float = 0.02,
    mask: np.ndarray | None = None,
) -> list[tuple[np.ndarray, np.ndarray]]:
    """The character's colour structure: the foreground's bounding box cut into `bands` horizontal bands
    (top to bottom: hair and face, face and torso, outfit), each as its `dominant_colours`."""
    mask = foreground_mask(image, tolerance) if mask is None else mask
    y0, y1, x0, x1 = foreground_box(mask)
    edges = np.linspace(y0, y1, bands + 1).round().astype(int)
    out = []
    for k in range(bands):
        region = mask[edges[k] : edges[k + 1], x0:x1]
        out.append(dominant_colours(image[edges[k] : edges[k + 1], x0:x1][region], step, min_weight))
    return out


def colour_coverage(a: tuple[np.ndarray, np.ndarray], b: tuple[np.ndarray, np.ndarray], distance: float) -> float:
    """Share of region `a`'s pixels whose dominant colour has a dominant colour of `b` within `distance`
    (RGB Euclidean): 1 when every colour of `a` also appears in `b`, whatever the proportions."""
    (ca, wa), (cb, _) = a, b
    if len(ca) == 0:
        return 1.0
    if len(cb) == 0:
        return 0.0
    nearest = np.sqrt(((ca[:, None, :] - cb[None, :, :]) ** 2).sum(axis=2)).min(axis=1)
    return float(wa[nearest <= distance].sum())


def identity_similarity(a: list, b: list, distance: float = 40.0) -> float:
    """Same character? ``min_k max(cov(a_k → b), cov(b_k → a))`` over the `colour_bands` k, where the
    target of each coverage is the other image's whole figure (all its bands): every band's colours (hair,
    face, outfit) must be found in the other character. Band by band, so that a change of hair or of
    outfit alone is enough to call it another character; against the whole figure, so that another view
    may put them elsewhere (a back view has hair where the face was); the better direction, so that a
    view may show fewer colours than the other. In [0, 1]."""

    def whole(bands: list) -> tuple[np.ndarray, np.ndarray]:
        colours = [c for c, _ in bands if len(c)]
        return (
            (np.concatenate(colours), np.ones(sum(len(c) for c in colours)))
            if colours
            else (np.zeros((0, 3)), np.zeros(0))
        )

    wa, wb = whole(a), whole(b)
    return float(min(max(colour_coverage(x, wb, distance), colour_coverage(y, wa, distance)) for x, y in zip(a, b)))


def typicality(colours: Sequence[tuple[np.ndarray, np.ndarray]], distance: float = 40.0) -> np.ndarray:
    """Per image, the share of its figure painted in colours that at least half of the *other* images
    also contain (within `distance`): 1 when it only uses the set's shared colours, low when it brings
    its own (a grey block over the head, another character's hair). `colours` are each image's
    `dominant_colours` over its whole foreground."""
    n = len(colours)
    out = np.ones(n)
    for i, (ci, wi) in enumerate(colours):
        if len(ci) == 0 or n < 2:
            continue
        found = np.zeros(len(ci))
        for j, (cj, _) in enumerate(colours):
            if j != i and len(cj):
                found += np.sqrt(((ci[:, None, :] - cj[None, :, :]) ** 2).sum(axis=2)).min(axis=1) <= distance
        out[i] = float(wi[found >= (n - 1) / 2].sum())
    return out


# RGB -> an orthonormal opponent basis: brightness (1,1,1)/√3, red-green (1,-1,0)/√2, yellow-blue
# (1/2,1/2,-1)/√1.5. Euclidean distances are the RGB ones until the two colour axes are stretched.
_OPPONENT = np.array([[1, 1, 1], [1, -1, 0], [0.5, 0.5, -1]]) / np.array([[3**0.5], [2**0.5], [1.5**0.5]])


def hue_weighted(colours: np.ndarray, chroma_weight: float = 2.0) -> np.ndarray:
    """RGB colours (Nx3) in the opponent basis with the two colour axes times `chroma_weight`: a distance
    of `d` RGB units in brightness stays `d`, a change of hue or saturation counts `chroma_weight` times.
    In plain RGB a dark green (68, 92, 52) lies 28 units from a dark grey (71, 72, 72), as close as two
    shades of one grey; here it lies 56 units away."""
    out = np.asarray(colours, dtype=np.float64).reshape(-1, 3) @ _OPPONENT.T
    out[:, 1:] *= chroma_weight
    return out


def outlier_identity(similarity: np.ndarray) -> float:
    """``min_i median_{j≠i} S_ij``: how well the *least* typical image agrees with the others. A single
    odd image, or a set split in two halves, drives it down, where a mean over pairs would average it away."""
    n = similarity.shape[0]
    if n < 2:
        return 1.0
    return float(min(np.median(np.delete(similarity[i], i)) for i in range(n)))


# ----------------------------------------------------------------------------- motion regularity


def trajectory(
    images: Sequence[np.ndarray], tolerance: float = 30.0, masks: Sequence[np.ndarray] | None = None
) -> np.ndarray:
    """Per image, the foreground's centroid (x, y) and spread (2 standard deviations of its x and y
    coordinates), in fractions of the image size: where the subject is and how it spreads (arms out,
    crouched). Moments, not a bounding box, so that they move smoothly below one pixel."""
    out = []
    for k, a in enumerate(images):
        h, w = a.shape[:2]
        ys, xs = np.nonzero(foreground_mask(a, tolerance) if masks is None else masks[k])
        out.append((xs.mean() / w, ys.mean() / h, 2 * xs.std() / w, 2 * ys.std() / h))
    return np.asarray(out, dtype=np.float64)


def mask_iou(a: np.ndarray, b: np.ndarray, tolerance: float = 30.0) -> float:
    """Intersection over union of two same-size images' foreground masks: 1 when the subject stands in
    the same place with the same silhouette, lower when it moved, shrank or was squeezed."""
    ma, mb = foreground_mask(a, tolerance), foreground_mask(b, tolerance)
    return float((ma & mb).sum() / max(1, (ma | mb).sum()))


def jitter_ratio(points: np.ndarray, cyclic: bool = False, min_speed: float = 0.01) -> float:
    """Jitter of a position path (e.g. the `trajectory`): ``velocity_jitter`` of its steps
    ``p_{t+1} - p_t`` (with `cyclic`, the wrap-around step p_0 - p_{T-1} too)."""
    p = np.asarray(points, dtype=np.float64)
    if len(p) < 3:
        return 0.0
    steps = np.diff(np.concatenate([p, p[:1]]) if cyclic else p, axis=0)
    return velocity_jitter(steps, cyclic, min_speed)


def repeat_error(
    velocities: np.ndarray, period: int, cyclic: bool = False, min_speed: float = 0.01, resolution: float = 0.0
) -> float:
    """How badly each step's velocity predicts the one `period` steps later:
    ``mean_t max(0, |v_{t+P} - v_t| - resolution) / max(mean_t |v_t|, min_speed)`` (with `cyclic` the steps
    wrap around). `resolution` is the change that placing the subject on the source's pixel grid makes by
    itself (one source pixel, in the velocities' units): a sprite moving half a pixel per frame steps 0, 1,
    0, 1 px, which is rounding, not jitter."""
    v = np.asarray(velocities, dtype=np.float64).reshape(len(velocities), -1)
    if len(v) <= period:
        return 0.0
    change = v - np.roll(v, period, axis=0) if cyclic else v[period:] - v[:-period]
    excess = np.maximum(0.0, np.linalg.norm(change, axis=1) - resolution)
    return float(excess.mean() / max(float(np.linalg.norm(v, axis=1).mean()), min_speed))


def velocity_jitter(
    velocities: np.ndarray, cyclic: bool = False, min_speed: float = 0.01, resolution: float = 0.0
) -> float:
    """Jitter, raw: ``mean_t |v_{t+1} - v_t| / max(mean_t |v_t|, min_speed)`` (`repeat_error` at one step): the
    change of velocity from step to step against the motion's own speed. Smooth motion changes velocity a
    little each step (a circle in 16 steps: 2 sin(π/16) ≈ 0.39) whether it is fast or slow; random jumps or
    stop-and-go stutter change it by as much as the motion itself (≥ 1.4). Below `min_speed` (fraction of the
    image per step) a still subject is judged on its absolute wobble. With `cyclic` the steps wrap around (a
    loop: the last step, the seam, is followed by the first)."""
    if len(velocities) < 2:
        return 0.0
    return repeat_error(velocities, 1, cyclic, min_speed, resolution)


def cycle_jitter(
    velocities: np.ndarray, cyclic: bool = False, min_speed: float = 0.01, resolution: float = 0.0
) -> tuple[float, int]:
    """The best `repeat_error` over periods of 3 steps to half the clip (so the cycle is seen twice), and
    that period. A walk drawn in a few drawings swings its limbs back and bobs its body every other
    drawing, so its velocity changes as much as random jumps do from one step to the next; but it repeats
    one stride later, and random jumps never do (≥ 1 at every period)."""
    errors = {p: repeat_error(velocities, p, cyclic, min_speed, resolution) for p in range(3, len(velocities) // 2 + 1)}
    if not errors:
        return float("inf"), 0
    period = min(errors, key=errors.get)
    return errors[period], period


def motion_jitter(
    velocities: np.ndarray,
    cyclic: bool = False,
    min_speed: float = 0.01,
    cycle_gain: float = 4.0,
    resolution: float = 0.0,
) -> float:
    """`velocity_jitter`, or the `cycle_jitter` when an animation cycle predicts the motion at least
    `cycle_gain` times better than repeating every 2 steps does. Motion that repeats every 2 steps is a
    hold-and-jump stutter or a shake, not a drawn cycle: it is left to `velocity_jitter`. Changes within
    `resolution` (see `repeat_error`) do not count."""
    smooth = velocity_jitter(velocities, cyclic, min_speed, resolution)
    cycle, _ = cycle_jitter(velocities, cyclic, min_speed, resolution)
    if cycle * cycle_gain < repeat_error(velocities, 2, cyclic, min_speed, resolution):
        return min(smooth, cycle)
    return smooth


def pose_differences(crops: Sequence[np.ndarray]) -> np.ndarray:
    """Pairwise mean absolute difference of aligned foreground crops (grey levels): 0 for a repeated pose
    wherever it stands and whatever its size."""
    return similarity_matrix(list(crops), mean_abs_diff) - np.eye(len(crops))
