"""`animenb demo`: the three phases chained offline (tiny profile by default), in this process."""

from __future__ import annotations

import argparse

HELP = "run character sheet -> loop -> video once, offline with the tiny profile, and print where the files are"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("prompt", nargs="?", default="anime girl with blue hair, school uniform")
    parser.add_argument("--models", default="tiny", help="model profile (default: tiny, random weights)")
    parser.add_argument("--steps", type=int, default=15)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--output-dir", default=None, help="parent directory (default: ./outputs)")


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from ..phases import animation_loop, character_sheet, full_video

    base = Path(args.output_dir).resolve() if args.output_dir else None
    common = dict(models=args.models, steps=args.steps, seed=args.seed)
    sheet = character_sheet(args.prompt, output_dir=base and base / "1_character_sheet", **common)
    print(f"phase 1 CHARACTER_SHEET  {sheet.path('sheet')}")
    loop = animation_loop(
        args.prompt, reference_image=sheet.output_dir, output_dir=base and base / "2_animation_loop", **common
    )
    print(f"phase 2 ANIMATION_LOOP   {loop.path('gif')}  {loop.path('mp4')}")
    video = full_video(args.prompt, image=loop.output_dir, output_dir=base and base / "3_full_video", **common)
    print(f"phase 3 FULL_VIDEO       {video.path('mp4')}")
    print(f"models: {video.manifest['models']}")
    return 0
