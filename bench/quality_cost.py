"""Cost of quality scoring, per phase: scoring time, and its ratio to generation time.

    .venv/bin/python bench/quality_cost.py [--repeats 3] [--no-generate]

1. Scoring ms per phase on synthetic drawn frames (animenb.quality.synthetic) at 64 and 512 px:
   8 poses (phase 1), 16 loop frames (phase 2), 25 raw SVD frames and 120 frames (phase 3).
2. If the phase functions and the tiny model profile work here, each phase is generated with
   `models="tiny"` and the run directory is scored: scoring / generation per phase.
The target (issue 4) is scoring <= 10% of generation time at 512 px; generation at 512 px with real
models needs a GPU, so pass `--generation-seconds 1=..,2=..,3=..` from such a run to get that ratio.
Prints figures, asserts nothing. Seeded (the synthetic frames are deterministic).
"""
from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time

import cv2

from animenb.quality import score_animation_loop, score_character_sheet, score_full_video, score_output_dir
from animenb.quality import synthetic as S


def best_of(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def synthetic_cases(size: int) -> dict:
    poses = S.character_poses(8, size)
    loop = S.loop_frames(16, size)
    raw = S.loop_frames(25, size, turns=0.5)
    long = S.loop_frames(120, size, turns=0.5)
    return {1: ("8 poses", lambda: score_character_sheet(poses, poses[0])),
            2: ("16 frames", lambda: score_animation_loop(loop, S.sheet_image(poses))),
            3: ("25 frames", lambda: score_full_video(raw, raw[0])),
            "3*": ("120 frames", lambda: score_full_video(long, long[0]))}


def generate_tiny(phase: int, out: str) -> float:
    from animenb.manifest import read_manifest
    from animenb.phases import animation_loop, character_sheet, full_video

    fn = {1: lambda: character_sheet("a girl with pink hair", seed=0, models="tiny", output_dir=out, display=None),
          2: lambda: animation_loop("a girl with pink hair waving", seed=0, models="tiny", output_dir=out, display=None),
          3: lambda: full_video("a girl with pink hair", seed=0, models="tiny", output_dir=out, display=None)}[phase]
    t = time.perf_counter()
    fn()
    wall = time.perf_counter() - t
    timings = read_manifest(out).get("timings", {})
    return float(timings.get("generate_seconds") or wall)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--no-generate", action="store_true", help="skip the tiny-profile generation ratio")
    ap.add_argument("--generation-seconds", default="", help="e.g. 1=40,2=25,3=90 from a 512 px GPU run")
    args = ap.parse_args()
    print(f"quality_cost: python {platform.python_version()}, opencv {cv2.__version__}, "
          f"{os.cpu_count()} CPUs, {cv2.getNumThreads()} opencv threads, {platform.processor() or platform.machine()}")

    scoring: dict[tuple, float] = {}
    print("\nscoring time on synthetic frames (best of %d)" % args.repeats)
    print(f"{'phase':>6} {'input':>11} {'64 px ms':>10} {'512 px ms':>10}")
    cases = {size: synthetic_cases(size) for size in (64, 512)}
    for key in cases[64]:
        label = cases[64][key][0]
        ms = {size: 1000 * best_of(cases[size][key][1], args.repeats) for size in (64, 512)}
        scoring.update({(key, size): ms[size] / 1000 for size in ms})
        print(f"{key!s:>6} {label:>11} {ms[64]:>10.1f} {ms[512]:>10.1f}")

    given = dict(kv.split("=") for kv in args.generation_seconds.split(",") if kv)
    if given:
        print("\nscoring / generation at 512 px (generation seconds given on the command line)")
        for key, seconds in given.items():
            ratio = scoring[(int(key), 512)] / float(seconds)
            print(f"  phase {key}: {100 * ratio:.2f}% of {float(seconds):.1f} s  (target <= 10%)")

    if args.no_generate:
        return
    print("\ntiny profile: generate, then score the run directory")
    for phase in (1, 2, 3):
        with tempfile.TemporaryDirectory() as out:
            try:
                gen = generate_tiny(phase, out)
            except Exception as exc:  # the bench reports, it does not fail
                print(f"  phase {phase}: generation skipped ({type(exc).__name__}: {exc})")
                continue
            score = best_of(lambda: score_output_dir(out), args.repeats)
            print(f"  phase {phase}: generate {gen:.2f} s, score {1000 * score:.1f} ms -> {100 * score / gen:.1f}%")


if __name__ == "__main__":
    main()
