"""The gate validity suite: drawn good outputs next to their broken twins, per phase.

A gate is trusted only if it *decides* right: every good output passes, every broken one fails.
Each case here is a drawn character (animenb.quality.synthetic, seeded palettes) at one of several
sizes; each failure mode is a way a real generation goes wrong (another character half-way, noise,
blur, an open seam, jitter, a scene cut, ...), built from the same seed and size as its good twin.

    from animenb.quality.validity import SUITE, run_suite, confusion, sweep
    rows = run_suite()                 # one dict per case: phase, mode, seed, size, expected, passed, score, ...
    confusion(rows)                    # per phase: true/false accepts and rejects
    sweep(rows, [0.7, 0.8, 0.9])       # the same decisions at other score thresholds

Used by tests/test_quality_gates.py (every decision asserted), bench/gate_accuracy.py (rates) and
notebooks/07_gate_calibration.ipynb (distributions and threshold sweeps to re-tune quality.yaml).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from PIL import Image

from . import families as F
from . import real_art as R
from . import synthetic as S
from .scoring import FAIL, PASS, REVIEW, QualityReport, score_animation_loop, score_character_sheet, score_full_video

GOOD = "good"  # modes named good or good_* must pass; every other mode must fail
# (seed, size) of every variant: each failure mode is drawn from every one of them, good outputs from
# twice as many (they are the ones a gate must never reject, so they get the wider spread).
VARIANTS: tuple[tuple[int, int], ...] = ((0, 64), (1, 128), (2, 256), (3, 512))
GOOD_VARIANTS: tuple[tuple[int, int], ...] = VARIANTS + ((4, 96), (5, 192), (6, 320), (7, 384))
LOOP_FRAMES, VIDEO_FRAMES = 16, 24
MOTIONS = ("circle", "sway", "bob")

Inputs = dict[str, object]


@lru_cache(maxsize=64)
def _character(seed: int) -> tuple:
    return S.random_character(seed)


def _other(seed: int, k: int = 0) -> tuple:
    """A different character in the same style as `_character(seed)`."""
    return S.random_character(10_000 + 97 * seed + k, like=_character(seed))


def _blur_radius(size: int) -> float:
    return 4.0 * size / 128  # the case: radius 4 at 128 px, scaled with the picture


def _grain(images: list[Image.Image], seed: int) -> list[Image.Image]:
    """Good output with the faint grain of a real render (σ 5 per channel): must still pass."""
    return S.with_noise(images, 5.0, seed)


def _soft(images: list[Image.Image], size: int) -> list[Image.Image]:
    """Good output with slightly soft lines (a 0.5 px blur at 128 px, scaled): must still pass."""
    return S.blurred(images, 0.5 * size / 128)


# ----------------------------------------------------------------------------- phase 1: character sheets


def _poses(seed: int, size: int, character: tuple | None = None) -> list[Image.Image]:
    return S.character_poses(8, size, *(character or _character(seed)), seed=seed)


def _sheet(poses: list[Image.Image], seed: int, size: int) -> Inputs:
    return {"poses": poses, "reference": _poses(seed, size)[0]}


def _mixed(seed: int, size: int, owners: list[int]) -> list[Image.Image]:
    """Pose i drawn by character owners[i] (0: the seed's own, k > 0: the k-th different one)."""
    sets = {k: (_poses(seed, size) if k == 0 else _poses(seed, size, _other(seed, k))) for k in set(owners)}
    return [sets[k][i] for i, k in enumerate(owners)]


SHEET_MODES: dict[str, Callable[[int, int], Inputs]] = {
    GOOD: lambda seed, size: _sheet(_poses(seed, size), seed, size),
    "good_grain": lambda seed, size: _sheet(_grain(_poses(seed, size), seed), seed, size),
    "good_soft": lambda seed, size: _sheet(_soft(_poses(seed, size), size), seed, size),
    "different_characters": lambda seed, size: _sheet(_mixed(seed, size, [1, 2, 3, 4, 5, 6, 7, 8]), seed, size),
    "character_switch": lambda seed, size: _sheet(_mixed(seed, size, [0, 0, 0, 0, 1, 1, 1, 1]), seed, size),
    "one_stranger": lambda seed, size: _sheet(_mixed(seed, size, [0, 0, 0, 0, 0, 1, 0, 0]), seed, size),
    "noisy": lambda seed, size: _sheet(S.with_noise(_poses(seed, size), 45, seed), seed, size),
    "blurred": lambda seed, size: _sheet(S.blurred(_poses(seed, size), _blur_radius(size)), seed, size),
    "blank": lambda seed, size: _sheet(S.blank(8, size), seed, size),
    "collapsed": lambda seed, size: _sheet([_poses(seed, size)[0]] * 8, seed, size),
    "repeated_poses": lambda seed, size: _sheet(_poses(seed, size)[:4] * 2, seed, size),
    "occluded": lambda seed, size: _sheet(S.occluded(_poses(seed, size), every=2), seed, size),
}


# ----------------------------------------------------------------------------- phase 2: loops


def _loop(seed: int, size: int, character: tuple | None = None) -> list[Image.Image]:
    return S.motion_frames(LOOP_FRAMES, size, character or _character(seed), MOTIONS[seed % len(MOTIONS)])


def _loop_inputs(frames: list[Image.Image], seed: int, size: int) -> Inputs:
    return {"frames": frames, "reference": S.sheet_image(_poses(seed, max(32, size // 2)))}


def _replace(frames: list[Image.Image], index: int, image: Image.Image) -> list[Image.Image]:
    out = list(frames)
    out[index] = image
    return out


def _switched(frames: list[Image.Image], others: list[Image.Image]) -> list[Image.Image]:
    half = len(frames) // 2
    return list(frames[:half]) + list(others[half:])


LOOP_MODES: dict[str, Callable[[int, int], Inputs]] = {
    GOOD: lambda seed, size: _loop_inputs(_loop(seed, size), seed, size),
    "good_grain": lambda seed, size: _loop_inputs(_grain(_loop(seed, size), seed), seed, size),
    "good_soft": lambda seed, size: _loop_inputs(_soft(_loop(seed, size), size), seed, size),
    "good_gentle": lambda seed, size: _loop_inputs(
        S.motion_frames(LOOP_FRAMES, size, _character(seed), MOTIONS[seed % 3], amplitude=0.3), seed, size
    ),
    "open_seam": lambda seed, size: _loop_inputs(
        S.motion_frames(LOOP_FRAMES, size, _character(seed), MOTIONS[seed % 3], cycle=0.75), seed, size
    ),
    "drift": lambda seed, size: _loop_inputs(S.drifting(_loop(seed, size)), seed, size),
    "shuffled": lambda seed, size: _loop_inputs(S.shuffled(_loop(seed, size), seed), seed, size),
    "flicker": lambda seed, size: _loop_inputs(S.with_flicker(_loop(seed, size)), seed, size),
    "palette_drift": lambda seed, size: _loop_inputs(S.palette_drift(_loop(seed, size)), seed, size),
    "jitter": lambda seed, size: _loop_inputs(S.jittered(LOOP_FRAMES, size, _character(seed), seed), seed, size),
    "stutter": lambda seed, size: _loop_inputs(S.stuttered(_loop(seed, size)), seed, size),
    "frozen": lambda seed, size: _loop_inputs(S.frozen(_loop(seed, size)), seed, size),
    "blank": lambda seed, size: _loop_inputs(S.blank(LOOP_FRAMES, size), seed, size),
    "black_frame": lambda seed, size: _loop_inputs(_replace(_loop(seed, size), 5, S.blank(1, size)[0]), seed, size),
    "blurred": lambda seed, size: _loop_inputs(S.blurred(_loop(seed, size), _blur_radius(size)), seed, size),
    "noisy": lambda seed, size: _loop_inputs(S.with_noise(_loop(seed, size), 45, seed), seed, size),
    "character_switch": lambda seed, size: _loop_inputs(
        _switched(_loop(seed, size), _loop(seed, size, _other(seed))), seed, size
    ),
}


# ----------------------------------------------------------------------------- phase 3: videos


def _video(seed: int, size: int, character: tuple | None = None) -> list[Image.Image]:
    return S.motion_frames(VIDEO_FRAMES, size, character or _character(seed), MOTIONS[seed % len(MOTIONS)], cycle=0.5)


def _video_inputs(frames: list[Image.Image], seed: int, size: int) -> Inputs:
    return {"frames": frames, "source_image": _video(seed, size)[0]}


VIDEO_MODES: dict[str, Callable[[int, int], Inputs]] = {
    GOOD: lambda seed, size: _video_inputs(_video(seed, size), seed, size),
    "good_grain": lambda seed, size: _video_inputs(_grain(_video(seed, size), seed), seed, size),
    "good_soft": lambda seed, size: _video_inputs(_soft(_video(seed, size), size), seed, size),
    "frozen": lambda seed, size: _video_inputs(S.frozen(_video(seed, size)), seed, size),
    "scene_cut": lambda seed, size: _video_inputs(
        _switched(_video(seed, size), _video(seed + 1, size, _other(seed))), seed, size
    ),
    "fade_to_black": lambda seed, size: _video_inputs(S.faded_to_black(_video(seed, size)), seed, size),
    "blurred": lambda seed, size: _video_inputs(S.blurred(_video(seed, size), _blur_radius(size)), seed, size),
    "noisy": lambda seed, size: _video_inputs(S.with_noise(_video(seed, size), 45, seed), seed, size),
    "shuffled": lambda seed, size: _video_inputs(S.shuffled(_video(seed, size), seed), seed, size),
    "flicker": lambda seed, size: _video_inputs(S.with_flicker(_video(seed, size)), seed, size),
    "jitter": lambda seed, size: _video_inputs(S.jittered(VIDEO_FRAMES, size, _character(seed), seed), seed, size),
    "stutter": lambda seed, size: _video_inputs(S.stuttered(_video(seed, size)), seed, size),
    "source_mismatch": lambda seed, size: {
        "frames": _video(seed, size, _other(seed)),
        "source_image": _video(seed, size)[0],
    },
    "wrong_aspect": lambda seed, size: _video_inputs(S.squashed(_video(seed, size)), seed, size),
}

MODES: dict[str, dict[str, Callable[[int, int], Inputs]]] = {
    "CHARACTER_SHEET": SHEET_MODES,
    "ANIMATION_LOOP": LOOP_MODES,
    "FULL_VIDEO": VIDEO_MODES,
}
SCORERS = {
    "CHARACTER_SHEET": lambda i, **kw: score_character_sheet(i["poses"], i["reference"], **kw),
    "ANIMATION_LOOP": lambda i, **kw: score_animation_loop(i["frames"], i["reference"], **kw),
    "FULL_VIDEO": lambda i, **kw: score_full_video(i["frames"], i["source_image"], **kw),
}


# ----------------------------------------------------------------------------- families and splits

CALIBRATION, HELD_OUT = "calibration", "held_out"
SCENE_GOOD_VARIANTS: tuple[tuple[int, int], ...] = ((0, 128), (1, 192), (2, 256), (3, 320), (4, 160), (5, 224))
SCENE_VARIANTS: tuple[tuple[int, int], ...] = ((0, 128), (1, 192), (2, 320))


@dataclass(frozen=True)
class Family:
    """One way of drawing outputs. `split` says what it is for: calibration families are the only ones
    floors and thresholds may be fitted on (animenb.quality.calibration); held-out families differ in
    generator (style, background, scale, motion, kind of sheet) and only report."""

    split: str
    description: str
    modes: dict
    good_variants: tuple[tuple[int, int], ...] = SCENE_GOOD_VARIANTS
    variants: tuple[tuple[int, int], ...] = SCENE_VARIANTS
    available: Callable[[], bool] = lambda: True  # art that is installed at test time may be missing


FAMILIES: dict[str, Family] = {
    "drawn": Family(
        CALIBRATION,
        "round-headed characters on a plain background, circle/sway/bob motion, 64-512 px",
        MODES,
        GOOD_VARIANTS,
        VARIANTS,
    ),
    "scenes": Family(
        CALIBRATION,
        "walking figures (line art or flat) over sky gradients and textured walls",
        F.modes(F.SceneDrawer(F.Style(("gradient", "wall")))),
    ),
    "street": Family(
        HELD_OUT,
        "large line-art figures on busy streets, the camera panning with them",
        F.modes(F.SceneDrawer(F.Style(("street",), outline=True, scale=1.3, loop_pan=0.5, pan=0.3, travel=0.0))),
    ),
    "dusk_slow": Family(
        HELD_OUT,
        "flat-colour figures at dusk moving slowly (a quarter of a stride per video), expression sheets",
        F.modes(
            F.SceneDrawer(F.Style(("dusk",), outline=False, swing=0.35, travel=0.06, cycles=0.25, sheet="expressions"))
        ),
    ),
    "camera": Family(
        HELD_OUT,
        "small figures standing still while the camera pans and zooms, sheets whose poses "
        "differ by arms, tilt and facing",
        F.modes(
            F.SceneDrawer(
                F.Style(
                    ("street", "wall", "dusk"),
                    scale=0.6,
                    loop_pan=0.5,
                    travel=0.0,
                    pan=0.4,
                    zoom=1.3,
                    swing=0.5,
                    sheet="subtle",
                )
            )
        ),
    ),
    "supertux": Family(
        HELD_OUT,
        "real hand-drawn game characters (SuperTux sprites: their own walk cycles and "
        "action frames) over painted level backgrounds; tests/art/install.sh fetches them",
        F.modes(R.SpriteDrawer()),
        available=R.available,
    ),
}


@dataclass(frozen=True)
class Case:
    """One drawn output: `mode` is "good" or the name of a failure mode; good ones must pass."""

    phase: str
    mode: str
    seed: int
    size: int
    family: str = "drawn"

    @property
    def split(self) -> str:
        return FAMILIES[self.family].split

    @property
    def expected_pass(self) -> bool:
        return self.mode.startswith(GOOD)

    @property
    def name(self) -> str:
        name = f"{self.phase}/{self.mode}/seed{self.seed}/{self.size}px"
        return name if self.family == "drawn" else f"{self.family}/{name}"

    def inputs(self) -> Inputs:
        return FAMILIES[self.family].modes[self.phase][self.mode](self.seed, self.size)

    def score(self, config: str | Path | dict | None = None, threshold: float | None = None) -> QualityReport:
        return SCORERS[self.phase](self.inputs(), config=config, threshold=threshold)


def family_cases(name: str) -> tuple[Case, ...]:
    family = FAMILIES[name]
    return tuple(
        Case(phase, mode, seed, size, name)
        for phase, modes in family.modes.items()
        for mode in modes
        for seed, size in (family.good_variants if mode == GOOD else family.variants)
    )


SUITE: tuple[Case, ...] = family_cases("drawn")  # the original suite, every decision asserted by the tests
CASES: tuple[Case, ...] = tuple(c for name in FAMILIES for c in family_cases(name))
CALIBRATION_CASES = tuple(c for c in CASES if c.split == CALIBRATION)
HELD_OUT_CASES = tuple(c for c in CASES if c.split == HELD_OUT)


def run_suite(
    cases: Iterable[Case] = SUITE, config: str | Path | dict | None = None, threshold: float | None = None
) -> list[dict]:
    """Score every case; one row per case with the decision, the score, whether every critical floor
    held (`critical_passed`: with it a threshold sweep needs no rescoring) and every metric."""
    rows = []
    for case in cases:
        report = case.score(config, threshold)
        critical_ok = all(report.metrics[k] >= floor for k, floor in report.critical.items())
        rows.append(decision_row(case, report, critical_ok))
    return rows


def decision_row(case: Case, report: QualityReport, critical_ok: bool | None = None) -> dict:
    """One case's row: `passed` is a plain pass (a review is not an acceptance here), `verdict` the
    three-way verdict, `correct` whether it is the expected pass / fail (a review is neither)."""
    if critical_ok is None:
        critical_ok = all(report.metrics[k] >= floor for k, floor in report.critical.items())
    return {
        "family": case.family,
        "split": case.split,
        "phase": case.phase,
        "mode": case.mode,
        "seed": case.seed,
        "size": case.size,
        "expected_pass": case.expected_pass,
        "verdict": report.verdict,
        "passed": report.verdict == PASS,
        "score": report.score,
        "threshold": report.threshold,
        "critical_passed": critical_ok,
        "correct": report.verdict == (PASS if case.expected_pass else FAIL),
        "failures": list(report.failures),
        "review_reasons": list(report.review_reasons),
        **{f"metric.{k}": v for k, v in report.metrics.items()},
        **{f"second.{k}": v for k, v in report.second_opinions.items()},
    }


def sweep(rows: Iterable[dict], thresholds: Iterable[float], critical: bool = True) -> list[dict]:
    """Decisions at each score threshold without rescoring: passed = score >= t (and, with `critical`,
    every critical floor held). One row per (phase, threshold) with accuracy and error rates."""
    rows = list(rows)
    out = []
    for t in thresholds:
        decided = [{**r, "passed": r["score"] >= t and (r["critical_passed"] or not critical)} for r in rows]
        decided = [{**r, "verdict": PASS if r["passed"] else FAIL} for r in decided]
        for phase, c in confusion(decided).items():
            out.append(
                {
                    "phase": phase,
                    "threshold": round(float(t), 4),
                    "critical_floors": critical,
                    "accuracy": c["accuracy"],
                    "false_accept_rate": c["false_accept_rate"],
                    "false_reject_rate": c["false_reject_rate"],
                }
            )
    return out


def confusion(rows: Iterable[dict]) -> dict[str, dict[str, float]]:
    """Per phase (and "all"): true/false accepts/rejects and reviews of good and broken cases; accuracy
    (right pass/fail decisions / decisions made: reviews are not decisions), false-accept rate (broken
    cases that passed / broken cases), false-reject rate (good cases that failed / good cases) and review
    rate (reviews / cases)."""
    out: dict[str, dict[str, float]] = {}
    for row in rows:
        verdict = row.get("verdict") or (PASS if row["passed"] else FAIL)
        for key in (row["phase"], "all"):
            c = out.setdefault(
                key,
                {
                    "true_accept": 0,
                    "false_reject": 0,
                    "true_reject": 0,
                    "false_accept": 0,
                    "review_good": 0,
                    "review_bad": 0,
                },
            )
            if verdict == REVIEW:
                c["review_good" if row["expected_pass"] else "review_bad"] += 1
            elif row["expected_pass"]:
                c["true_accept" if verdict == PASS else "false_reject"] += 1
            else:
                c["false_accept" if verdict == PASS else "true_reject"] += 1
    for c in out.values():
        good = c["true_accept"] + c["false_reject"] + c["review_good"]
        bad = c["true_reject"] + c["false_accept"] + c["review_bad"]
        decided = good + bad - c["review_good"] - c["review_bad"]
        c["accuracy"] = (c["true_accept"] + c["true_reject"]) / max(1, decided)
        c["false_accept_rate"] = c["false_accept"] / max(1, bad)
        c["false_reject_rate"] = c["false_reject"] / max(1, good)
        c["review_rate"] = (c["review_good"] + c["review_bad"]) / max(1, good + bad)
    return out
