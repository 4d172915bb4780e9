"""Phase 1 with and without pose control: what the OpenPose ControlNet adds to a character sheet.

The tiny profile at 512x512, 10 steps, 8 poses, in this process with the models loaded first
(`sd` and `sd_controlnet`): `character_sheet(pose_strength=1.0)` (a skeleton per pose through the
ControlNet) against `pose_strength=0` (prompt only), interleaved (plain, controlled, plain, ...) so a
busy machine slows both alike; the ratio of the medians is the figure.

Target (the pose-control issue): control adds <= 35% to the phase's time on CPU. Prints figures;
asserts nothing. On a shared machine whole sheets swing with the load; the second figure does not: the
seconds spent inside the ControlNet and inside the UNet during the same controlled denoising calls (forward
hooks), i.e. the ControlNet's size next to its UNet (SD 1.5's is about 40-50%).

    python bench/pose_control.py [--pairs 2] [--size 512] [--steps 10] [--threads 1]
"""
from __future__ import annotations

import argparse
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

from results import record
from tiny_speed import load_tiny  # bench/tiny_speed.py: threads pinned, tiny models homed and loaded

TARGET_RATIO = 1.35


def run_sheet(root: Path, name: str, size: int, steps: int, pose_strength: float) -> float:
    from animenb.phases import character_sheet

    started = time.perf_counter()
    character_sheet("anime girl", models="tiny", width=size, height=size, steps=steps, seed=1, display=None,
                    pose_strength=pose_strength, output_dir=root / name)
    return time.perf_counter() - started


class ModelSeconds:
    """Seconds spent in each model's forward inside `with` blocks (forward hooks)."""

    def __init__(self, models: dict):
        self.models = models
        self.seconds = dict.fromkeys(models, 0.0)
        self.handles: list = []

    def __enter__(self):
        for name, model in self.models.items():
            self.handles += [model.register_forward_pre_hook(lambda m, a: setattr(m, "_bench_t", time.perf_counter())),
                             model.register_forward_hook(self._adder(name))]
        return self

    def __exit__(self, *exc):
        for handle in self.handles:
            handle.remove()
        self.handles = []

    def _adder(self, name: str):
        def add(model, args, output):
            self.seconds[name] += time.perf_counter() - model._bench_t
        return add


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=2, help="plain/controlled pairs (interleaved)")
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="animenb-pose-control-"))
    load = load_tiny(root, args.threads, ("sd", "sd_controlnet"))
    print(f"tiny profile, phase 1 at {args.size} px, {args.steps} steps, 8 poses ({platform.machine()}, "
          f"{os.cpu_count()} CPUs, torch threads {args.threads}, load average {os.getloadavg()[0]:.1f}); "
          f"build+load {load:.1f} s")
    from animenb.models import pipeline

    posed = pipeline("sd_controlnet", "tiny")
    inside = ModelSeconds({"unet": posed.unet, "controlnet": posed.controlnet})
    plain, controlled = [], []
    for index in range(args.pairs):
        plain.append(run_sheet(root, f"plain{index}", args.size, args.steps, 0.0))
        with inside:  # the controlled sheet's denoising calls only
            controlled.append(run_sheet(root, f"posed{index}", args.size, args.steps, 1.0))
        print(f"  pair {index + 1}: without control {plain[-1]:.1f} s, with control {controlled[-1]:.1f} s "
              f"({controlled[-1] / plain[-1]:.2f}x)", flush=True)
    ratio = statistics.median(controlled) / statistics.median(plain)
    share = inside.seconds["controlnet"] / inside.seconds["unet"]
    print(f"  median: without {statistics.median(plain):.1f} s, with {statistics.median(controlled):.1f} s -> "
          f"control costs {ratio:.2f}x the phase (target <= {TARGET_RATIO:.2f}x)")
    print(f"  inside the models (controlled sheets): ControlNet {inside.seconds['controlnet']:.1f} s, "
          f"UNet {inside.seconds['unet']:.1f} s -> the ControlNet costs {share:.0%} of the UNet")
    record("pose_control", {"phase1_plain_s": round(statistics.median(plain), 2),
                            "phase1_controlled_s": round(statistics.median(controlled), 2),
                            "controlled_over_plain": round(ratio, 3), "controlnet_over_unet": round(share, 3)})


if __name__ == "__main__":
    main()
