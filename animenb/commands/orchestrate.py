"""`animenb orchestrate`: character sheet -> gate -> loop -> gate -> video -> gate, in this process.

Exit status: 0 when every gate passed (or, with --advisory-gates, the chain ran through), 1 when a gate
failed after its retries (the reason, with the rules that failed each attempt, is printed), 2 for a usage
error (animenb.cli). The run's record is <output-dir>/orchestration.json.
"""

from __future__ import annotations

import argparse

HELP = "run the gated chain (sheet -> loop -> video) with retries; exit 0 if every gate passed, 1 if one failed"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("prompt", help='character prompt, e.g. "anime girl with blue hair"')
    parser.add_argument("--models", default=None, help="model profile (default: $ANIMENB_MODELS or tiny)")
    parser.add_argument("--seed", type=int, default=None, help="base seed (default: random, recorded)")
    parser.add_argument("--steps", type=int, default=15)
    parser.add_argument("--width", type=int, default=None, help="default: the profile's size (64 for tiny)")
    parser.add_argument("--height", type=int, default=None)
    parser.add_argument("--max-retries", type=int, default=2, help="retries per phase with a new seed (default 2)")
    parser.add_argument(
        "--threshold",
        type=float,
        default=None,
        help="gate threshold for every phase (default: parameters/quality.yaml, 0.80)",
    )
    parser.add_argument("--reference-image", default=None, help="image or run directory for phase 1's IP-Adapter")
    parser.add_argument("--output-dir", default=None, help="default: ./outputs/<stamp>-orchestration-<id>")
    parser.add_argument(
        "--advisory-gates",
        action="store_true",
        help="score and record every gate but run the chain through (each phase once); "
        "for random-weight profiles such as tiny, which fail the gates by design",
    )
    parser.add_argument("--quiet", action="store_true", help="no progress bar")


def format_attempt(row) -> str:
    """One line per attempt: 'phase 1 CHARACTER_SHEET  attempt 1  seed 42  score 0.797 >= 0.10  FAILED -> retry:
    pose_distinctness 0.212 < floor 0.5  (1.2 s)  1_character_sheet/attempt_1' (the rules that failed the gate)."""
    score = "n/a" if row.score is None else f"{row.score:.3f}"
    gate = "<" if row.score is not None and row.threshold is not None and row.score < row.threshold else ">="
    verdict = "passed" if row.passed else f"FAILED -> {row.decision}: {'; '.join(row.failures) or 'not scored'}"
    return (
        f"phase {row.phase_id} {row.phase:<16} attempt {row.attempt}  seed {row.seed:<10}  "
        f"score {score} {gate} {row.threshold:.2f}  {verdict}  ({row.generate_seconds:.1f} s)  {row.output_dir}"
    )


def run(args: argparse.Namespace) -> int:
    import sys

    from ..chain import RECORD_NAME
    from ..orchestrate import orchestrate
    from ..profiles import load_profile

    if load_profile(args.models).is_tiny and not args.advisory_gates:
        print(
            "note: the tiny profile's random weights fail the quality gates by design; "
            "add --advisory-gates to run the chain through (gates still scored and recorded).",
            file=sys.stderr,
        )
    result = orchestrate(
        args.prompt,
        seed=args.seed,
        steps=args.steps,
        width=args.width,
        height=args.height,
        reference_image=args.reference_image,
        max_retries=args.max_retries,
        models=args.models,
        output_dir=args.output_dir,
        thresholds=args.threshold,
        advisory_gates=args.advisory_gates,
        display=None if args.quiet else "tqdm",
    )
    for row in result.attempts:
        print(format_attempt(row))
    for key in ("sheet", "gif", "video"):
        if key in result.manifest["outputs"]:
            print(f"{key:<6} {result.path(key)}")
    print(f"{result.status.upper()}: {result.reason}")
    print(f"record: {result.output_dir / RECORD_NAME}")
    return 0 if result.succeeded else 1
