"""Matplotlib figures for notebooks/04_quality.ipynb."""

from __future__ import annotations

import numpy as np

from .scoring import QualityReport


def plot_pose_similarity(report: QualityReport, labels: list[str] | None = None):
    """Heat map of the NxN pose-similarity matrix of a character-sheet report."""
    import matplotlib.pyplot as plt

    m = np.asarray(report.details["pose_similarity"])
    labels = labels or [f"pose {i + 1}" for i in range(len(m))]
    fig, ax = plt.subplots(figsize=(5.5, 4.5))
    im = ax.imshow(m, vmin=0, vmax=1, cmap="viridis")
    ax.set_xticks(range(len(m)), labels, rotation=60, ha="right", fontsize=8)
    ax.set_yticks(range(len(m)), labels, fontsize=8)
    for i in range(len(m)):
        for j in range(len(m)):
            ax.text(
                j,
                i,
                f"{m[i, j]:.2f}",
                ha="center",
                va="center",
                fontsize=6,
                color="white" if m[i, j] < 0.6 else "black",
            )
    fig.colorbar(im, ax=ax, label="similarity")
    ax.set_title(f"{report.phase}: pose similarity (score {report.score:.2f})")
    fig.tight_layout()
    return fig


def plot_frame_curves(report: QualityReport):
    """Per-step curves of a loop or video report; for a loop the wrap-around step is marked."""
    import matplotlib.pyplot as plt

    d = report.details
    diffs = list(d["adjacent_abs_diff"])
    is_loop = "seam_abs_diff" in d
    fig, axes = plt.subplots(3, 1, figsize=(8, 7), sharex=True)
    steps = np.arange(len(diffs) + (1 if is_loop else 0))
    axes[0].plot(steps[: len(diffs)], diffs, "o-", label="|f(t+1) - f(t)|")
    if is_loop:
        axes[0].plot(
            [steps[-1]], [d["seam_abs_diff"]], "rs", label=f"seam last->first (ratio {d['loop_seam_ratio']:.2f})"
        )
        for ax in axes:
            ax.axvline(steps[-1], color="r", ls="--", lw=1)
    axes[0].axhline(np.median(diffs), color="gray", ls=":", label="median step")
    axes[0].set_ylabel("grey levels")
    axes[0].legend(fontsize=8)
    axes[1].plot(steps[: len(diffs)], d["warping_error"], "o-", label="flow warping error")
    axes[1].plot(steps[: len(diffs)], np.asarray(d["flow_magnitude"]) / 256.0, "x-", label="top-5% flow / 256 px")
    axes[1].legend(fontsize=8)
    axes[2].plot(
        np.arange(len(d["subject_consistency_curve"])),
        d["subject_consistency_curve"],
        "o-",
        label="subject consistency",
    )
    axes[2].plot(np.arange(len(d["sharpness_per_frame"])), d["sharpness_per_frame"], "x-", label="sharpness")
    axes[2].set_ylim(0, 1.05)
    axes[2].set_xlabel("frame / step t -> t+1")
    axes[2].legend(fontsize=8)
    axes[0].set_title(
        f"{report.phase}: per-frame metrics (score {report.score:.2f}, "
        f"{'passed' if report.passed else 'failed'} at {report.threshold:.2f})"
    )
    fig.tight_layout()
    return fig


def plot_report(report: QualityReport):
    return plot_pose_similarity(report) if "pose_similarity" in report.details else plot_frame_curves(report)
